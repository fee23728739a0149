// What every SIMD kernel shares, compiled once per instruction set: Highway's foreach_target.h re-includes a
// kernel file (and so this header) for each target, and the toggle below lets each pass see it afresh.
#if defined(TOKENYARD_SIMD_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TOKENYARD_SIMD_INL_H_
#undef TOKENYARD_SIMD_INL_H_
#else
#define TOKENYARD_SIMD_INL_H_
#endif

#include <cstring>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "simd/targets.h"

HWY_BEFORE_NAMESPACE();
namespace tokenyard {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// A full vector of float32: 4 lanes on NEON and the portable fallback, 8 on AVX2, 16 on AVX-512.
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
using bf16 = hwy::bfloat16_t;
using simd::DType;

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) {
  uint32_t bits = uint32_t(x.bits) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Rounded to nearest even, as PyTorch rounds float32 to bfloat16.
template <typename T>
inline T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    bits += 0x7FFF + ((bits >> 16) & 1);
    bf16 out;
    out.bits = uint16_t(bits >> 16);
    return out;
  }
}

HWY_INLINE VF load(DF d, const float* p) { return hn::LoadU(d, p); }
HWY_INLINE VF load(DF d, const bf16* p) {
  const hn::Rebind<bf16, DF> half;
  return hn::PromoteTo(d, hn::LoadU(half, p));
}

// The float32 bits of v rounded to nearest even at bfloat16's precision (low 16 bits zero).
HWY_INLINE hn::Vec<hn::RebindToUnsigned<DF>> bfloat16_rounded(DF /* d */, VF v) {
  const hn::RebindToUnsigned<DF> du;
  const auto bits = hn::BitCast(du, v);
  const auto odd = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1));
  return hn::And(hn::Add(bits, hn::Add(odd, hn::Set(du, 0x7FFF))), hn::Set(du, 0xFFFF0000u));
}

HWY_INLINE void store(VF v, DF d, float* p) { hn::StoreU(v, d, p); }
HWY_INLINE void store(VF v, DF d, bf16* p) {
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<uint16_t, DF> half;
  const auto upper = hn::BitCast(di, hn::ShiftRight<16>(bfloat16_rounded(d, v)));
  hn::StoreU(hn::DemoteTo(half, upper), half, reinterpret_cast<uint16_t*>(p));
}

// v as type T would hold it: unchanged for float32, rounded to bfloat16's precision otherwise.
template <typename T>
HWY_INLINE VF as_stored(DF d, VF v) {
  if constexpr (std::is_same_v<T, float>) return v;
  return hn::BitCast(d, bfloat16_rounded(d, v));
}

// exp(x) (~1 ulp); -inf (a masked score) gives 6e-39, not NaN: callers that need an exact 0 mask it.
HWY_INLINE VF exp(DF d, VF x) { return hn::Exp(d, hn::Max(x, hn::Set(d, -88.f))); }

HWY_INLINE float sum_of_lanes(DF d, VF v) { return hn::GetLane(hn::SumOfLanes(d, v)); }

}  // namespace HWY_NAMESPACE
}  // namespace tokenyard
HWY_AFTER_NAMESPACE();

#endif  // TOKENYARD_SIMD_INL_H_
