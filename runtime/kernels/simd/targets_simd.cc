#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd/targets_simd.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace tokenyard {
namespace HWY_NAMESPACE {
int64_t Target() { return HWY_TARGET; }
}  // namespace HWY_NAMESPACE
}  // namespace tokenyard
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <stdexcept>

#include "simd/targets.h"

namespace tokenyard {
HWY_EXPORT(Target);

namespace simd {
namespace {
bool bf16_dot_capped = false;
}

std::string chosen_target() { return hwy::TargetName(HWY_DYNAMIC_DISPATCH(Target)()); }

std::vector<std::string> compiled_targets() {
  std::vector<std::string> names;
  for (int64_t targets = HWY_TARGETS; targets != 0; targets &= targets - 1)
    names.emplace_back(hwy::TargetName(targets & ~(targets - 1)));
  return names;
}

void cap_targets(const std::string& isa) {
  int64_t disabled = 0;  // a lower bit is a better target: every target above a cap has a lower bit
  if (isa == "avx2")
    disabled = HWY_AVX2 - 1;
  else if (isa == "avx512")
    disabled = HWY_AVX3 - 1;
  else if (isa == "neon")
    disabled = HWY_NEON - 1;  // the SVE targets
  else if (isa != "native")
    throw std::invalid_argument("cap_targets takes avx2, avx512, neon or native, not " + isa);
  hwy::SetSupportedTargetsForTest(0);  // undo an earlier cap
  hwy::DisableTargets(disabled);
  hwy::GetChosenTarget().Update(hwy::SupportedTargets());
  bf16_dot_capped = isa != "native";
}

bool chosen_target_is_native() {
  const int64_t target = HWY_DYNAMIC_DISPATCH(Target)();
  return (target & (HWY_SSE4 | HWY_SSSE3 | HWY_EMU128 | HWY_SCALAR)) == 0;
}

bool bf16_dot_allowed() {
#if HWY_ARCH_X86
  static const bool supported = __builtin_cpu_supports("avx512bf16");
  const int64_t target = HWY_DYNAMIC_DISPATCH(Target)();
  return supported && !bf16_dot_capped && (target & (HWY_AVX3 | HWY_AVX3_DL)) != 0;
#else
  return false;
#endif
}

}  // namespace simd
}  // namespace tokenyard
#endif  // HWY_ONCE
