// The groupwise 4- and 8-bit matmul on tensors (the SIMD code is simd/quantized_linear_simd.cc; the storage
// layouts are described in cpu_kernels.cpp).
#include "common.h"
#include "simd/quantized_linear.h"

namespace tokenyard {

// x: (..., width) float32 or bfloat16, width up to K (missing columns count as zeros). 8-bit codes: (N, K)
// int8, scales and mins (N, K / group); 4-bit codes: (tiles * 16, K / 2) uint8 in tiles of 16 rows (see
// cpu_kernels.cpp), scales and mins (tiles, K / group, 16). Scales and mins float32 or bfloat16 (both the
// same), mins empty for symmetric codes. Returns (..., out_features) in x's dtype.
at::Tensor quantized_linear(const at::Tensor& x_in, const at::Tensor& codes, const at::Tensor& scales,
                            const at::Tensor& mins, int64_t bits, int64_t group, int64_t out_features) {
  TORCH_CHECK(x_in.dim() >= 1 && codes.dim() == 2 && codes.is_contiguous(), "x must be (..., width), codes 2-D");
  TORCH_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8, got ", bits);
  const int64_t K = bits == 8 ? codes.size(1) : 2 * codes.size(1), N = out_features;
  const int64_t stored_rows = bits == 8 ? N : (N + 15) / 16 * 16;
  TORCH_CHECK(codes.size(0) == stored_rows, "codes for ", N, " outputs must have ", stored_rows, " rows, got ",
              codes.size(0));
  const int64_t width = x_in.size(-1), M = x_in.numel() / std::max<int64_t>(width, 1);
  const at::Tensor x = x_in.contiguous();
  TORCH_CHECK(group % 32 == 0 && K % group == 0, "group must be a multiple of 32 dividing K=", K, ", got ", group);
  TORCH_CHECK(width <= K && K - width < group, "x has ", width, " columns for codes of K=", K, " in groups of ", group);
  const int64_t groups = K / group;
  const bool symmetric = mins.numel() == 0;
  TORCH_CHECK(scales.is_contiguous() && mins.is_contiguous() && scales.numel() == stored_rows * groups &&
                  (symmetric || mins.numel() == stored_rows * groups),
              "scales and mins must be contiguous, one per stored row and group (mins empty for symmetric codes)");
  const bool bf16_scales = scales.scalar_type() == at::kBFloat16;
  TORCH_CHECK((bf16_scales || scales.scalar_type() == at::kFloat) &&
                  (symmetric || mins.scalar_type() == scales.scalar_type()),
              "scales and mins must both be float32 or both bfloat16");
  const simd::DType dtype = dtype_of(x);
  const bool bf16_dot = simd::quantized_uses_bf16_dot(dtype, int(bits), M);
  thread_local std::vector<float> xf, xsum;
  thread_local std::vector<uint16_t> xb;
  xf.resize(M * K);
  xsum.resize(M * groups);
  xb.resize(bf16_dot ? M * K : 0);
  uint16_t* x_bf16 = xb.empty() ? nullptr : xb.data();
  simd::prepare_quantized_x(dtype, x.data_ptr(), M, width, K, group, xf.data(), x_bf16, xsum.data());
  const simd::DType scales_dtype = bf16_scales ? simd::DType::kBFloat16 : simd::DType::kFloat32;
  // prefill: x once more as int8, for integer dot products (see quantize_x_int8)
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> xd;
  const bool int8_dot = simd::quantized_uses_int8_dot(int(bits), M);
  xq.resize(int8_dot ? 2 * M * K : 0);
  xd.resize(int8_dot ? M * groups : 0);
  if (int8_dot) simd::quantize_x_int8(xf.data(), M, K, group, xq.data(), xd.data());
  const simd::QuantizedMatmul p{static_cast<const uint8_t*>(codes.data_ptr()), int(bits), scales.data_ptr(),
                                symmetric ? nullptr : mins.data_ptr(), scales_dtype, xf.data(), x_bf16, xsum.data(),
                                M, K, N, group, groups, int8_dot ? xq.data() : nullptr,
                                int8_dot ? xd.data() : nullptr};
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = N;
  at::Tensor out = at::empty(out_shape, x.options());
  // each thread takes whole blocks of weight rows (tiles, for 4-bit codes) and every row of x with them
  const int64_t blocks = (N + simd::kWeightRowsPerBlock - 1) / simd::kWeightRowsPerBlock;
  at::parallel_for(0, blocks, parallel_grain(blocks, M * N * K), [&](int64_t begin, int64_t end) {
    simd::quantized_matmul_blocks(p, dtype, out.data_ptr(), begin, end);
  });
  return out;
}

}  // namespace tokenyard
