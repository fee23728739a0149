#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd/small_ops_simd.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "simd/simd-inl.h"
#include "simd/small_ops.h"

HWY_BEFORE_NAMESPACE();
namespace tokenyard {
namespace HWY_NAMESPACE {

template <typename T>
void rms_norm_row(const T* x, const T* weight, T* out, int64_t size, float eps) {
  const DF d;
  const int64_t lanes = hn::Lanes(d);
  VF squares = hn::Zero(d);
  int64_t i = 0;
  for (; i + lanes <= size; i += lanes) squares = hn::MulAdd(load(d, x + i), load(d, x + i), squares);
  float total = sum_of_lanes(d, squares);
  for (int64_t j = i; j < size; ++j) total += to_float(x[j]) * to_float(x[j]);
  const float inverse = 1.f / std::sqrt(total / size + eps);
  // normalised, rounded to T, then times the weight: the order the reference implementation rounds in
  for (i = 0; i + lanes <= size; i += lanes)
    store(hn::Mul(as_stored<T>(d, hn::Mul(load(d, x + i), hn::Set(d, inverse))), load(d, weight + i)), d, out + i);
  for (; i < size; ++i) out[i] = from_float<T>(to_float(from_float<T>(to_float(x[i]) * inverse)) * to_float(weight[i]));
}

template <typename T>
void rms_norm(const T* x, const T* residual, const T* weight, T* out, T* sum, int64_t size, float eps, int64_t begin,
              int64_t end) {
  const DF d;
  const int64_t lanes = hn::Lanes(d);
  for (int64_t r = begin; r < end; ++r) {
    const T* row = x + r * size;
    if (residual != nullptr) {
      T* added = sum + r * size;
      int64_t i = 0;
      for (; i + lanes <= size; i += lanes)
        store(hn::Add(load(d, residual + r * size + i), load(d, row + i)), d, added + i);
      for (; i < size; ++i) added[i] = from_float<T>(to_float(residual[r * size + i]) + to_float(row[i]));
      row = added;
    }
    rms_norm_row(row, weight, out + r * size, size, eps);
  }
}

void RmsNormRows(DType dtype, const void* x, const void* residual, const void* weight, void* out, void* sum,
                 int64_t size, float eps, int64_t begin, int64_t end) {
  if (dtype == DType::kFloat32)
    rms_norm(static_cast<const float*>(x), static_cast<const float*>(residual), static_cast<const float*>(weight),
             static_cast<float*>(out), static_cast<float*>(sum), size, eps, begin, end);
  else
    rms_norm(static_cast<const bf16*>(x), static_cast<const bf16*>(residual), static_cast<const bf16*>(weight),
             static_cast<bf16*>(out), static_cast<bf16*>(sum), size, eps, begin, end);
}

template <typename T>
void rotary(T* qkv, const float* cos, const float* sin, int64_t width, int64_t rotated_heads, int64_t dim,
            int64_t begin, int64_t end) {
  const DF d;
  const int64_t lanes = hn::Lanes(d), half = dim / 2;
  for (int64_t t = begin; t < end; ++t) {
    const float *c = cos + t * half, *s = sin + t * half;
    for (int64_t h = 0; h < rotated_heads; ++h) {
      T* x = qkv + t * width + h * dim;
      int64_t i = 0;
      for (; i + lanes <= half; i += lanes) {
        const VF a = load(d, x + i), b = load(d, x + half + i), ci = hn::LoadU(d, c + i), si = hn::LoadU(d, s + i);
        store(hn::NegMulAdd(b, si, hn::Mul(a, ci)), d, x + i);
        store(hn::MulAdd(a, si, hn::Mul(b, ci)), d, x + half + i);
      }
      for (; i < half; ++i) {
        const float a = to_float(x[i]), b = to_float(x[i + half]);
        x[i] = from_float<T>(a * c[i] - b * s[i]);
        x[i + half] = from_float<T>(b * c[i] + a * s[i]);
      }
    }
  }
}

void RotaryRows(DType dtype, void* qkv, const float* cos, const float* sin, int64_t width, int64_t rotated_heads,
                int64_t dim, int64_t begin, int64_t end) {
  if (dtype == DType::kFloat32)
    rotary(static_cast<float*>(qkv), cos, sin, width, rotated_heads, dim, begin, end);
  else
    rotary(static_cast<bf16*>(qkv), cos, sin, width, rotated_heads, dim, begin, end);
}

template <typename T>
void silu_and_mul(const T* gate_up, T* out, int64_t size, int64_t begin, int64_t end) {
  const DF d;
  const int64_t lanes = hn::Lanes(d);
  const VF one = hn::Set(d, 1.f);
  for (int64_t t = begin; t < end; ++t) {
    const T* gate = gate_up + t * 2 * size;
    const T* up = gate + size;
    int64_t i = 0;
    for (; i + lanes <= size; i += lanes) {
      const VF g = load(d, gate + i);
      const VF sigmoid = hn::Div(one, hn::Add(one, exp(d, hn::Neg(g))));
      store(hn::Mul(hn::Mul(g, sigmoid), load(d, up + i)), d, out + t * size + i);
    }
    for (; i < size; ++i) {
      const float g = to_float(gate[i]);
      out[t * size + i] = from_float<T>(g / (1.f + std::exp(-g)) * to_float(up[i]));
    }
  }
}

void SiluAndMulRows(DType dtype, const void* gate_up, void* out, int64_t size, int64_t begin, int64_t end) {
  if (dtype == DType::kFloat32)
    silu_and_mul(static_cast<const float*>(gate_up), static_cast<float*>(out), size, begin, end);
  else
    silu_and_mul(static_cast<const bf16*>(gate_up), static_cast<bf16*>(out), size, begin, end);
}

}  // namespace HWY_NAMESPACE
}  // namespace tokenyard
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tokenyard {
HWY_EXPORT(RmsNormRows);
HWY_EXPORT(RotaryRows);
HWY_EXPORT(SiluAndMulRows);

namespace simd {
void rms_norm_rows(DType dtype, const void* x, const void* residual, const void* weight, void* out, void* sum,
                   int64_t size, float eps, int64_t begin, int64_t end) {
  HWY_DYNAMIC_DISPATCH(RmsNormRows)(dtype, x, residual, weight, out, sum, size, eps, begin, end);
}

void rotary_rows(DType dtype, void* qkv, const float* cos, const float* sin, int64_t width, int64_t rotated_heads,
                 int64_t dim, int64_t begin, int64_t end) {
  HWY_DYNAMIC_DISPATCH(RotaryRows)(dtype, qkv, cos, sin, width, rotated_heads, dim, begin, end);
}

void silu_and_mul_rows(DType dtype, const void* gate_up, void* out, int64_t size, int64_t begin, int64_t end) {
  HWY_DYNAMIC_DISPATCH(SiluAndMulRows)(dtype, gate_up, out, size, begin, end);
}
}  // namespace simd
}  // namespace tokenyard
#endif  // HWY_ONCE
