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
  // Where quantized_uses_int8_dot: x as two int8 terms (M, 2K) and its steps d (M, groups), see
  // quantize_x_int8; else nullptr.
  const int8_t* x_q = nullptr;
  const float* x_d = nullptr;
};

// Whether a call of M rows of x goes through bfloat16 dot products (and so needs x_bf16).
bool quantized_uses_bf16_dot(DType x_dtype, int bits, int64_t M);

// Whether a call of M rows of x goes through int8 dot products (and so needs x_q and x_d): 4-bit codes on
// AVX-512 at any number of rows, on AVX2 for one row (decode) and from 16 (prefill); see Int8DotForRows.
bool quantized_uses_int8_dot(int bits, int64_t M);

// x_float (M, K) as two int8 terms, symmetric per row and group: x = d * (q + r / 254) to within d / 508, with
// q = round(x / d), d = max|x| / 127, r = round(254 * (x / d - q)) (|r| <= 127), one d per row and group into
// x_d. x_q is (M, 2K): each 8 columns c..c+7 as their 8 q then their 8 r, both in the order c+0, 4, 1, 5, 2,
// 6, 3, 7: the order in which a 4-bit block's nibbles come out of a 32-bit word masked with 0x0F0F0F0F (then
// shifted right by 4).
void quantize_x_int8(const float* x_float, int64_t M, int64_t K, int64_t group, int8_t* x_q, float* x_d);

// x (M rows of `width` values, float32 or bfloat16) as the kernels read it, once per call: float32 (M, K)
// into x_float, its bfloat16 bits into x_bf16 (unless nullptr), and the sums of its groups into x_sums.
// Columns from `width` to K are zero: a weight whose K is not whole groups is stored padded with zero codes.
void prepare_quantized_x(DType dtype, const void* x, int64_t M, int64_t width, int64_t K, int64_t group,
                         float* x_float, uint16_t* x_bf16, float* x_sums);

// Outputs of weight-row blocks [begin, end) (kWeightRowsPerBlock rows each) for every row of x, into out
// (M, N) of the dtype x was given in.
void quantized_matmul_blocks(const QuantizedMatmul& p, DType dtype, void* out, int64_t begin, int64_t end);

}  // namespace tokenyard::simd
