// What the tensor-facing side of every CPU kernel shares: the dtypes they compute in, when to go parallel,
// and the kernels' signatures (cpu_kernels.cpp binds them; decode_step.cpp calls them). The SIMD code they
// call is in simd/, compiled for every instruction set and dispatched at run time.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "simd/targets.h"

namespace tokenyard {

// The dtypes the runtime computes in on a CPU (float16 matmuls are ~1000x slower there).
inline simd::DType dtype_of(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "the CPU kernels compute in float32 or bfloat16, not ", x.scalar_type());
  return x.scalar_type() == at::kFloat ? simd::DType::kFloat32 : simd::DType::kBFloat16;
}

// Work below this many multiply-adds runs on the calling thread. A parallel region costs a few microseconds
// when both cores are free, and a scheduler tick (milliseconds) when another process holds one of them
// (a test client next to its server, a tokenizer thread): most decode steps' small ops are not worth it.
constexpr int64_t kParallelWork = 1 << 16;

// The grain that makes at::parallel_for run `items` serially below kParallelWork, split them above it.
inline int64_t parallel_grain(int64_t items, int64_t work) { return work < kParallelWork ? std::max<int64_t>(items, 1) : 1; }

at::Tensor quantized_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                            const at::Tensor& mins, int64_t bits, int64_t group, int64_t out_features);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                                double eps);
void rotary_(at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t heads, int64_t kv_heads,
             int64_t dim);
at::Tensor silu_and_mul(const at::Tensor& gate_up);
void write_kv_cache(at::Tensor& kv_cache, const at::Tensor& slots, const at::Tensor& k, const at::Tensor& v);
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& slots,
                            const at::Tensor& lengths, double scale);
at::Tensor chunk_attention(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& slots,
                           const at::Tensor& context_lens, const at::Tensor& query_starts, double scale);

}  // namespace tokenyard
