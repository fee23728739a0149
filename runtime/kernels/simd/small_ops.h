// The small ops around a decoder layer's matmuls on raw rows (the tensor-facing checks and the threads are
// in ../small_ops.cpp): float32 inside, one rounding to the rows' dtype.
#pragma once

#include <cstdint>

#include "simd/targets.h"

namespace tokenyard::simd {

// RMSNorm of rows [begin, end) of x (rows of `size`) into out; with a residual, of residual + x, which is
// written to `sum` as well.
void rms_norm_rows(DType dtype, const void* x, const void* residual, const void* weight, void* out, void* sum,
                   int64_t size, float eps, int64_t begin, int64_t end);

// Rotate-half rotary embedding in place on tokens [begin, end) of a fused q|k|v row of `width` values: its
// first `rotated_heads` heads of `dim`; cos, sin (tokens, dim / 2) float32.
void rotary_rows(DType dtype, void* qkv, const float* cos, const float* sin, int64_t width, int64_t rotated_heads,
                 int64_t dim, int64_t begin, int64_t end);

// silu(gate) * up for tokens [begin, end) of a fused gate|up row (2 * size values) into out (size values).
void silu_and_mul_rows(DType dtype, const void* gate_up, void* out, int64_t size, int64_t begin, int64_t end);

}  // namespace tokenyard::simd
