// What every CPU kernel shares: the dtypes they compute in, when to go parallel, and loading, storing and
// exponentiating 16 floats at a time. See cpu_kernels.cpp for what the kernels are and why.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace tokenyard {

// The dtypes the runtime computes in on a CPU (float16 matmuls are ~1000x slower there).
#define FLOAT_OR_BFLOAT16(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// Work below this many multiply-adds runs on the calling thread. A parallel region costs a few microseconds
// when both cores are free, and a scheduler tick (milliseconds) when another process holds one of them
// (a test client next to its server, a tokenizer thread): most decode steps' small ops are not worth it.
constexpr int64_t kParallelWork = 1 << 16;

// The grain that makes at::parallel_for run `items` serially below kParallelWork, split them above it.
inline int64_t parallel_grain(int64_t items, int64_t work) { return work < kParallelWork ? std::max<int64_t>(items, 1) : 1; }

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {  // bfloat16 is the upper half of a float32
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// 16 floats as bfloat16 bits, rounded to nearest even as c10::BFloat16 does.
inline __m256i bfloat16_bits(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(c10::BFloat16* p, __m512 v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bfloat16_bits(v)); }

// Only the lanes of `valid` (a tile's last rows may not exist).
inline void store16(float* p, __m512 v, __mmask16 valid) { _mm512_mask_storeu_ps(p, valid, v); }
inline void store16(c10::BFloat16* p, __m512 v, __mmask16 valid) { _mm256_mask_storeu_epi16(p, valid, bfloat16_bits(v)); }

// exp(x) for 16 floats: 2^n * e^r with |r| <= ln2 / 2 and a degree-6 Taylor polynomial (~1e-7 relative).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.f)), _mm512_set1_ps(-88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);  // ln 2 in two parts: exact n * ln2_hi
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

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
