// Which instruction set the SIMD kernels run on: every kernel is compiled for each target below (Highway's
// foreach_target.h), and each call goes to the best one the CPU supports, unless capped.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tokenyard::simd {

enum class DType { kFloat32, kBFloat16 };

// The target calls go to ("AVX3", "AVX2", "NEON", "EMU128" ...), in Highway's names.
std::string chosen_target();

// Every target compiled in, best first.
std::vector<std::string> compiled_targets();

// Calls go to no target above `isa`, a TOKENYARD_CPU_ISA value (runtime/cpu.py): "avx2" (x86-64-v3), "avx512"
// (no AVX-512 extensions beyond F/BW/DQ/VL), "neon" (no SVE), or "native" (the best the CPU supports).
// Throws std::invalid_argument for any other name.
void cap_targets(const std::string& isa);

// Whether the chosen target is one the kernels are written for (AVX2 with FMA and F16C or AVX-512 on x86, NEON
// or SVE on Arm): on the baseline below them (SSE4) PyTorch's own kernels are faster.
bool chosen_target_is_native();

// Whether AVX512-BF16 dot products may be used (the CPU has them and no cap forbids them).
bool bf16_dot_allowed();

}  // namespace tokenyard::simd
