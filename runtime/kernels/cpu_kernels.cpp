// Hand-written AVX-512 kernels for batch-1 (and small-batch) CPU decoding.
//
// Decoding a small model on a CPU is bound by two things: streaming the weights from memory once per
// token, and the fixed cost of the ~25 small tensor ops per layer around the matmuls. PyTorch's packed
// quantized kernels stream int8 and int4 weights well below memory bandwidth at M=1, and each eager op
// costs microseconds of dispatch. These kernels do both jobs in one pass each:
//
// * quantized_linear: y = x @ W.T for W[n, k] = code[n, k] * scale[n, g] + min[n, g] (g = k / group),
//   computed as sum_g scale * (codes . x) + sum_g min * sum(x in g), so codes are converted to float once
//   per weight and multiplied by every row of x while they sit in registers. 8-bit codes are stored as
//   int8 (code - 128, folded into min); 4-bit codes two per byte: in each run of 32 codes, byte i holds
//   code i in its low nibble and code i + 16 in its high one.
// * rms_norm / add_rms_norm, rotary, silu_and_mul, and attention of decode rows (and the drafts they
//   verify) over the paged KV cache: one call where eager PyTorch needs five to fifteen.
//
// Everything accumulates in float32; bfloat16 results are rounded once, at the end.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// The dtypes the runtime computes in on a CPU (float16 matmuls are ~1000x slower there).
#define FLOAT_OR_BFLOAT16(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

constexpr int64_t kRowsPerCall = 8;   // rows of x that share one pass over a block of weights
constexpr int64_t kRowBlock = 16;     // the unit of work a thread takes
constexpr int64_t kPrefetchRows = 32;  // how far ahead the next weight rows are fetched (tuned here)
constexpr int kFoldFromRows = 4;       // rows of x from which folding scales into the table pays (rows_bf16_folded)

// Work below this many multiply-adds runs on the calling thread. A parallel region costs a few microseconds
// when both cores are free, and a scheduler tick (milliseconds) when another process holds one of them
// (a test client next to its server, a tokenizer thread): most decode steps' small ops are not worth it.
constexpr int64_t kParallelWork = 1 << 16;

// The grain that makes at::parallel_for run `items` serially below kParallelWork, split them above it.
inline int64_t parallel_grain(int64_t items, int64_t work) { return work < kParallelWork ? std::max<int64_t>(items, 1) : 1; }

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

inline float read(const void* values, bool bf16, int64_t i) {
  return bf16 ? float(static_cast<const c10::BFloat16*>(values)[i]) : static_cast<const float*>(values)[i];
}

// Up to 16 values from i on (masked: past the end reads nothing), float32 or bfloat16, as float32.
inline __m512 load_values(const void* values, bool bf16, int64_t i, __mmask16 mask) {
  if (!bf16) return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(values) + i);
  const __m256i bits = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(values) + i);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// sum over groups of min * sum(x in the group): what the mins add to an output (none when symmetric).
inline float offset_of(const Problem& p, int64_t n, int64_t m) {
  if (p.mins == nullptr) return 0.f;  // symmetric codes: a code of 0 is a weight of 0
  __m512 sum = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.groups; g += 16) {
    const __mmask16 mask = p.groups - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (p.groups - g)) - 1);
    const __m512 mins = load_values(p.mins, p.bf16_scales, n * p.groups + g, mask);
    sum = _mm512_fmadd_ps(mins, _mm512_maskz_loadu_ps(mask, p.xsum + m * p.groups + g), sum);
  }
  return _mm512_reduce_add_ps(sum);
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
      const __m512 scale = _mm512_set1_ps(read(p.scales, p.bf16_scales, (n + r) * p.groups + g));
      for (int m = 0; m < M; ++m)
        total[r][m] = _mm512_fmadd_ps(_mm512_add_ps(even[r][m], odd[r][m]), scale, total[r][m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) store(out + m * p.N + n + r, _mm512_reduce_add_ps(total[r][m]) + offset_of(p, n + r, m));
}

// 4-bit codes against bfloat16 x: codes become exact bfloat16 through a 16-entry table (vpermw) and
// vdpbf16ps multiplies 32 pairs per instruction, twice the float32 FMA rate. 64 columns at a time (two
// runs of 32): the low nibbles are columns k..k+15 and k+32..k+47, the high ones k+16..k+31 and
// k+48..k+63, which is the order x_pairs holds x in. With groups of 32 the two runs' scales differ, so
// the upper eight float lanes take the second run's scale.
template <int M, int R, bool kGroupsOf32, typename T>
__attribute__((target("avx512bf16"))) void rows_bf16(const Problem& p, int64_t n, T* out) {
  const int64_t row_bytes = p.K / 2;
  const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(codes, codes);  // code -> its bfloat16, twice over
  const __m512i low_nibble = _mm512_set1_epi16(15);
  __m512 total[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) total[r][m] = _mm512_setzero_ps();
  const int64_t step = kGroupsOf32 ? 64 : p.group;
  for (int64_t k0 = 0; k0 < p.K; k0 += step) {
    __m512 low[R][M], high[R][M];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) low[r][m] = high[r][m] = _mm512_setzero_ps();
    for (int64_t k = k0; k < k0 + step; k += 64) {
      for (int r = 0; r < R; ++r) {
        const uint8_t* bytes = p.codes + (n + r) * row_bytes + k / 2;
        if (k % 128 == 0) prefetch(bytes + kPrefetchRows * row_bytes);  // once per 64-byte line
        const __m512i words = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes)));
        const __m512bh w_low = (__m512bh)_mm512_permutexvar_epi16(_mm512_and_si512(words, low_nibble), table);
        const __m512bh w_high = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(words, 4), table);
        for (int m = 0; m < M; ++m) {
          const uint16_t* x = p.x_pairs + m * p.K + k;
          low[r][m] = _mm512_dpbf16_ps(low[r][m], w_low, (__m512bh)_mm512_loadu_si512(x));
          high[r][m] = _mm512_dpbf16_ps(high[r][m], w_high, (__m512bh)_mm512_loadu_si512(x + 32));
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const int64_t g = (n + r) * p.groups + k0 / p.group;
      const __m512 first = _mm512_set1_ps(read(p.scales, p.bf16_scales, g));
      const __m512 scales =  // with groups of 32, lanes 8-15 take the second run's scale
          kGroupsOf32 ? _mm512_mask_blend_ps(0xFF00, first, _mm512_set1_ps(read(p.scales, p.bf16_scales, g + 1))) : first;
      for (int m = 0; m < M; ++m)
        total[r][m] = _mm512_fmadd_ps(_mm512_add_ps(low[r][m], high[r][m]), scales, total[r][m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) store(out + m * p.N + n + r, _mm512_reduce_add_ps(total[r][m]) + offset_of(p, n + r, m));
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
      const __m512 run_a = _mm512_fmadd_ps(codes, _mm512_set1_ps(read(p.scales, p.bf16_scales, first)),
                                           _mm512_set1_ps(p.mins ? read(p.mins, p.bf16_scales, first) : 0.f));
      const __m512 run_b = _mm512_fmadd_ps(codes, _mm512_set1_ps(read(p.scales, p.bf16_scales, second)),
                                           _mm512_set1_ps(p.mins ? read(p.mins, p.bf16_scales, second) : 0.f));
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
      const __m512 scale = _mm512_set1_ps(read(p.scales, p.bf16_scales, (n + r) * p.groups + g));
      for (int m = 0; m < M; ++m) total[r][m] = _mm512_fmadd_ps(part[r][m], scale, total[r][m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) store(out + m * p.N + n + r, _mm512_reduce_add_ps(total[r][m]) + offset_of(p, n + r, m));
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

// ---- the small ops around the matmuls (float32 inside, one rounding to the tensor's dtype) ----

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

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {  // bfloat16 is the upper half of a float32
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(c10::BFloat16* p, __m512 v) {  // round to nearest even, as c10::BFloat16 does
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
}

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

// In place: r[i] holds row i of a 16 x 16 float tile; afterwards r[c] holds column c.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: rows i, i+1 interleaved, two columns each
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // r[i + b], lane L: column 4L + b of rows i .. i+3
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int b = 0; b < 4; ++b) {  // a 4 x 4 transpose of 128-bit lanes across r[b], r[4 + b], r[8 + b], r[12 + b]
    const __m512 x0 = _mm512_shuffle_f32x4(r[b], r[4 + b], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 x1 = _mm512_shuffle_f32x4(r[b], r[4 + b], _MM_SHUFFLE(3, 1, 3, 1));
    const __m512 x2 = _mm512_shuffle_f32x4(r[8 + b], r[12 + b], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 x3 = _mm512_shuffle_f32x4(r[8 + b], r[12 + b], _MM_SHUFFLE(3, 1, 3, 1));
    t[b] = _mm512_shuffle_f32x4(x0, x2, _MM_SHUFFLE(2, 0, 2, 0));
    t[8 + b] = _mm512_shuffle_f32x4(x0, x2, _MM_SHUFFLE(3, 1, 3, 1));
    t[4 + b] = _mm512_shuffle_f32x4(x1, x3, _MM_SHUFFLE(2, 0, 2, 0));
    t[12 + b] = _mm512_shuffle_f32x4(x1, x3, _MM_SHUFFLE(3, 1, 3, 1));
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// One query token per row attending to its context straight from the paged cache (no gathered copy):
// q (rows, heads, dim); kv_cache (2, slots, kv_heads, dim); slots (rows, longest) int64, the cache
// slot of each context position; lengths (rows,) int64. Grouped-query heads share their KV head.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& slots,
                            const at::Tensor& lengths, double scale) {
  TORCH_CHECK(kv_cache.is_contiguous() && slots.is_contiguous() && lengths.is_contiguous(),
              "decode_attention takes a contiguous cache, slots and lengths");
  TORCH_CHECK(q.stride(2) == 1, "query heads must be contiguous in dim");
  const int64_t rows = q.size(0), heads = q.size(1), dim = q.size(2);
  TORCH_CHECK(dim % 16 == 0 && dim <= 256, "decode_attention takes head_dim a multiple of 16 up to 256, got ", dim);
  const int64_t kv_heads = kv_cache.size(2), half = kv_cache.size(1), group = heads / kv_heads;
  const int64_t longest = slots.size(1), chunks = dim / 16;
  at::Tensor out = at::empty({rows, heads, dim}, q.options());
  FLOAT_OR_BFLOAT16(q.scalar_type(), "decode_attention", [&] {
    const scalar_t* cache = kv_cache.data_ptr<scalar_t>();
    const int64_t* slot = slots.data_ptr<int64_t>();
    const int64_t* length = lengths.data_ptr<int64_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t items = rows * heads;
    at::parallel_for(0, items, parallel_grain(items, items * longest * dim), [&](int64_t begin, int64_t end) {
      std::vector<float> scores(longest);
      __m512 query[16], acc[16];
      for (int64_t index = begin; index < end; ++index) {
        const int64_t r = index / heads, h = index % heads, kvh = h / group, n = length[r];
        const scalar_t* qh = q.data_ptr<scalar_t>() + r * q.stride(0) + h * q.stride(1);
        for (int64_t c = 0; c < chunks; ++c) query[c] = _mm512_mul_ps(load16(qh + 16 * c), _mm512_set1_ps(scale));
        float top = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
          const scalar_t* key = cache + (slot[r * longest + j] * kv_heads + kvh) * dim;
          __m512 dot = _mm512_mul_ps(query[0], load16(key));
          for (int64_t c = 1; c < chunks; ++c) dot = _mm512_fmadd_ps(query[c], load16(key + 16 * c), dot);
          scores[j] = _mm512_reduce_add_ps(dot);
          top = std::max(top, scores[j]);
        }
        float total = 0.f;
        for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; ++j) {
          const float weight = std::exp(scores[j] - top);
          total += weight;
          const scalar_t* value = cache + ((half + slot[r * longest + j]) * kv_heads + kvh) * dim;
          for (int64_t c = 0; c < chunks; ++c)
            acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(weight), load16(value + 16 * c), acc[c]);
        }
        float result[256];
        for (int64_t c = 0; c < chunks; ++c) _mm512_storeu_ps(result + 16 * c, acc[c]);
        scalar_t* oh = o + (r * heads + h) * dim;
        for (int64_t d = 0; d < dim; ++d) oh[d] = scalar_t(result[d] / total);
      }
    });
  });
  return out;
}

// Attention of short query chunks straight from the paged cache: decodes with the draft tokens they
// verify. q (tokens, heads, dim); kv_cache (2, slots, kv_heads, dim), already holding the chunks' own keys
// and values; per sequence s: slots[s] its context's cache slots (padded), context_lens[s] its context
// length after this step, and its query tokens q[query_starts[s] : query_starts[s + 1]], the last ones
// of its context, each seeing the keys up to its own.
//
// A work item is up to 16 query rows of one (sequence, KV head): its grouped heads for each token, which
// all read the same keys. The rows sit in the 16 lanes of a vector (queries transposed once), so each key
// costs dim FMAs for all rows at once, the online softmax (running max and sum per row) is lane-wise, and
// no horizontal sums are needed. Eight keys go at a time, to keep eight FMA chains in flight.
at::Tensor chunk_attention(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& slots,
                           const at::Tensor& context_lens, const at::Tensor& query_starts, double scale) {
  TORCH_CHECK(kv_cache.is_contiguous() && slots.is_contiguous() && context_lens.is_contiguous() &&
                  query_starts.is_contiguous(),
              "chunk_attention takes a contiguous cache, slots, context lengths and query starts");
  TORCH_CHECK(q.stride(2) == 1, "query heads must be contiguous in dim");
  const int64_t heads = q.size(1), dim = q.size(2);
  TORCH_CHECK(dim % 16 == 0 && dim <= 256, "chunk_attention takes head_dim a multiple of 16 up to 256, got ", dim);
  const int64_t kv_heads = kv_cache.size(2), half = kv_cache.size(1), group = heads / kv_heads;
  const int64_t seqs = slots.size(0), longest = slots.size(1);
  const int64_t* start = query_starts.data_ptr<int64_t>();
  TORCH_CHECK(query_starts.size(0) == seqs + 1 && start[0] == 0 && start[seqs] == q.size(0),
              "query_starts must run from 0 to the number of query tokens, one entry per sequence and one more");
  // work items: (sequence, KV head, block of 16 rows)
  std::vector<int64_t> item_seq, item_row;
  for (int64_t s = 0; s < seqs; ++s)
    for (int64_t h = 0; h < kv_heads; ++h)
      for (int64_t r = 0; r < (start[s + 1] - start[s]) * group; r += 16) {
        item_seq.push_back(s * kv_heads + h);
        item_row.push_back(r);
      }
  const int64_t items = static_cast<int64_t>(item_seq.size());
  constexpr int kKeys = 8;
  at::Tensor out = at::empty({q.size(0), heads, dim}, q.options());
  FLOAT_OR_BFLOAT16(q.scalar_type(), "chunk_attention", [&] {
    const scalar_t* cache = kv_cache.data_ptr<scalar_t>();
    const int64_t* slot = slots.data_ptr<int64_t>();
    const int64_t* context = context_lens.data_ptr<int64_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t work = q.size(0) * heads * longest * dim;
    at::parallel_for(0, items, parallel_grain(items, work), [&](int64_t begin, int64_t end) {
      std::vector<float> queries(dim * 16), acc(dim * 16), keys(kKeys * dim), values(kKeys * dim);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t s = item_seq[item] / kv_heads, kvh = item_seq[item] % kv_heads, n = context[s];
        const int64_t first = n - (start[s + 1] - start[s]);
        const int64_t rows = std::min<int64_t>(16, (start[s + 1] - start[s]) * group - item_row[item]);
        // lane r: row item_row + r = token (item_row + r) / group, head kvh * group + (item_row + r) % group
        auto q_row = [&](int64_t r) {
          const int64_t row = item_row[item] + r;
          return q.data_ptr<scalar_t>() + (start[s] + row / group) * q.stride(0) + (kvh * group + row % group) * q.stride(1);
        };
        int32_t sees[16];  // keys [0, sees[r]) are visible to lane r; spare lanes see key 0 only
        for (int64_t r = 0; r < 16; ++r) sees[r] = r < rows ? first + (item_row[item] + r) / group + 1 : 1;
        const __m512i visible_to = _mm512_loadu_si512(sees);
        for (int64_t c = 0; c < dim; c += 16) {  // queries[d * 16 + r] = scale * q[row r][d]
          __m512 tile[16];
          for (int64_t r = 0; r < 16; ++r)
            tile[r] = r < rows ? _mm512_mul_ps(load16(q_row(r) + c), _mm512_set1_ps(scale)) : _mm512_setzero_ps();
          transpose16(tile);
          for (int64_t d = 0; d < 16; ++d) _mm512_storeu_ps(&queries[(c + d) * 16], tile[d]);
        }
        std::fill(acc.begin(), acc.end(), 0.f);
        __m512 top = _mm512_set1_ps(-INFINITY), total = _mm512_setzero_ps();
        const int64_t last = first + (item_row[item] + rows - 1) / group + 1;  // keys any lane sees
        for (int64_t j0 = 0; j0 < last; j0 += kKeys) {
          const int64_t count = std::min<int64_t>(kKeys, last - j0);
          for (int64_t j = 0; j < kKeys; ++j) {  // past the last key: key j0 again, masked out below
            const scalar_t* key = cache + (slot[s * longest + j0 + (j < count ? j : 0)] * kv_heads + kvh) * dim;
            for (int64_t c = 0; c < dim; c += 16) {
              _mm512_storeu_ps(&keys[j * dim + c], load16(key + c));
              _mm512_storeu_ps(&values[j * dim + c], load16(key + half * kv_heads * dim + c));
            }
          }
          __m512 scores[kKeys];
          for (int j = 0; j < kKeys; ++j) scores[j] = _mm512_setzero_ps();
          for (int64_t d = 0; d < dim; ++d) {
            const __m512 qd = _mm512_loadu_ps(&queries[d * 16]);
            for (int j = 0; j < kKeys; ++j) scores[j] = _mm512_fmadd_ps(qd, _mm512_set1_ps(keys[j * dim + d]), scores[j]);
          }
          __mmask16 seen[kKeys];
          __m512 new_top = top;
          for (int j = 0; j < kKeys; ++j) {
            seen[j] = j < count ? _mm512_cmpgt_epi32_mask(visible_to, _mm512_set1_epi32(j0 + j)) : 0;
            new_top = _mm512_mask_max_ps(new_top, seen[j], new_top, scores[j]);
          }
          const __m512 rescale = exp16(_mm512_sub_ps(top, new_top));  // top = -inf at first: 0
          total = _mm512_mul_ps(total, rescale);
          for (int j = 0; j < kKeys; ++j) {
            scores[j] = _mm512_maskz_mov_ps(seen[j], exp16(_mm512_sub_ps(scores[j], new_top)));
            total = _mm512_add_ps(total, scores[j]);
          }
          top = new_top;
          for (int64_t d = 0; d < dim; ++d) {
            __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(&acc[d * 16]), rescale);
            for (int j = 0; j < kKeys; ++j) sum = _mm512_fmadd_ps(scores[j], _mm512_set1_ps(values[j * dim + d]), sum);
            _mm512_storeu_ps(&acc[d * 16], sum);
          }
        }
        const __m512 inverse = _mm512_div_ps(_mm512_set1_ps(1.f), total);
        for (int64_t c = 0; c < dim; c += 16) {  // back to one row per query
          __m512 tile[16];
          for (int64_t d = 0; d < 16; ++d) tile[d] = _mm512_mul_ps(_mm512_loadu_ps(&acc[(c + d) * 16]), inverse);
          transpose16(tile);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t row = item_row[item] + r;
            store16(o + ((start[s] + row / group) * heads + kvh * group + row % group) * dim + c, tile[r]);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quantized_linear", &quantized_linear, "y = x @ W.T for a groupwise 4- or 8-bit weight");
  m.def("rms_norm", &rms_norm, "RMSNorm");
  m.def("add_rms_norm", &add_rms_norm, "(RMSNorm(residual + x), residual + x)");
  m.def("rotary_", &rotary_, "rotate-half rotary embedding of q and k, in place");
  m.def("silu_and_mul", &silu_and_mul, "silu(gate) * up");
  m.def("write_kv_cache", &write_kv_cache, "new keys and values into their cache slots");
  m.def("decode_attention", &decode_attention, "one query per row over its paged context");
  m.def("chunk_attention", &chunk_attention, "short query chunks over their paged context, causally");
}
