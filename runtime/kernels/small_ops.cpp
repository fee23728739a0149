// The small ops around a decoder layer's matmuls: float32 inside, one rounding to the tensor's dtype.
#include "common.h"

namespace tokenyard {

template <typename T>
void rms_norm_row(const T* x, const T* weight, T* out, int64_t size, double eps) {
  float squares = 0.f;
  for (int64_t i = 0; i < size; ++i) squares += float(x[i]) * float(x[i]);
  const float inverse = 1.f / std::sqrt(squares / size + float(eps));
  // normalised, rounded to T, then times the weight: the order the reference implementation rounds in
  for (int64_t i = 0; i < size; ++i) out[i] = T(float(T(float(x[i]) * inverse)) * float(weight[i]));
}

// RMSNorm of each row of x (sum == nullptr), or of residual + x, written to sum as well.
void rms_norm_rows(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, double eps,
                   at::Tensor& out, at::Tensor* sum) {
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && weight.scalar_type() == x.scalar_type(),
              "rms_norm takes a contiguous x and a weight of its dtype");
  const int64_t size = x.size(-1), rows = x.numel() / size;
  FLOAT_OR_BFLOAT16(x.scalar_type(), "rms_norm", [&] {
    const scalar_t *in = x.data_ptr<scalar_t>(), *w = weight.data_ptr<scalar_t>();
    const scalar_t* add = residual ? residual->data_ptr<scalar_t>() : nullptr;
    scalar_t* added = sum ? sum->data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = in + r * size;
        if (added != nullptr) {
          for (int64_t i = 0; i < size; ++i) added[r * size + i] = scalar_t(float(add[r * size + i]) + float(row[i]));
          row = added + r * size;
        }
        rms_norm_row(row, w, o + r * size, size, eps);
      }
    });
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
  const int64_t tokens = qkv.size(0), width = qkv.size(1), half = dim / 2, rotated = heads + kv_heads;
  FLOAT_OR_BFLOAT16(qkv.scalar_type(), "rotary", [&] {
    scalar_t* base = qkv.data_ptr<scalar_t>();
    const float *c = cos.data_ptr<float>(), *s = sin.data_ptr<float>();
    at::parallel_for(0, tokens, 8, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        for (int64_t h = 0; h < rotated; ++h) {
          scalar_t* x = base + t * width + h * dim;
          for (int64_t i = 0; i < half; ++i) {
            const float a = float(x[i]), b = float(x[i + half]), ci = c[t * half + i], si = s[t * half + i];
            x[i] = scalar_t(a * ci - b * si);
            x[i + half] = scalar_t(b * ci + a * si);
          }
        }
      }
    });
  });
}


// silu(gate) * up for a fused gate|up projection output (tokens, 2 * size), size a multiple of 16.
at::Tensor silu_and_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.is_contiguous() && gate_up.size(-1) % 32 == 0,
              "silu_and_mul takes a contiguous (tokens, 2 * size) tensor, size a multiple of 16");
  const int64_t tokens = gate_up.size(0), size = gate_up.size(1) / 2;
  at::Tensor out = at::empty({tokens, size}, gate_up.options());
  FLOAT_OR_BFLOAT16(gate_up.scalar_type(), "silu_and_mul", [&] {
    const scalar_t* in = gate_up.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t chunks = size / 16;
    // a decode step's few thousand values are done before a second thread would have woken up
    at::parallel_for(0, tokens * chunks, 512, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t t = c / chunks, i = (c % chunks) * 16;
        const __m512 gate = load16(in + t * 2 * size + i), up = load16(in + t * 2 * size + size + i);
        const __m512 sigmoid = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_add_ps(_mm512_set1_ps(1.f), exp16(-gate)));
        store16(o + t * size + i, _mm512_mul_ps(_mm512_mul_ps(gate, sigmoid), up));
      }
    });
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
  FLOAT_OR_BFLOAT16(kv_cache.scalar_type(), "write_kv_cache", [&] {
    scalar_t* cache = kv_cache.data_ptr<scalar_t>();
    const int64_t* slot = slots.data_ptr<int64_t>();
    const int64_t entry = kv_heads * dim;
    for (int64_t t = 0; t < tokens; ++t) {
      TORCH_CHECK(slot[t] >= 0 && slot[t] < half, "slot ", slot[t], " is outside the cache");
      std::copy_n(k.data_ptr<scalar_t>() + t * k.stride(0), entry, cache + slot[t] * entry);
      std::copy_n(v.data_ptr<scalar_t>() + t * v.stride(0), entry, cache + (half + slot[t]) * entry);
    }
  });
}

}  // namespace tokenyard
