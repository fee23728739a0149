// The groupwise 4- and 8-bit matmul (see cpu_kernels.cpp for the storage layout).
#include "common.h"

namespace tokenyard {

constexpr int64_t kRowsPerCall = 8;   // rows of x that share one pass over a block of weights
constexpr int64_t kRowBlock = 16;     // the unit of work a thread takes
constexpr int64_t kPrefetchRows = 32;  // how far ahead the next weight rows are fetched (tuned here)
constexpr int kFoldFromRows = 4;       // rows of x from which folding scales into the table pays (rows_bf16_folded)

// What one call needs besides the codes: x as float32 (and, for the bfloat16 path, reordered bfloat16),
// the per-group sums of x that the mins multiply, and where results go.
struct Problem {
  const uint8_t* codes;
  const void* scales;       // float32, or bfloat16 (bfloat16 models: fewer bytes to stream)
  const void* mins;         // the same dtype; nullptr for symmetric codes
  bool bf16_scales;
  const float* x;           // (M, K) float32
  const uint16_t* x_pairs;  // (M, K) bfloat16 bits (4-bit codes: in their lanes' order), or nullptr
  const float* xsum;        // (M, groups)
  int64_t K, N, group, groups;
};

template <typename T>
inline void store(T* out, float value) {
  *out = T(value);
}

// Up to 16 values from i on (masked: past the end reads nothing), float32 or bfloat16, as float32.
inline __m512 load_values(const void* values, bool bf16, int64_t i, __mmask16 mask) {
  if (!bf16) return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(values) + i);
  const __m256i bits = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(values) + i);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// Lane-wise partial sums over groups of (min - bias * scale) * sum(x in the group): what the mins add to an
// output, less what a bias added to every code (see rows_bf16) added to it; zero for symmetric codes.
inline __m512 offsets(const Problem& p, int64_t n, int64_t m, float bias = 0.f) {
  __m512 sum = _mm512_setzero_ps();
  if (p.mins == nullptr && bias == 0.f) return sum;  // symmetric codes: a code of 0 is a weight of 0
  for (int64_t g = 0; g < p.groups; g += 16) {
    const __mmask16 mask = p.groups - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (p.groups - g)) - 1);
    __m512 mins = p.mins == nullptr ? _mm512_setzero_ps() : load_values(p.mins, p.bf16_scales, n * p.groups + g, mask);
    if (bias != 0.f)
      mins = _mm512_fnmadd_ps(load_values(p.scales, p.bf16_scales, n * p.groups + g, mask), _mm512_set1_ps(bias), mins);
    sum = _mm512_fmadd_ps(mins, _mm512_maskz_loadu_ps(mask, p.xsum + m * p.groups + g), sum);
  }
  return sum;
}

// One scale (or min) broadcast to 16 lanes.
inline __m512 broadcast(const void* values, bool bf16, int64_t i) {
  if (bf16) return _mm512_castsi512_ps(_mm512_set1_epi32(int32_t(static_cast<const uint16_t*>(values)[i]) << 16));
  return _mm512_set1_ps(static_cast<const float*>(values)[i]);
}

// Rows are read side by side, which hides them from the hardware prefetcher: fetch ahead explicitly
// (a prefetch past the end of the weight never faults).
inline void prefetch(const uint8_t* address) { _mm_prefetch(reinterpret_cast<const char*>(address), _MM_HINT_T0); }

// 32 codes of a row at column k as two vectors of 16 floats (columns k..k+15 and k+16..k+31).
template <int Bits>
inline void load_codes(const uint8_t* row, int64_t k, __m512& first, __m512& second) {
  if constexpr (Bits == 8) {
    first = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k))));
    second = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 16))));
  } else {
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2)));
    first = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(15)));
    second = _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4));
  }
}

// float32 FMAs: R weight rows against M rows of x at once, R * M * 2 independent FMA chains.
template <int Bits, int M, int R, typename T>
void rows_float(const Problem& p, int64_t n, T* out) {
  const int64_t row_bytes = Bits == 8 ? p.K : p.K / 2;
  __m512 total[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) total[r][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.groups; ++g) {
    __m512 even[R][M], odd[R][M];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) even[r][m] = odd[r][m] = _mm512_setzero_ps();
    for (int64_t k = g * p.group; k < (g + 1) * p.group; k += 32) {
      for (int r = 0; r < R; ++r) {
        if ((k * Bits / 8) % 64 == 0) prefetch(p.codes + (n + r + kPrefetchRows) * row_bytes + k * Bits / 8);
        __m512 first, second;
        load_codes<Bits>(p.codes + (n + r) * row_bytes, k, first, second);
        for (int m = 0; m < M; ++m) {
          even[r][m] = _mm512_fmadd_ps(first, _mm512_loadu_ps(p.x + m * p.K + k), even[r][m]);
          odd[r][m] = _mm512_fmadd_ps(second, _mm512_loadu_ps(p.x + m * p.K + k + 16), odd[r][m]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 scale = broadcast(p.scales, p.bf16_scales, (n + r) * p.groups + g);
      for (int m = 0; m < M; ++m)
        total[r][m] = _mm512_fmadd_ps(_mm512_add_ps(even[r][m], odd[r][m]), scale, total[r][m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) store(out + m * p.N + n + r, _mm512_reduce_add_ps(_mm512_add_ps(total[r][m], offsets(p, n + r, m))));
}

// 4-bit codes against bfloat16 x: vdpbf16ps multiplies 32 pairs per instruction, twice the float32 FMA rate.
// A code becomes an exact bfloat16 by OR-ing its bits into the mantissa of 128.0 (bias + code, one logic op;
// offsets() takes the bias back out once per output). 64 columns at a time (two runs of 32): the low nibbles
// are columns k..k+15 and k+32..k+47, the high ones k+16..k+31 and k+48..k+63, the order x_pairs holds x in.
// The scales apply once per group; with groups of 32 the two runs' scales differ, so the upper eight float
// lanes take the second run's.
template <int M, int R, bool kGroupsOf32, typename T>
__attribute__((target("avx512bf16"))) void rows_bf16(const Problem& p, int64_t n, T* out) {
  const int64_t row_bytes = p.K / 2, steps_per_group = kGroupsOf32 ? 1 : p.group / 64;
  const __m512i low_nibble = _mm512_set1_epi16(15), bias = _mm512_set1_epi16(0x4300);  // bfloat16 128.0
  __m512 total[R][M], low[R][M], high[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) total[r][m] = low[r][m] = high[r][m] = _mm512_setzero_ps();
  int64_t group = 0, steps_left = steps_per_group;
  for (int64_t k = 0; k < p.K; k += 64) {
    __m512bh x_low[M], x_high[M];
    for (int m = 0; m < M; ++m) {
      x_low[m] = (__m512bh)_mm512_loadu_si512(p.x_pairs + m * p.K + k);
      x_high[m] = (__m512bh)_mm512_loadu_si512(p.x_pairs + m * p.K + k + 32);
    }
    for (int r = 0; r < R; ++r) {
      const uint8_t* bytes = p.codes + (n + r) * row_bytes + k / 2;
      if (k % 128 == 0) prefetch(bytes + kPrefetchRows * row_bytes);  // once per 64-byte line
      const __m512i words = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes)));
      const __m512bh w_low = (__m512bh)_mm512_ternarylogic_epi32(words, low_nibble, bias, 0xEA);  // (w & 15) | bias
      const __m512bh w_high = (__m512bh)_mm512_or_si512(_mm512_srli_epi16(words, 4), bias);
      for (int m = 0; m < M; ++m) {
        low[r][m] = _mm512_dpbf16_ps(low[r][m], w_low, x_low[m]);
        high[r][m] = _mm512_dpbf16_ps(high[r][m], w_high, x_high[m]);
      }
    }
    if (--steps_left > 0) continue;
    for (int r = 0; r < R; ++r) {  // the end of a group (of two, with groups of 32)
      const int64_t g = (n + r) * p.groups + group;
      const __m512 first = broadcast(p.scales, p.bf16_scales, g);
      const __m512 scales = kGroupsOf32 ? _mm512_mask_blend_ps(0xFF00, first, broadcast(p.scales, p.bf16_scales, g + 1)) : first;
      for (int m = 0; m < M; ++m) {
        total[r][m] = _mm512_fmadd_ps(_mm512_add_ps(low[r][m], high[r][m]), scales, total[r][m]);
        low[r][m] = high[r][m] = _mm512_setzero_ps();
      }
    }
    group += kGroupsOf32 ? 2 : 1;
    steps_left = steps_per_group;
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m)
      store(out + m * p.N + n + r, _mm512_reduce_add_ps(_mm512_add_ps(total[r][m], offsets(p, n + r, m, 128.f))));
}

// The same product for several rows of x, where per-group work would be paid once per row of x: each
// 64-column chunk's table holds the dequantized weights themselves (scale and min folded in, rounded to
// bfloat16, the precision a bfloat16 model's weights have), 16 entries for each of its two runs of 32
// columns, so the rows of x only multiply and add. Any group size that is a multiple of 32.
template <int M, int R, typename T>
__attribute__((target("avx512bf16"))) void rows_bf16_folded(const Problem& p, int64_t n, T* out) {
  const int64_t row_bytes = p.K / 2;
  const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i second_run = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(16), 1);
  const __m512i low_nibble = _mm512_set1_epi16(15);
  __m512 low[R][M], high[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) low[r][m] = high[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < p.K; k += 64) {
    for (int r = 0; r < R; ++r) {
      const int64_t first = (n + r) * p.groups + k / p.group, second = (n + r) * p.groups + (k + 32) / p.group;
      const __m512 run_a = _mm512_fmadd_ps(codes, broadcast(p.scales, p.bf16_scales, first),
                                           p.mins ? broadcast(p.mins, p.bf16_scales, first) : _mm512_setzero_ps());
      const __m512 run_b = _mm512_fmadd_ps(codes, broadcast(p.scales, p.bf16_scales, second),
                                           p.mins ? broadcast(p.mins, p.bf16_scales, second) : _mm512_setzero_ps());
      const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(run_b, run_a);
      const uint8_t* bytes = p.codes + (n + r) * row_bytes + k / 2;
      if (k % 128 == 0) prefetch(bytes + kPrefetchRows * row_bytes);
      const __m512i words = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes)));
      const __m512i low_index = _mm512_or_si512(_mm512_and_si512(words, low_nibble), second_run);
      const __m512i high_index = _mm512_or_si512(_mm512_srli_epi16(words, 4), second_run);
      const __m512bh w_low = (__m512bh)_mm512_permutexvar_epi16(low_index, table);
      const __m512bh w_high = (__m512bh)_mm512_permutexvar_epi16(high_index, table);
      for (int m = 0; m < M; ++m) {
        const uint16_t* x = p.x_pairs + m * p.K + k;
        low[r][m] = _mm512_dpbf16_ps(low[r][m], w_low, (__m512bh)_mm512_loadu_si512(x));
        high[r][m] = _mm512_dpbf16_ps(high[r][m], w_high, (__m512bh)_mm512_loadu_si512(x + 32));
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) store(out + m * p.N + n + r, _mm512_reduce_add_ps(_mm512_add_ps(low[r][m], high[r][m])));
}

// 8-bit codes against several rows of bfloat16 x: codes are exact in bfloat16, so 32 of them become one
// vector of pairs and each row of x takes one vdpbf16ps per 32 columns instead of two float32 FMAs.
template <int M, int R, typename T>
__attribute__((target("avx512bf16"))) void rows_bf16_int8(const Problem& p, int64_t n, T* out) {
  __m512 total[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) total[r][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.groups; ++g) {
    __m512 part[R][M];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) part[r][m] = _mm512_setzero_ps();
    for (int64_t k = g * p.group; k < (g + 1) * p.group; k += 32) {
      for (int r = 0; r < R; ++r) {
        const uint8_t* row = p.codes + (n + r) * p.K;
        if (k % 64 == 0) prefetch(row + kPrefetchRows * p.K + k);
        __m512 first, second;
        load_codes<8>(row, k, first, second);
        const __m512bh w = _mm512_cvtne2ps_pbh(second, first);
        for (int m = 0; m < M; ++m)
          part[r][m] = _mm512_dpbf16_ps(part[r][m], w, (__m512bh)_mm512_loadu_si512(p.x_pairs + m * p.K + k));
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 scale = broadcast(p.scales, p.bf16_scales, (n + r) * p.groups + g);
      for (int m = 0; m < M; ++m) total[r][m] = _mm512_fmadd_ps(part[r][m], scale, total[r][m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) store(out + m * p.N + n + r, _mm512_reduce_add_ps(_mm512_add_ps(total[r][m], offsets(p, n + r, m))));
}

// Weight rows [n_begin, n_end) against M (1..8) rows of x: four weight rows at a time for one or two
// rows of x, fewer as M grows (32 vector registers).
template <int Bits, int M, typename T>
void block(const Problem& p, int64_t n_begin, int64_t n_end, T* out) {
  constexpr int R = M <= 2 ? 4 : (M <= 4 ? 2 : 1);
  auto rows = [&](auto width, int64_t n) {
    constexpr int W = decltype(width)::value;
    if (Bits == 8 && p.x_pairs != nullptr) {
      rows_bf16_int8<M, W>(p, n, out);
    } else if (Bits == 4 && p.x_pairs != nullptr && M >= kFoldFromRows) {
      rows_bf16_folded<M, W>(p, n, out);
    } else if (Bits == 4 && p.x_pairs != nullptr) {
      if (p.group == 32)
        rows_bf16<M, W, true>(p, n, out);
      else
        rows_bf16<M, W, false>(p, n, out);
    } else {
      rows_float<Bits, M, W>(p, n, out);
    }
  };
  int64_t n = n_begin;
  for (; n + R <= n_end; n += R) rows(std::integral_constant<int, R>{}, n);
  for (; n < n_end; ++n) rows(std::integral_constant<int, 1>{}, n);
}

template <int Bits, typename T>
void block_of_rows(int64_t rows_of_x, const Problem& p, int64_t n_begin, int64_t n_end, T* out) {
  switch (rows_of_x) {
#define TOKENYARD_ROWS(M)                          \
  case M:                                          \
    block<Bits, M>(p, n_begin, n_end, out); \
    break;
    TOKENYARD_ROWS(1)
    TOKENYARD_ROWS(2)
    TOKENYARD_ROWS(3)
    TOKENYARD_ROWS(4)
    TOKENYARD_ROWS(5)
    TOKENYARD_ROWS(6)
    TOKENYARD_ROWS(7)
    TOKENYARD_ROWS(8)
#undef TOKENYARD_ROWS
  }
}

bool has_bf16_dot() {
  static const bool supported = __builtin_cpu_supports("avx512bf16");
  return supported;
}

// 16 values of x from column k as float32, and their bfloat16 bits (x bfloat16 only); zeros past `width`.
inline __m512 load_x(const float* row, int64_t k, __mmask16 mask, __m256i&) { return _mm512_maskz_loadu_ps(mask, row + k); }
inline __m512 load_x(const c10::BFloat16* row, int64_t k, __mmask16 mask, __m256i& bits) {
  bits = _mm256_maskz_loadu_epi16(mask, row + k);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// x as the kernels read it, row by row: float32 (M, K); for the bfloat16 paths its bfloat16 bits (for
// 4-bit codes in their nibbles' lane order: of each 64 columns, 0..15, 32..47, 16..31, 48..63, see
// rows_bf16); the per-group sums the mins multiply. Columns from x's own width to K are zero: a weight
// whose K is not a multiple of its group is stored padded with zero codes to whole groups.
template <typename T>
void prepare_x(const T* x, int64_t M, int64_t width, const Problem& p, float* xf, uint16_t* xb, bool nibble_order,
               float* xsum) {
  for (int64_t m = 0; m < M; ++m) {
    const T* row = x + m * width;
    __m512 group_sum = _mm512_setzero_ps();
    for (int64_t k = 0; k < p.K; k += 16) {
      const int64_t left = std::clamp<int64_t>(width - k, 0, 16);
      const __mmask16 mask = static_cast<__mmask16>((1u << left) - 1);
      __m256i bits;
      const __m512 values = load_x(row, k, mask, bits);
      _mm512_storeu_ps(xf + m * p.K + k, values);
      if (xb != nullptr) {
        const int64_t chunk = (k % 64) / 16, to = nibble_order && (chunk == 1 || chunk == 2) ? k + 16 * (3 - 2 * chunk) : k;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(xb + m * p.K + to), bits);
      }
      group_sum = _mm512_add_ps(group_sum, values);
      if ((k + 16) % p.group == 0) {
        xsum[m * p.groups + k / p.group] = _mm512_reduce_add_ps(group_sum);
        group_sum = _mm512_setzero_ps();
      }
    }
  }
}

// x: (..., width) float32 or bfloat16, width up to K (missing columns count as zeros); codes: (N, K) int8
// for bits=8, (N, K/2) uint8 for bits=4; scales, mins: (N, K/group) float32 or bfloat16 (both the same),
// mins empty for symmetric codes. Returns (..., N) in x's dtype.
at::Tensor quantized_linear(const at::Tensor& x_in, const at::Tensor& codes, const at::Tensor& scales,
                            const at::Tensor& mins, int64_t bits, int64_t group) {
  TORCH_CHECK(x_in.dim() >= 1 && codes.dim() == 2 && codes.is_contiguous(), "x must be (..., width), codes 2-D");
  TORCH_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8, got ", bits);
  const int64_t K = bits == 8 ? codes.size(1) : 2 * codes.size(1), N = codes.size(0);
  const int64_t width = x_in.size(-1), M = x_in.numel() / std::max<int64_t>(width, 1);
  const at::Tensor x = x_in.contiguous();
  TORCH_CHECK(group % 32 == 0 && K % group == 0, "group must be a multiple of 32 dividing K=", K, ", got ", group);
  TORCH_CHECK(width <= K && K - width < group, "x has ", width, " columns for codes of K=", K, " in groups of ", group);
  const int64_t groups = K / group;
  const bool symmetric = mins.numel() == 0;
  TORCH_CHECK(scales.is_contiguous() && mins.is_contiguous() && scales.numel() == N * groups &&
                  (symmetric || mins.numel() == N * groups),
              "scales and mins must be contiguous (N, K / group) (mins empty for symmetric codes)");
  const bool bf16_scales = scales.scalar_type() == at::kBFloat16;
  TORCH_CHECK((bf16_scales || scales.scalar_type() == at::kFloat) && (symmetric || mins.scalar_type() == scales.scalar_type()),
              "scales and mins must both be float32 or both bfloat16");
  const bool bf16_x = x.scalar_type() == at::kBFloat16 && has_bf16_dot();
  // 4-bit codes: x reordered to the nibbles' lane order; 8-bit codes: x as it is, from a few rows up
  const bool bf16_dot = bits == 4 && bf16_x && K % 64 == 0 && (group == 32 || group % 64 == 0);
  const bool bf16_int8 = bits == 8 && bf16_x && M >= kFoldFromRows;
  thread_local std::vector<float> xf, xsum;
  thread_local std::vector<uint16_t> xb;
  xf.resize(M * K);
  xsum.resize(M * groups);
  xb.resize(bf16_dot || bf16_int8 ? M * K : 0);
  Problem p{reinterpret_cast<const uint8_t*>(codes.data_ptr()), scales.data_ptr(), symmetric ? nullptr : mins.data_ptr(),
            bf16_scales, xf.data(), xb.empty() ? nullptr : xb.data(), xsum.data(), K, N, group, groups};
  FLOAT_OR_BFLOAT16(x.scalar_type(), "quantized_linear", [&] {
    prepare_x(x.data_ptr<scalar_t>(), M, width, p, xf.data(), xb.empty() ? nullptr : xb.data(), bf16_dot, xsum.data());
  });
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = N;
  at::Tensor out = at::empty(out_shape, x.options());
  const int64_t row_bytes = bits == 8 ? K : K / 2;
  FLOAT_OR_BFLOAT16(x.scalar_type(), "quantized_linear", [&] {
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
    at::parallel_for(0, blocks, parallel_grain(blocks, M * N * K), [&](int64_t block_begin, int64_t block_end) {
      // the blocks prefetch kPrefetchRows ahead as they go: fetch the first ones now, all at once
      const uint8_t* first = p.codes + block_begin * kRowBlock * row_bytes;
      const int64_t ahead = std::min(kPrefetchRows, N - block_begin * kRowBlock) * row_bytes;
      for (int64_t byte = 0; byte < ahead; byte += 64) prefetch(first + byte);
      for (int64_t b = block_begin; b < block_end; ++b) {
        const int64_t n_begin = b * kRowBlock, n_end = std::min(N, n_begin + kRowBlock);
        for (int64_t m = 0; m < M; m += kRowsPerCall) {
          Problem rows = p;
          rows.x += m * K;
          rows.xsum += m * groups;
          if (rows.x_pairs != nullptr) rows.x_pairs += m * K;
          const int64_t count = std::min(kRowsPerCall, M - m);
          if (bits == 8)
            block_of_rows<8>(count, rows, n_begin, n_end, out_ptr + m * N);
          else
            block_of_rows<4>(count, rows, n_begin, n_end, out_ptr + m * N);
        }
      }
    });
  });
  return out;
}

}  // namespace tokenyard
