// The small ops around a decoder layer's matmuls, on tensors (the SIMD code is simd/small_ops.cc).
#include "common.h"
#include "simd/small_ops.h"

namespace tokenyard {

// RMSNorm of each row of x (sum == nullptr), or of residual + x, written to sum as well.
void rms_norm_rows(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, double eps,
                   at::Tensor& out, at::Tensor* sum) {
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && weight.scalar_type() == x.scalar_type(),
              "rms_norm takes a contiguous x and a weight of its dtype");
  const int64_t size = x.size(-1), rows = x.numel() / size;
  const simd::DType dtype = dtype_of(x);
  at::parallel_for(0, rows, parallel_grain(rows, rows * size), [&](int64_t begin, int64_t end) {
    simd::rms_norm_rows(dtype, x.data_ptr(), residual ? residual->data_ptr() : nullptr, weight.data_ptr(),
                        out.data_ptr(), sum ? sum->data_ptr() : nullptr, size, float(eps), begin, end);
  });
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor out = at::empty_like(x);
  rms_norm_rows(x, nullptr, weight, eps, out, nullptr);
  return out;
}

// (RMSNorm(residual + x), residual + x): the decoder's residual add and the norm after it in one pass.
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                                const at::Tensor& weight, double eps) {
  TORCH_CHECK(residual.is_contiguous() && residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type(),
              "the residual must be a contiguous tensor of x's shape and dtype");
  at::Tensor out = at::empty_like(x), sum = at::empty_like(x);
  rms_norm_rows(x, &residual, weight, eps, out, &sum);
  return {out, sum};
}

// Rotate-half rotary embedding in place on the query and key heads of a fused q|k|v projection output
// (tokens, (heads + 2 * kv_heads) * dim); cos and sin: (tokens, dim / 2) float32.
void rotary_(at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t heads, int64_t kv_heads,
             int64_t dim) {
  TORCH_CHECK(qkv.is_contiguous() && cos.is_contiguous() && sin.is_contiguous(), "rotary takes contiguous tensors");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat, "cos and sin must be float32");
  const int64_t tokens = qkv.size(0), width = qkv.size(1);
  const simd::DType dtype = dtype_of(qkv);
  at::parallel_for(0, tokens, parallel_grain(tokens, tokens * width), [&](int64_t begin, int64_t end) {
    simd::rotary_rows(dtype, qkv.data_ptr(), cos.data_ptr<float>(), sin.data_ptr<float>(), width, heads + kv_heads,
                      dim, begin, end);
  });
}

// silu(gate) * up for a fused gate|up projection output (tokens, 2 * size).
at::Tensor silu_and_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.is_contiguous() && gate_up.dim() == 2 && gate_up.size(1) % 2 == 0,
              "silu_and_mul takes a contiguous (tokens, 2 * size) tensor");
  const int64_t tokens = gate_up.size(0), size = gate_up.size(1) / 2;
  at::Tensor out = at::empty({tokens, size}, gate_up.options());
  const simd::DType dtype = dtype_of(gate_up);
  at::parallel_for(0, tokens, parallel_grain(tokens, tokens * size), [&](int64_t begin, int64_t end) {
    simd::silu_and_mul_rows(dtype, gate_up.data_ptr(), out.data_ptr(), size, begin, end);
  });
  return out;
}

// Keys and values of new tokens into their cache slots: kv_cache (2, slots, kv_heads, dim); k, v
// (tokens, kv_heads, dim), possibly strided views of the fused projection output.
void write_kv_cache(at::Tensor& kv_cache, const at::Tensor& slots, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(kv_cache.is_contiguous() && slots.scalar_type() == at::kLong, "kv_cache contiguous, slots int64");
  TORCH_CHECK(k.scalar_type() == kv_cache.scalar_type() && v.scalar_type() == kv_cache.scalar_type(),
              "keys and values must have the cache's dtype");
  const int64_t tokens = k.size(0), kv_heads = k.size(1), dim = k.size(2), half = kv_cache.size(1);
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k.stride(1) == dim && v.stride(1) == dim,
              "each token's key and value heads must be contiguous");
  const int64_t entry = kv_heads * dim * kv_cache.element_size();
  auto* cache = static_cast<char*>(kv_cache.data_ptr());
  const auto *keys = static_cast<const char*>(k.data_ptr()), *values = static_cast<const char*>(v.data_ptr());
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    TORCH_CHECK(slot[t] >= 0 && slot[t] < half, "slot ", slot[t], " is outside the cache");
    std::memcpy(cache + slot[t] * entry, keys + t * k.stride(0) * k.element_size(), entry);
    std::memcpy(cache + (half + slot[t]) * entry, values + t * v.stride(0) * v.element_size(), entry);
  }
}

}  // namespace tokenyard
