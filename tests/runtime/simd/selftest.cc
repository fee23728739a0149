// Runs every SIMD kernel (runtime/kernels/simd, no PyTorch) on fixed pseudo-random inputs, once per
// instruction set the CPU supports and the build compiled, and prints the outputs: test_simd_kernels.py runs it
// natively and, cross-compiled, under qemu for aarch64, and holds every target's outputs to the same numbers.
// (The native targets are held to PyTorch's own formulas by test_cpu_kernels.py.)
#include <cstdint>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "hwy/highway.h"
#include "hwy/targets.h"
#include "simd/attention.h"
#include "simd/quantized_linear.h"
#include "simd/small_ops.h"
#include "simd/targets.h"

namespace {

using tokenyard::simd::DType;

// Values as the kernels store them: float32, or bfloat16 bits (rounded to nearest even).
struct Buffer {
  DType dtype;
  std::vector<float> f32;
  std::vector<uint16_t> b16;

  Buffer(DType type, size_t size, std::mt19937& random, float scale = 1.f) : dtype(type) {
    std::normal_distribution<float> normal(0.f, scale);
    for (size_t i = 0; i < size; ++i) push(normal(random));
  }
  void push(float value) {
    f32.push_back(value);
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    b16.push_back(uint16_t((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16));
  }
  void* data() { return dtype == DType::kFloat32 ? static_cast<void*>(f32.data()) : static_cast<void*>(b16.data()); }
  float at(size_t i) const {
    if (dtype == DType::kFloat32) return f32[i];
    uint32_t bits = uint32_t(b16[i]) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }
  size_t size() const { return f32.size(); }
};

void print(const std::string& name, DType dtype, const Buffer& values) {
  std::printf("%s %s", name.c_str(), dtype == DType::kFloat32 ? "float32" : "bfloat16");
  for (size_t i = 0; i < values.size(); ++i) std::printf(" %.9g", values.at(i));
  std::printf("\n");
}

// Sizes that are not multiples of any vector width, so every kernel's tail is run too.
void small_ops(DType dtype) {
  std::mt19937 random(7);
  const int64_t rows = 3, size = 100, heads = 3, kv_heads = 1, dim = 24, width = (heads + 2 * kv_heads) * dim;
  Buffer x(dtype, rows * size, random), residual(dtype, rows * size, random), weight(dtype, size, random);
  Buffer out(dtype, rows * size, random), sum(dtype, rows * size, random);
  tokenyard::simd::rms_norm_rows(dtype, x.data(), nullptr, weight.data(), out.data(), nullptr, size, 1e-5f, 0, rows);
  print("rms_norm", dtype, out);
  tokenyard::simd::rms_norm_rows(dtype, x.data(), residual.data(), weight.data(), out.data(), sum.data(), size, 1e-5f,
                                 0, rows);
  print("add_rms_norm", dtype, out);
  print("add_rms_norm.sum", dtype, sum);

  Buffer qkv(dtype, rows * width, random);
  std::vector<float> cos(rows * dim / 2), sin(rows * dim / 2);
  for (size_t i = 0; i < cos.size(); ++i) cos[i] = std::cos(0.1f * i), sin[i] = std::sin(0.1f * i);
  tokenyard::simd::rotary_rows(dtype, qkv.data(), cos.data(), sin.data(), width, heads + kv_heads, dim, 0, rows);
  print("rotary", dtype, qkv);

  Buffer gate_up(dtype, rows * 2 * size, random, 3.f), activated(dtype, rows * size, random);
  tokenyard::simd::silu_and_mul_rows(dtype, gate_up.data(), activated.data(), size, 0, rows);
  print("silu_and_mul", dtype, activated);
}

// Three sequences of a paged cache whose blocks of 16 slots are scattered, contexts that end mid-block; chunks
// of 1, 4 and 7 query tokens (decodes with drafts), grouped-query heads.
void attention(DType dtype) {
  std::mt19937 random(11);
  const int64_t heads = 6, kv_heads = 2, dim = 64, block = 16, blocks = 24, longest = 96;
  const std::vector<int64_t> contexts = {37, 90, 20}, chunks = {1, 4, 7};
  std::vector<int64_t> order(blocks);
  for (int64_t b = 0; b < blocks; ++b) order[b] = (b * 7) % blocks;  // 7 and 24 are coprime: a permutation
  std::vector<int64_t> slots(contexts.size() * longest, 0);
  for (size_t s = 0; s < contexts.size(); ++s)
    for (int64_t p = 0; p < contexts[s]; ++p) slots[s * longest + p] = order[s * 8 + p / block] * block + p % block;
  Buffer cache(dtype, 2 * blocks * block * kv_heads * dim, random), q(dtype, 12 * heads * dim, random);
  Buffer out(dtype, 12 * heads * dim, random);
  tokenyard::simd::PagedAttention batch{dtype, q.data(), heads * dim, dim, cache.data(), blocks * block, heads,
                                        kv_heads, dim, slots.data(), longest, out.data(), 0.125f};
  const int64_t sequences = int64_t(contexts.size());
  tokenyard::simd::decode_attention_rows(batch, contexts.data(), 0, sequences * heads);
  Buffer decoded(dtype, 0, random);
  for (int64_t i = 0; i < sequences * heads * dim; ++i) decoded.push(out.at(i));
  print("decode_attention", dtype, decoded);

  std::vector<int64_t> starts = {0};
  for (const int64_t chunk : chunks) starts.push_back(starts.back() + chunk);
  std::vector<tokenyard::simd::ChunkRows> items;
  const int64_t lanes = tokenyard::simd::float_lanes(), group = heads / kv_heads;
  for (int64_t s = 0; s < sequences; ++s)
    for (int64_t h = 0; h < kv_heads; ++h)
      for (int64_t r = 0; r < chunks[s] * group; r += lanes)
        items.push_back({s, h, r, std::min(lanes, chunks[s] * group - r)});
  tokenyard::simd::chunk_attention_rows(batch, contexts.data(), starts.data(), items.data(), 0, int64_t(items.size()));
  Buffer chunked(dtype, 0, random);
  for (int64_t i = 0; i < starts.back() * heads * dim; ++i) chunked.push(out.at(i));
  print("chunk_attention", dtype, chunked);
}

// 4- and 8-bit codes (any bytes are valid codes) for 40 outputs (not whole tiles of 16), in groups of 32, against
// 1 and 3 rows of x, asymmetric (with mins) and symmetric.
void quantized_matmul(DType dtype) {
  std::mt19937 random(13);
  const int64_t K = 256, N = 40, group = 32, groups = K / group;
  for (const int bits : {4, 8}) {
    const int64_t stored_rows = bits == 8 ? N : (N + 15) / 16 * 16;
    std::vector<uint8_t> codes(stored_rows * K * bits / 8);
    for (uint8_t& code : codes) code = uint8_t(random());
    Buffer scales(DType::kFloat32, stored_rows * groups, random, 0.01f), mins(DType::kFloat32, stored_rows * groups, random, 0.1f);
    for (const int64_t M : {1, 3}) {
      for (const bool symmetric : {false, true}) {
        Buffer x(dtype, M * K, random), out(dtype, M * N, random);
        std::vector<float> x_float(M * K), x_sums(M * groups);
        std::vector<uint16_t> x_bf16(M * K);
        const bool bf16_dot = tokenyard::simd::quantized_uses_bf16_dot(dtype, bits, M);
        tokenyard::simd::prepare_quantized_x(dtype, x.data(), M, K, K, group, x_float.data(),
                                             bf16_dot ? x_bf16.data() : nullptr, x_sums.data());
        tokenyard::simd::QuantizedMatmul p{codes.data(), bits, scales.data(), symmetric ? nullptr : mins.data(),
                                           DType::kFloat32, x_float.data(), bf16_dot ? x_bf16.data() : nullptr,
                                           x_sums.data(), M, K, N, group, groups};
        tokenyard::simd::quantized_matmul_blocks(p, dtype, out.data(), 0, stored_rows / 16 + (stored_rows % 16 != 0));
        print("quantized_matmul_" + std::to_string(bits) + "bit_M" + std::to_string(M) + (symmetric ? "_sym" : ""),
              dtype, out);
      }
    }
  }
}

}  // namespace

int main() {
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    hwy::GetChosenTarget().Update(hwy::SupportedTargets());
    std::printf("target %s\n", tokenyard::simd::chosen_target().c_str());
    for (const DType dtype : {DType::kFloat32, DType::kBFloat16}) {
      small_ops(dtype);
      attention(dtype);
      quantized_matmul(dtype);
    }
  }
  return 0;
}
