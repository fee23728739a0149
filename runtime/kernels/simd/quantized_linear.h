// The groupwise 4- and 8-bit matmul on raw pointers (the tensor-facing checks and the threads are in
// ../quantized_linear.cpp; the storage layouts are described in ../cpu_kernels.cpp).
#pragma once

#include <cstdint>

#include "simd/targets.h"

namespace tokenyard::simd {

// The unit of work a thread takes: 16 weight rows (a tile of 4-bit codes).
constexpr int64_t kWeightRowsPerBlock = 16;

// One call: the weight as stored, and x as prepare_quantized_x leaves it.
struct QuantizedMatmul {
  const uint8_t* codes;  // 8-bit: (N, K) int8; 4-bit: tiles of 16 rows
  int bits;              // 4 or 8
  const void* scales;    // one per stored row and group, float32 or bfloat16 (scales_dtype)
  const void* mins;      // the same, or nullptr for symmetric codes
  DType scales_dtype;
  const float* x;         // (M, K) float32
  const uint16_t* x_bf16;  // (M, K) bfloat16 bits where quantized_uses_bf16_dot, else nullptr
  const float* x_sums;    // (M, groups): what the mins multiply
  int64_t M, K, N, group, groups;
};

// Whether a call of M rows of x goes through bfloat16 dot products (and so needs x_bf16).
bool quantized_uses_bf16_dot(DType x_dtype, int bits, int64_t M);

// x (M rows of `width` values, float32 or bfloat16) as the kernels read it, once per call: float32 (M, K)
// into x_float, its bfloat16 bits into x_bf16 (unless nullptr), and the sums of its groups into x_sums.
// Columns from `width` to K are zero: a weight whose K is not whole groups is stored padded with zero codes.
void prepare_quantized_x(DType dtype, const void* x, int64_t M, int64_t width, int64_t K, int64_t group,
                         float* x_float, uint16_t* x_bf16, float* x_sums);

// Outputs of weight-row blocks [begin, end) (kWeightRowsPerBlock rows each) for every row of x, into out
// (M, N) of the dtype x was given in.
void quantized_matmul_blocks(const QuantizedMatmul& p, DType dtype, void* out, int64_t begin, int64_t end);

}  // namespace tokenyard::simd
