// The groupwise 4- and 8-bit matmul (see cpu_kernels.cpp for the storage layouts).
#include <cstring>

#include "common.h"

namespace tokenyard {

constexpr int64_t kRowsPerCall = 8;        // rows of x that share one pass over a block of weights
constexpr int64_t kRowBlock = 16;          // the unit of work a thread takes: 16 weight rows (a 4-bit tile)
constexpr int64_t kPrefetchRows = 32;      // how far ahead 8-bit weight rows are fetched (tuned here)
constexpr int64_t kPrefetchBytes = 16384;  // how far ahead 4-bit tiles are fetched (tuned here: 1.45x over 4 KiB)
constexpr int kBf16Int8FromRows = 4;       // rows of x from which 8-bit codes go through vdpbf16ps (rows_bf16_int8)

// What one call needs besides the codes: x as float32 (and, for the bfloat16 paths, as bfloat16 bits),
// the per-group sums of x that the mins multiply, and where results go.
struct Problem {
  const uint8_t* codes;
  const void* scales;       // float32, or bfloat16 (bfloat16 models: fewer bytes to stream)
  const void* mins;         // the same dtype; nullptr for symmetric codes
  bool bf16_scales;
  const float* x;           // (M, K) float32
  const uint16_t* x_pairs;  // (M, K) bfloat16 bits, or nullptr
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

// Lane-wise partial sums over groups of min * sum(x in the group): what the mins add to an output (zero for
// symmetric codes).
inline __m512 offsets(const Problem& p, int64_t n, int64_t m) {
  __m512 sum = _mm512_setzero_ps();
  if (p.mins == nullptr) return sum;  // symmetric codes: a code of 0 is a weight of 0
  for (int64_t g = 0; g < p.groups; g += 16) {
    const __mmask16 mask = p.groups - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (p.groups - g)) - 1);
    const __m512 mins = load_values(p.mins, p.bf16_scales, n * p.groups + g, mask);
    sum = _mm512_fmadd_ps(mins, _mm512_maskz_loadu_ps(mask, p.xsum + m * p.groups + g), sum);
  }
  return sum;
}

// One scale (or min) broadcast to 16 lanes.
inline __m512 broadcast(const void* values, bool bf16, int64_t i) {
  if (bf16) return _mm512_castsi512_ps(_mm512_set1_epi32(int32_t(static_cast<const uint16_t*>(values)[i]) << 16));
  return _mm512_set1_ps(static_cast<const float*>(values)[i]);
}

// The hardware prefetcher does not run far enough ahead of a weight stream (8-bit rows are read side by
// side, which hides them from it altogether): fetch ahead explicitly (a prefetch past the end never faults).
inline void prefetch(const uint8_t* address) { _mm_prefetch(reinterpret_cast<const char*>(address), _MM_HINT_T0); }

// 32 8-bit codes of a row at column k as two vectors of 16 floats (columns k..k+15 and k+16..k+31).
inline void load_codes(const uint8_t* row, int64_t k, __m512& first, __m512& second) {
  first = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k))));
  second = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 16))));
}

// 8-bit codes in float32 FMAs: R weight rows against M rows of x at once, R * M * 2 independent FMA chains.
template <int M, int R, typename T>
void rows_float(const Problem& p, int64_t n, T* out) {
  __m512 total[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) total[r][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.groups; ++g) {
    __m512 even[R][M], odd[R][M];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) even[r][m] = odd[r][m] = _mm512_setzero_ps();
    for (int64_t k = g * p.group; k < (g + 1) * p.group; k += 32) {
      for (int r = 0; r < R; ++r) {
        if (k % 64 == 0) prefetch(p.codes + (n + r + kPrefetchRows) * p.K + k);
        __m512 first, second;
        load_codes(p.codes + (n + r) * p.K, k, first, second);
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
        load_codes(row, k, first, second);
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

// 8-bit weight rows [n_begin, n_end) against M (1..8) rows of x: four weight rows at a time for one or two
// rows of x, fewer as M grows (32 vector registers).
template <int M, typename T>
void block(const Problem& p, int64_t n_begin, int64_t n_end, T* out) {
  constexpr int R = M <= 2 ? 4 : (M <= 4 ? 2 : 1);
  auto rows = [&](auto width, int64_t n) {
    constexpr int W = decltype(width)::value;
    if (p.x_pairs != nullptr)
      rows_bf16_int8<M, W>(p, n, out);
    else
      rows_float<M, W>(p, n, out);
  };
  int64_t n = n_begin;
  for (; n + R <= n_end; n += R) rows(std::integral_constant<int, R>{}, n);
  for (; n < n_end; ++n) rows(std::integral_constant<int, 1>{}, n);
}

// ---- 4-bit codes, in tiles of 16 rows --------------------------------------------------------------------
// A vector lane is a weight row: nibble q of a block's 32 words, OR-ed into the mantissa of 128.0, is an
// exact bfloat16 pair per row (bias + code, one logic op) that vdpbf16ps multiplies by the pair
// x[8b + 2q], x[8b + 2q + 1] broadcast to every lane. No horizontal sums, and a group's scales and mins apply
// to 16 rows with one FMA each (the bias comes out with the group's sum of x).

inline int32_t pair_at(const uint16_t* x, int64_t k) {  // bfloat16 x[k], x[k + 1] as one 32-bit lane
  int32_t bits;
  std::memcpy(&bits, x + k, sizeof bits);
  return bits;
}

template <int M, int T, typename Out>
__attribute__((target("avx512bf16"))) void tiles_bf16(const Problem& p, int64_t tile, Out* out) {
  const int64_t blocks_per_group = p.group / 8, tile_bytes = 8 * p.K;
  const __m512i low_nibble = _mm512_set1_epi16(15), bias = _mm512_set1_epi16(0x4300);  // bfloat16 128.0
  __m512 total[T][M], even[T][M], odd[T][M];  // two dot-product chains per tile and row of x
  for (int t = 0; t < T; ++t)
    for (int m = 0; m < M; ++m) total[t][m] = even[t][m] = odd[t][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.groups; ++g) {
    for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      for (int t = 0; t < T; ++t) {
        const uint8_t* block = p.codes + (tile + t) * tile_bytes + 64 * b;
        prefetch(block + kPrefetchBytes);
        const __m512i words = _mm512_loadu_si512(block);
        const __m512bh w0 = (__m512bh)_mm512_ternarylogic_epi32(words, low_nibble, bias, 0xEA);  // (w & 15) | bias
        const __m512bh w1 = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(words, 4), low_nibble, bias, 0xEA);
        const __m512bh w2 = (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(words, 8), low_nibble, bias, 0xEA);
        const __m512bh w3 = (__m512bh)_mm512_or_si512(_mm512_srli_epi16(words, 12), bias);
        for (int m = 0; m < M; ++m) {
          const uint16_t* x = p.x_pairs + m * p.K + 8 * b;
          even[t][m] = _mm512_dpbf16_ps(even[t][m], w0, (__m512bh)_mm512_set1_epi32(pair_at(x, 0)));
          odd[t][m] = _mm512_dpbf16_ps(odd[t][m], w1, (__m512bh)_mm512_set1_epi32(pair_at(x, 2)));
          even[t][m] = _mm512_dpbf16_ps(even[t][m], w2, (__m512bh)_mm512_set1_epi32(pair_at(x, 4)));
          odd[t][m] = _mm512_dpbf16_ps(odd[t][m], w3, (__m512bh)_mm512_set1_epi32(pair_at(x, 6)));
        }
      }
    }
    for (int t = 0; t < T; ++t) {
      const int64_t at = ((tile + t) * p.groups + g) * 16;
      const __m512 scales = load_values(p.scales, p.bf16_scales, at, 0xFFFF);
      const __m512 mins = p.mins ? load_values(p.mins, p.bf16_scales, at, 0xFFFF) : _mm512_setzero_ps();
      for (int m = 0; m < M; ++m) {
        const __m512 sum = _mm512_set1_ps(p.xsum[m * p.groups + g]);
        const __m512 dot = _mm512_fnmadd_ps(sum, _mm512_set1_ps(128.f), _mm512_add_ps(even[t][m], odd[t][m]));
        total[t][m] = _mm512_fmadd_ps(mins, sum, _mm512_fmadd_ps(dot, scales, total[t][m]));
        even[t][m] = odd[t][m] = _mm512_setzero_ps();
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    const int64_t row = (tile + t) * 16;
    const __mmask16 valid = p.N - row >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (p.N - row)) - 1);
    for (int m = 0; m < M; ++m) store16(out + m * p.N + row, total[t][m], valid);
  }
}

// float32 x (float32 models, or CPUs without vdpbf16ps): the 32 words of a block as two vectors of 16
// 32-bit lanes, lane 2r + p of the first holding row r's columns 8b + 2q + p (r < 8; rows 8-15 in the
// second), against x[8b + 2q], x[8b + 2q + 1] repeated across the lanes; adjacent lanes are summed at the end.
template <int M, typename Out>
void tiles_float(const Problem& p, int64_t tile, Out* out) {
  const int64_t blocks_per_group = p.group / 8, tile_bytes = 8 * p.K;
  const __m512i nibble = _mm512_set1_epi32(15);
  const __m512i low_rows = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i high_rows = _mm512_add_epi32(low_rows, _mm512_set1_epi32(8));
  __m512 total[2][M], part[2][M];  // [rows 0-7, rows 8-15]
  for (int h = 0; h < 2; ++h)
    for (int m = 0; m < M; ++m) total[h][m] = part[h][m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < p.groups; ++g) {
    for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      const __m512i words = _mm512_loadu_si512(p.codes + tile * tile_bytes + 64 * b);
      const __m512i halves[2] = {_mm512_cvtepu16_epi32(_mm512_castsi512_si256(words)),
                                 _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(words, 1))};
      for (int q = 0; q < 4; ++q) {
        for (int h = 0; h < 2; ++h) {
          const __m512 codes = _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(halves[h], 4 * q), nibble));
          for (int m = 0; m < M; ++m) {
            double pair;  // x[8b + 2q], x[8b + 2q + 1]
            std::memcpy(&pair, p.x + m * p.K + 8 * b + 2 * q, sizeof pair);
            part[h][m] = _mm512_fmadd_ps(codes, _mm512_castpd_ps(_mm512_set1_pd(pair)), part[h][m]);
          }
        }
      }
    }
    const int64_t at = (tile * p.groups + g) * 16;
    const __m512 scales = load_values(p.scales, p.bf16_scales, at, 0xFFFF);
    const __m512 mins = p.mins ? load_values(p.mins, p.bf16_scales, at, 0xFFFF) : _mm512_setzero_ps();
    for (int h = 0; h < 2; ++h) {
      const __m512i rows = h == 0 ? low_rows : high_rows;
      const __m512 lane_scales = _mm512_permutexvar_ps(rows, scales);
      const __m512 lane_mins = _mm512_maskz_permutexvar_ps(0x5555, rows, mins);  // once per row: even lanes
      for (int m = 0; m < M; ++m) {
        const __m512 sum = _mm512_set1_ps(p.xsum[m * p.groups + g]);
        total[h][m] = _mm512_fmadd_ps(lane_mins, sum, _mm512_fmadd_ps(part[h][m], lane_scales, total[h][m]));
        part[h][m] = _mm512_setzero_ps();
      }
    }
  }
  const __m512i even_lanes = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const int64_t row = tile * 16;
  const __mmask16 valid = p.N - row >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (p.N - row)) - 1);
  for (int m = 0; m < M; ++m) {
    __m512 sums[2];
    for (int h = 0; h < 2; ++h)  // lane 2r + lane 2r + 1
      sums[h] = _mm512_add_ps(total[h][m], _mm512_permute_ps(total[h][m], _MM_SHUFFLE(2, 3, 0, 1)));
    store16(out + m * p.N + row, _mm512_permutex2var_ps(sums[0], even_lanes, sums[1]), valid);
  }
}

// Tiles [begin, end) against M (1..8) rows of x: two tiles at a time for one or two rows of x (four
// independent dot-product chains); float32 x four rows at a time (registers).
template <int M, typename Out>
void tiles(const Problem& p, int64_t begin, int64_t end, Out* out) {
  if (p.x_pairs == nullptr) {
    for (int64_t tile = begin; tile < end; ++tile) {
      if constexpr (M <= 4) {
        tiles_float<M>(p, tile, out);
      } else {
        tiles_float<4>(p, tile, out);
        Problem rest = p;
        rest.x += 4 * p.K;
        rest.xsum += 4 * p.groups;
        tiles_float<M - 4>(rest, tile, out + 4 * p.N);
      }
    }
    return;
  }
  int64_t tile = begin;
  if constexpr (M <= 2)
    for (; tile + 2 <= end; tile += 2) tiles_bf16<M, 2>(p, tile, out);
  for (; tile < end; ++tile) tiles_bf16<M, 1>(p, tile, out);
}

// Calls body<M>() for M = rows_of_x (1..8): the kernels are compiled for each count of rows of x.
template <typename Body>
void for_rows_of_x(int64_t rows_of_x, Body&& body) {
  switch (rows_of_x) {
#define TOKENYARD_ROWS(M)                   \
  case M:                                   \
    body(std::integral_constant<int, M>{}); \
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

// x as the kernels read it, row by row: float32 (M, K), its bfloat16 bits for the bfloat16 paths, and the
// per-group sums the mins multiply. Columns from x's own width to K are zero: a weight whose K is not a
// multiple of its group is stored padded with zero codes to whole groups.
template <typename T>
void prepare_x(const T* x, int64_t M, int64_t width, const Problem& p, float* xf, uint16_t* xb, float* xsum) {
  for (int64_t m = 0; m < M; ++m) {
    const T* row = x + m * width;
    __m512 group_sum = _mm512_setzero_ps();
    for (int64_t k = 0; k < p.K; k += 16) {
      const int64_t left = std::clamp<int64_t>(width - k, 0, 16);
      const __mmask16 mask = static_cast<__mmask16>((1u << left) - 1);
      __m256i bits;
      const __m512 values = load_x(row, k, mask, bits);
      _mm512_storeu_ps(xf + m * p.K + k, values);
      if (xb != nullptr) _mm256_storeu_si256(reinterpret_cast<__m256i*>(xb + m * p.K + k), bits);
      group_sum = _mm512_add_ps(group_sum, values);
      if ((k + 16) % p.group == 0) {
        xsum[m * p.groups + k / p.group] = _mm512_reduce_add_ps(group_sum);
        group_sum = _mm512_setzero_ps();
      }
    }
  }
}

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
  TORCH_CHECK((bf16_scales || scales.scalar_type() == at::kFloat) && (symmetric || mins.scalar_type() == scales.scalar_type()),
              "scales and mins must both be float32 or both bfloat16");
  const bool bf16_x = x.scalar_type() == at::kBFloat16 && has_bf16_dot();
  const bool bf16_dot = bf16_x && (bits == 4 || M >= kBf16Int8FromRows);
  thread_local std::vector<float> xf, xsum;
  thread_local std::vector<uint16_t> xb;
  xf.resize(M * K);
  xsum.resize(M * groups);
  xb.resize(bf16_dot ? M * K : 0);
  Problem p{reinterpret_cast<const uint8_t*>(codes.data_ptr()), scales.data_ptr(), symmetric ? nullptr : mins.data_ptr(),
            bf16_scales, xf.data(), xb.empty() ? nullptr : xb.data(), xsum.data(), K, N, group, groups};
  FLOAT_OR_BFLOAT16(x.scalar_type(), "quantized_linear", [&] {
    prepare_x(x.data_ptr<scalar_t>(), M, width, p, xf.data(), xb.empty() ? nullptr : xb.data(), xsum.data());
  });
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = N;
  at::Tensor out = at::empty(out_shape, x.options());
  // each thread takes whole blocks of weight rows (tiles of 16, for 4-bit codes) and every row of x with them,
  // kRowsPerCall rows of x per pass over a block while it sits in cache
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  FLOAT_OR_BFLOAT16(x.scalar_type(), "quantized_linear", [&] {
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, parallel_grain(blocks, M * N * K), [&](int64_t block_begin, int64_t block_end) {
      if (bits == 8) {  // rows side by side hide them from the hardware prefetcher: fetch the first ones now
        const uint8_t* first = p.codes + block_begin * kRowBlock * K;
        const int64_t ahead = std::min(kPrefetchRows, N - block_begin * kRowBlock) * K;
        for (int64_t byte = 0; byte < ahead; byte += 64) prefetch(first + byte);
      }
      const int64_t step = bits == 4 ? 2 : 1;  // tiles go in pairs (see tiles)
      for (int64_t b = block_begin; b < block_end; b += step) {
        const int64_t b_end = std::min(block_end, b + step);
        for (int64_t m = 0; m < M; m += kRowsPerCall) {
          Problem rows = p;
          rows.x += m * K;
          rows.xsum += m * groups;
          if (rows.x_pairs != nullptr) rows.x_pairs += m * K;
          for_rows_of_x(std::min(kRowsPerCall, M - m), [&](auto count) {
            constexpr int kRows = decltype(count)::value;
            if (bits == 4)
              tiles<kRows>(rows, b, b_end, out_ptr + m * N);
            else
              block<kRows>(rows, b * kRowBlock, std::min(N, b_end * kRowBlock), out_ptr + m * N);
          });
        }
      }
    });
  });
  return out;
}

}  // namespace tokenyard
