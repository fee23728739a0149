#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd/quantized_linear_simd.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/cache_control.h"
#include "simd/quantized_linear.h"
#include "simd/simd-inl.h"

// SVE vectors are sizeless: they cannot be held in the arrays of accumulators the register blocking needs, so
// SVE CPUs run the NEON code (the same throughput on Neoverse V1 and V2: 2 x 256 and 4 x 128-bit units).
#define TOKENYARD_SIZELESS_VECTORS ((HWY_TARGET & (HWY_SVE | HWY_SVE2 | HWY_SVE_256 | HWY_SVE2_128)) != 0)
#if TOKENYARD_SIZELESS_VECTORS
static_assert((HWY_TARGETS & HWY_NEON) != 0, "SVE targets call the NEON code: build without an SVE baseline");
namespace tokenyard::N_NEON {
void PrepareQuantizedX(simd::DType dtype, const void* x, int64_t M, int64_t width, int64_t K, int64_t group,
                       float* x_float, uint16_t* x_bf16, float* x_sums);
void QuantizedMatmulBlocks(const simd::QuantizedMatmul& p, simd::DType dtype, void* out, int64_t begin,
                           int64_t end);
}  // namespace tokenyard::N_NEON
#endif

HWY_BEFORE_NAMESPACE();
namespace tokenyard {
namespace HWY_NAMESPACE {
using simd::QuantizedMatmul;

#if TOKENYARD_SIZELESS_VECTORS
void PrepareQuantizedX(DType dtype, const void* x, int64_t M, int64_t width, int64_t K, int64_t group,
                       float* x_float, uint16_t* x_bf16, float* x_sums) {
  N_NEON::PrepareQuantizedX(dtype, x, M, width, K, group, x_float, x_bf16, x_sums);
}

void QuantizedMatmulBlocks(const QuantizedMatmul& p, DType dtype, void* out, int64_t begin, int64_t end) {
  N_NEON::QuantizedMatmulBlocks(p, dtype, out, begin, end);
}

bool Int8DotForRows(int64_t) { return false; }
#else

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#define TOKENYARD_AVX512 1
constexpr int kVectorRegisters = 32;
#else
#define TOKENYARD_AVX512 0
constexpr int kVectorRegisters = HWY_ARCH_X86 ? 16 : 32;
#endif

constexpr int64_t kLanes = hn::MaxLanes(DF());
static_assert(16 % kLanes == 0, "a tile's 16 rows are whole vectors, a group's 32 columns whole pairs of them");

// Rows of x that share one pass over a block of weights: their accumulators take a quarter of the registers
// per weight vector (AVX2 runs 8 rows of x as two passes: converting codes twice is cheaper than spilling).
constexpr int64_t kRowsOfXPerPass = kVectorRegisters / 4;
constexpr int64_t kPrefetchRows = 32;      // how far ahead 8-bit weight rows are fetched (tuned on AVX-512)
constexpr int64_t kPrefetchBytes = 16384;  // how far ahead 4-bit tiles are fetched (tuned on AVX-512: 1.45x over 4 KiB)

// ---- x, once per call -------------------------------------------------------------------------------------

template <typename T>
void prepare_x(const T* x, int64_t M, int64_t width, int64_t K, int64_t group, float* x_float, uint16_t* x_bf16,
               float* x_sums) {
  const DF d;
  const int64_t groups = K / group;
  for (int64_t m = 0; m < M; ++m) {
    const T* row = x + m * width;
    float* row_float = x_float + m * K;
    int64_t k = 0;
    for (; k + kLanes <= width; k += kLanes) hn::StoreU(load(d, row + k), d, row_float + k);
    for (; k < width; ++k) row_float[k] = to_float(row[k]);
    std::fill(row_float + width, row_float + K, 0.f);
    if constexpr (std::is_same_v<T, bf16>) {
      if (x_bf16 != nullptr) {
        std::memcpy(x_bf16 + m * K, row, width * sizeof(bf16));
        std::fill(x_bf16 + m * K + width, x_bf16 + (m + 1) * K, uint16_t{0});
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      VF sum = hn::Zero(d);
      for (k = g * group; k < (g + 1) * group; k += kLanes) sum = hn::Add(sum, hn::LoadU(d, row_float + k));
      x_sums[m * groups + g] = sum_of_lanes(d, sum);
    }
  }
}

void PrepareQuantizedX(DType dtype, const void* x, int64_t M, int64_t width, int64_t K, int64_t group,
                       float* x_float, uint16_t* x_bf16, float* x_sums) {
  if (dtype == DType::kFloat32)
    prepare_x(static_cast<const float*>(x), M, width, K, group, x_float, x_bf16, x_sums);
  else
    prepare_x(static_cast<const bf16*>(x), M, width, K, group, x_float, x_bf16, x_sums);
}

// ---- what both layouts share ------------------------------------------------------------------------------

HWY_INLINE VF load_values(DF d, const void* values, DType dtype, int64_t i) {
  if (dtype == DType::kFloat32) return load(d, static_cast<const float*>(values) + i);
  return load(d, static_cast<const bf16*>(values) + i);
}

HWY_INLINE float value_at(const void* values, DType dtype, int64_t i) {
  if (dtype == DType::kFloat32) return static_cast<const float*>(values)[i];
  return to_float(static_cast<const bf16*>(values)[i]);
}

// Calls body(std::integral_constant<int, M>) for M = rows (1..kRowsOfXPerPass): the kernels are compiled for
// each count of rows of x.
template <int M = 1, typename Body>
HWY_INLINE void for_rows_of_x(int64_t rows, Body&& body) {
  if (rows == M) return body(std::integral_constant<int, M>{});
  if constexpr (M < kRowsOfXPerPass) for_rows_of_x<M + 1>(rows, body);
}

// ---- 8-bit codes, row by row ------------------------------------------------------------------------------

// kLanes codes of a row from column k, as float32.
HWY_INLINE VF codes_at(DF d, const uint8_t* row, int64_t k) {
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<int8_t, DF> d8;
  return hn::ConvertTo(d, hn::PromoteTo(di, hn::LoadU(d8, reinterpret_cast<const int8_t*>(row + k))));
}

// What the mins add to weight row n's output for one row of x: the sum over groups of min * sum(x in group).
HWY_INLINE float min_offset(const QuantizedMatmul& p, int64_t n, const float* x_sums) {
  if (p.mins == nullptr) return 0.f;  // symmetric codes: a code of 0 is a weight of 0
  const DF d;
  VF sum = hn::Zero(d);
  int64_t g = 0;
  for (; g + kLanes <= p.groups; g += kLanes)
    sum = hn::MulAdd(load_values(d, p.mins, p.scales_dtype, n * p.groups + g), hn::LoadU(d, x_sums + g), sum);
  float offset = sum_of_lanes(d, sum);
  for (; g < p.groups; ++g) offset += value_at(p.mins, p.scales_dtype, n * p.groups + g) * x_sums[g];
  return offset;
}

// 8-bit codes in float32 FMAs: R weight rows against M rows of x at once, two chains each (columns k.. and
// k + kLanes..), R * M * 2 independent FMA chains.
template <int M, int R, typename T>
void rows_float(const QuantizedMatmul& p, int64_t n, T* out) {
  const DF d;
  VF total[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) total[r][m] = hn::Zero(d);
  for (int64_t g = 0; g < p.groups; ++g) {
    VF even[R][M], odd[R][M];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) even[r][m] = odd[r][m] = hn::Zero(d);
    for (int64_t k = g * p.group; k < (g + 1) * p.group; k += 2 * kLanes) {
      for (int r = 0; r < R; ++r) {
        const uint8_t* row = p.codes + (n + r) * p.K;
        if (k % 64 == 0) hwy::Prefetch(row + kPrefetchRows * p.K + k);
        const VF first = codes_at(d, row, k), second = codes_at(d, row, k + kLanes);
        for (int m = 0; m < M; ++m) {
          even[r][m] = hn::MulAdd(first, hn::LoadU(d, p.x + m * p.K + k), even[r][m]);
          odd[r][m] = hn::MulAdd(second, hn::LoadU(d, p.x + m * p.K + k + kLanes), odd[r][m]);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const VF scale = hn::Set(d, value_at(p.scales, p.scales_dtype, (n + r) * p.groups + g));
      for (int m = 0; m < M; ++m) total[r][m] = hn::MulAdd(hn::Add(even[r][m], odd[r][m]), scale, total[r][m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m)
      out[m * p.N + n + r] = from_float<T>(sum_of_lanes(d, total[r][m]) +
                                           min_offset(p, n + r, p.x_sums + m * p.groups));
}

#if TOKENYARD_AVX512
// 8-bit codes against several rows of bfloat16 x: codes are exact in bfloat16, so 32 of them become one
// vector of pairs and each row of x takes one vdpbf16ps per 32 columns instead of two float32 FMAs.
template <int M, int R, typename T>
__attribute__((target("avx512bf16"))) void rows_bf16(const QuantizedMatmul& p, int64_t n, T* out) {
  const DF d;
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
        if (k % 64 == 0) hwy::Prefetch(row + kPrefetchRows * p.K + k);
        const __m512bh w = _mm512_cvtne2ps_pbh(codes_at(d, row, k + 16).raw, codes_at(d, row, k).raw);
        for (int m = 0; m < M; ++m)
          part[r][m] = _mm512_dpbf16_ps(part[r][m], w, (__m512bh)_mm512_loadu_si512(p.x_bf16 + m * p.K + k));
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 scale = _mm512_set1_ps(value_at(p.scales, p.scales_dtype, (n + r) * p.groups + g));
      for (int m = 0; m < M; ++m) total[r][m] = _mm512_fmadd_ps(part[r][m], scale, total[r][m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m)
      out[m * p.N + n + r] = from_float<T>(_mm512_reduce_add_ps(total[r][m]) +
                                           min_offset(p, n + r, p.x_sums + m * p.groups));
}
#endif

// Weight rows taken at once for M rows of x: the most whose 3 * R * M float32 accumulators (two chains and a
// total) leave four registers for codes and x.
template <int M>
constexpr int weight_rows_at_once() {
  for (const int rows : {4, 2})
    if (3 * rows * M <= kVectorRegisters - 4) return rows;
  return 1;
}

template <int M, int R, typename T>
HWY_INLINE void rows(const QuantizedMatmul& p, int64_t n, T* out) {
#if TOKENYARD_AVX512
  if (p.x_bf16 != nullptr) return rows_bf16<M, R>(p, n, out);
#endif
  rows_float<M, R>(p, n, out);
}

// 8-bit weight rows [n_begin, n_end) against M rows of x.
template <int M, typename T>
void weight_rows(const QuantizedMatmul& p, int64_t n_begin, int64_t n_end, T* out) {
  constexpr int R = weight_rows_at_once<M>();
  int64_t n = n_begin;
  for (; n + R <= n_end; n += R) rows<M, R>(p, n, out);
  for (; n < n_end; ++n) rows<M, 1>(p, n, out);
}

// ---- 4-bit codes, in tiles of 16 rows ---------------------------------------------------------------------
// A block (8 columns of a tile) is 16 32-bit words, word r holding row r's codes: nibble q of its low half at
// column 8b + 2q, of its high half at column 8b + 2q + 1. So vector lanes are rows, a column's x is one
// broadcast, no lanes are summed, and a group's scales and mins apply to a vector of rows with one FMA each.

constexpr int64_t kTileVectors = 16 / kLanes;

using DU = hn::RebindToUnsigned<DF>;
using VU = hn::Vec<DU>;

// Column c of the block (0..7): each lane's row's code there, as float32.
HWY_INLINE VF codes_of_column(DF d, VU words, int c) {
  const DU du;
  const hn::RebindToSigned<DF> di;
  const int shift = 16 * (c % 2) + 4 * (c / 2);
  return hn::ConvertTo(d, hn::BitCast(di, hn::And(hn::ShiftRightSame(words, shift), hn::Set(du, 15))));
}

// A tile's outputs for one row of x: 16 rows as kTileVectors vectors; rows past `valid` (the last tile's padding)
// are not written.
template <typename T>
HWY_INLINE void store_tile_rows(DF d, const VF* rows, T* out, int64_t valid) {
  for (int64_t v = 0; v < kTileVectors; ++v) {
    const int64_t left = valid - v * kLanes;
    if (left >= kLanes) {
      store(rows[v], d, out + v * kLanes);
    } else if (left > 0) {
      float values[kLanes];
      hn::StoreU(rows[v], d, values);
      for (int64_t i = 0; i < left; ++i) out[v * kLanes + i] = from_float<T>(values[i]);
    }
  }
}

// Dot-product chains per row of x and vector of rows: about eight FMAs in flight hide their latency, and few
// rows of x (one, in decode) have too few vectors for that (a block's columns take turns).
template <int M>
constexpr int tile_chains() {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(8, 8 / (M * kTileVectors))));
}

// float32 x (float32 models, or CPUs without vdpbf16ps): one FMA per column and vector of rows.
template <int M, typename T>
void tile_float(const QuantizedMatmul& p, int64_t tile, T* out) {
  constexpr int C = tile_chains<M>();
  const DF d;
  const DU du;
  const uint8_t* codes = p.codes + tile * 8 * p.K;
  const int64_t blocks_per_group = p.group / 8;
  VF total[M][kTileVectors], part[C][M][kTileVectors];
  for (int m = 0; m < M; ++m)
    for (int v = 0; v < kTileVectors; ++v) total[m][v] = hn::Zero(d);
  for (int64_t g = 0; g < p.groups; ++g) {
    for (int chain = 0; chain < C; ++chain)
      for (int m = 0; m < M; ++m)
        for (int v = 0; v < kTileVectors; ++v) part[chain][m][v] = hn::Zero(d);
    for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      const uint8_t* block = codes + 64 * b;
      hwy::Prefetch(block + kPrefetchBytes);
      const uint32_t* block_words = reinterpret_cast<const uint32_t*>(block);
      VU words[kTileVectors];
      for (int v = 0; v < kTileVectors; ++v) words[v] = hn::LoadU(du, block_words + v * kLanes);
      for (int c = 0; c < 8; ++c) {
        for (int v = 0; v < kTileVectors; ++v) {
          const VF column = codes_of_column(d, words[v], c);
          for (int m = 0; m < M; ++m) {
            VF& chain = part[c % C][m][v];
            chain = hn::MulAdd(column, hn::Set(d, p.x[m * p.K + 8 * b + c]), chain);
          }
        }
      }
    }
    for (int v = 0; v < kTileVectors; ++v) {
      const int64_t at = (tile * p.groups + g) * 16 + v * kLanes;
      const VF scales = load_values(d, p.scales, p.scales_dtype, at);
      const VF mins = p.mins ? load_values(d, p.mins, p.scales_dtype, at) : hn::Zero(d);
      for (int m = 0; m < M; ++m) {
        VF dot = part[0][m][v];
        for (int chain = 1; chain < C; ++chain) dot = hn::Add(dot, part[chain][m][v]);
        const VF sum = hn::Set(d, p.x_sums[m * p.groups + g]);
        total[m][v] = hn::MulAdd(mins, sum, hn::MulAdd(dot, scales, total[m][v]));
      }
    }
  }
  for (int m = 0; m < M; ++m) store_tile_rows(d, total[m], out + m * p.N + tile * 16, p.N - tile * 16);
}

#if HWY_TARGET == HWY_AVX2 || TOKENYARD_AVX512
#define TOKENYARD_INT8_DOT 1
// One float32 FMA per code and row of x bounds the matmul (see Int8DotForRows for where). Instead x comes as
// two int8 terms, x = d * (q + r / 254) (quantize_x_int8: as close as float32 FMAs come, where q alone would move
// the outputs by about 5e-3 of their largest and change greedy tokens), and vpmaddubsw multiplies 4-bit codes
// (u8, 0..15) by each, two codes per int16 lane per instruction. The nibbles need no regrouping: a block's
// 32-bit word (one row, 8 columns) masked with 0x0F0F0F0F is 4 bytes of codes, shifted right by 4 the other 4,
// and x_q is stored in that order, so each term of a row of x is one 32-bit broadcast per half. One int16 lane
// sums 16 products of a group's 32 columns, at most 16 * 15 * 127 = 30480 < 32767: nothing saturates.
// vpmaddwd by 1 widens to int32, converted to float once per 32 columns and scaled by scale_w * d; the mins
// take the exact float sums of x, as on the float path.
// (8-bit codes stay on float32 FMAs: row by row, each 32 columns of a row of x would cost a sign, two multiplies,
// widenings, conversions and FMAs per weight row, more than the float path's 4 FMAs on AVX2.)
using DI = hn::RebindToSigned<DF>;
using VI = hn::Vec<DI>;

// Rows of x a pass over a tile takes: each needs a float32 total and two int16 accumulators per vector of rows,
// and more spill (AVX2: 2.1x over the float path at 2 rows, 1.7x at 3, 1.4x at 4; AVX-512: 4 rows 5% over 8).
constexpr int kInt8RowsOfX = TOKENYARD_AVX512 ? 4 : 2;

HWY_INLINE VI codes_times_x(VU codes, int32_t x) {  // int16 pairs: codes (u8) * x's 4 bytes (i8)
#if TOKENYARD_AVX512
  return VI{_mm512_maddubs_epi16(codes.raw, _mm512_set1_epi32(x))};
#else
  return VI{_mm256_maddubs_epi16(codes.raw, _mm256_set1_epi32(x))};
#endif
}

HWY_INLINE VI add16(VI a, VI b) {
#if TOKENYARD_AVX512
  return VI{_mm512_add_epi16(a.raw, b.raw)};
#else
  return VI{_mm256_add_epi16(a.raw, b.raw)};
#endif
}

HWY_INLINE VI widen_pairs(VI v) {  // int16 pairs summed into int32 lanes
#if TOKENYARD_AVX512
  return VI{_mm512_madd_epi16(v.raw, _mm512_set1_epi16(1))};
#else
  return VI{_mm256_madd_epi16(v.raw, _mm256_set1_epi16(1))};
#endif
}

// A tile against M rows of x in int8 dot products, one vector of rows (kLanes of the 16) at a time.
template <int M, typename T>
void tile_int8(const QuantizedMatmul& p, int64_t tile, T* out) {
  const DF d;
  const DU du;
  const VU low_nibbles = hn::Set(du, 0x0F0F0F0Fu);
  const uint8_t* codes = p.codes + tile * 8 * p.K;
  for (int64_t v = 0; v < kTileVectors; ++v) {
    VF total[M];
    for (int m = 0; m < M; ++m) total[m] = hn::Zero(d);
    for (int64_t g = 0; g < p.groups; ++g) {
      const int64_t at = (tile * p.groups + g) * 16 + v * kLanes;
      const VF scales = load_values(d, p.scales, p.scales_dtype, at);
      for (int64_t b0 = g * p.group / 8; b0 < (g + 1) * p.group / 8; b0 += 4) {  // 32 columns: 4 blocks
        VI dot[M], rest[M];
        for (int m = 0; m < M; ++m) dot[m] = rest[m] = hn::Zero(DI());
        for (int64_t b = b0; b < b0 + 4; ++b) {
          const uint8_t* block = codes + 64 * b;
          if (v == 0) hwy::Prefetch(block + kPrefetchBytes);
          const VU words = hn::LoadU(du, reinterpret_cast<const uint32_t*>(block) + v * kLanes);
          const VU even = hn::And(words, low_nibbles), odd = hn::And(hn::ShiftRight<4>(words), low_nibbles);
          for (int m = 0; m < M; ++m) {
            int32_t x[4];  // the block's 8 x in int8, then their 8 remainders
            std::memcpy(x, p.x_q + m * 2 * p.K + 16 * b, sizeof x);
            dot[m] = add16(dot[m], add16(codes_times_x(even, x[0]), codes_times_x(odd, x[1])));
            rest[m] = add16(rest[m], add16(codes_times_x(even, x[2]), codes_times_x(odd, x[3])));
          }
        }
        for (int m = 0; m < M; ++m) {
          const VF step = hn::Set(d, p.x_d[m * p.groups + g]), fine = hn::Set(d, p.x_d[m * p.groups + g] / 254.f);
          const VF dots = hn::MulAdd(hn::ConvertTo(d, widen_pairs(rest[m])), fine,
                                     hn::Mul(hn::ConvertTo(d, widen_pairs(dot[m])), step));
          total[m] = hn::MulAdd(dots, scales, total[m]);
        }
      }
      if (p.mins != nullptr) {
        const VF mins = load_values(d, p.mins, p.scales_dtype, at);
        for (int m = 0; m < M; ++m) total[m] = hn::MulAdd(mins, hn::Set(d, p.x_sums[m * p.groups + g]), total[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      const int64_t first = tile * 16 + v * kLanes;
      const int64_t valid = std::min<int64_t>(kLanes, p.N - first);
      if (valid == kLanes) {
        store(total[m], d, out + m * p.N + first);
      } else if (valid > 0) {
        float values[kLanes];
        hn::StoreU(total[m], d, values);
        for (int64_t i = 0; i < valid; ++i) out[m * p.N + first + i] = from_float<T>(values[i]);
      }
    }
  }
}
#else
#define TOKENYARD_INT8_DOT 0
#endif

// Whether M rows of x take 4-bit codes through int8 dot products on this target. Measured per call on
// SmolLM2-135M's shapes (AMD EPYC, 2 threads; the int8 path's time over the float32 path's): AVX-512 0.40-0.46
// at 1 row, 0.47-0.62 at 2, 0.64-0.81 at 4, 0.73-0.90 at 8, about level with vdpbf16ps for bfloat16 x (0.85-1.09);
// AVX2 0.68-0.83 at 1 row, but 0.88-1.08 at 2, 0.99-1.21 at 4 and 0.99-1.29 at 8 (kInt8RowsOfX rows a pass, and
// its 16 registers), and about 0.5 from 16 (prefill). Batch-1 decode of SmolLM2 int4: 1.1x on AVX2, 1.3x on
// AVX-512.
bool Int8DotForRows(int64_t M) {
#if TOKENYARD_AVX512
  return true;
#elif TOKENYARD_INT8_DOT
  return M == 1 || M >= 16;
#else
  return false;
#endif
}

QuantizedMatmul from_row_of_x(QuantizedMatmul p, int64_t m);

// A tile against M rows of x.
template <int M, typename T>
void tile(const QuantizedMatmul& p, int64_t index, T* out) {
#if TOKENYARD_INT8_DOT
  if (p.x_q != nullptr) {
    if constexpr (M > kInt8RowsOfX) {  // two passes over the tile: the accumulators of M rows would spill
      tile_int8<kInt8RowsOfX>(p, index, out);
      tile_int8<M - kInt8RowsOfX>(from_row_of_x(p, kInt8RowsOfX), index, out + kInt8RowsOfX * p.N);
    } else {
      tile_int8<M>(p, index, out);
    }
    return;
  }
#endif
  tile_float<M>(p, index, out);
}

// ---- blocks of weight rows against every row of x ---------------------------------------------------------

// Rows of x from m on.
QuantizedMatmul from_row_of_x(QuantizedMatmul p, int64_t m) {
  p.x += m * p.K;
  p.x_sums += m * p.groups;
  if (p.x_bf16 != nullptr) p.x_bf16 += m * p.K;
  if (p.x_q != nullptr) p.x_q += m * 2 * p.K, p.x_d += m * p.groups;
  return p;
}

// Each block is taken with every row of x, kRowsOfXPerPass rows per pass while the block sits in cache.
template <typename T>
void matmul_blocks(const QuantizedMatmul& p, T* out, int64_t begin, int64_t end) {
  constexpr int64_t kRows = simd::kWeightRowsPerBlock;
  if (p.bits == 8) {  // rows side by side hide them from the hardware prefetcher: fetch the first ones now
    const uint8_t* first = p.codes + begin * kRows * p.K;
    const int64_t ahead = std::min(kPrefetchRows, p.N - begin * kRows) * p.K;
    for (int64_t byte = 0; byte < ahead; byte += 64) hwy::Prefetch(first + byte);
  }
  for (int64_t block = begin; block < end; ++block) {
    for (int64_t m = 0; m < p.M; m += kRowsOfXPerPass) {
      const QuantizedMatmul rows_of_x = from_row_of_x(p, m);
      for_rows_of_x(std::min(kRowsOfXPerPass, p.M - m), [&](auto count) {
        constexpr int M = decltype(count)::value;
        if (p.bits == 4)
          tile<M>(rows_of_x, block, out + m * p.N);
        else
          weight_rows<M>(rows_of_x, block * kRows, std::min(p.N, (block + 1) * kRows), out + m * p.N);
      });
    }
  }
}

void QuantizedMatmulBlocks(const QuantizedMatmul& p, DType dtype, void* out, int64_t begin, int64_t end) {
  if (dtype == DType::kFloat32)
    matmul_blocks(p, static_cast<float*>(out), begin, end);
  else
    matmul_blocks(p, static_cast<bf16*>(out), begin, end);
}

#undef TOKENYARD_AVX512
#undef TOKENYARD_INT8_DOT
#endif  // TOKENYARD_SIZELESS_VECTORS

}  // namespace HWY_NAMESPACE
}  // namespace tokenyard
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tokenyard {
HWY_EXPORT(PrepareQuantizedX);
HWY_EXPORT(QuantizedMatmulBlocks);
HWY_EXPORT(Int8DotForRows);

namespace simd {
namespace {
// Rows of x from which 8-bit codes go through vdpbf16ps: converting each code to bfloat16 costs more than a
// float32 FMA saves for fewer.
constexpr int64_t kBf16Int8FromRows = 4;
}  // namespace

bool quantized_uses_bf16_dot(DType x_dtype, int bits, int64_t M) {
  return x_dtype == DType::kBFloat16 && bf16_dot_allowed() && bits == 8 && M >= kBf16Int8FromRows;
}

bool quantized_uses_int8_dot(int bits, int64_t M) {
  return bits == 4 && HWY_DYNAMIC_DISPATCH(Int8DotForRows)(M);
}

void quantize_x_int8(const float* x_float, int64_t M, int64_t K, int64_t group, int8_t* x_q, float* x_d) {
  static constexpr int kOrder[8] = {0, 4, 1, 5, 2, 6, 3, 7};  // see the declaration
  const int64_t groups = K / group;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      const float* x = x_float + m * K + g * group;
      float largest = 0.f;
      for (int64_t k = 0; k < group; ++k) largest = std::max(largest, std::fabs(x[k]));
      const float d = largest / 127.f, inverse = largest > 0.f ? 127.f / largest : 0.f;
      x_d[m * groups + g] = d;
      int8_t* q = x_q + m * 2 * K + 2 * g * group;
      for (int64_t k = 0; k < group; k += 8, q += 16)
        for (int c = 0; c < 8; ++c) {
          const float value = x[k + kOrder[c]], steps = std::nearbyint(value * inverse);
          q[c] = int8_t(steps);
          q[8 + c] = int8_t(std::nearbyint((value - steps * d) * inverse * 254.f));  // |value - steps d| <= d / 2
        }
    }
}

void prepare_quantized_x(DType dtype, const void* x, int64_t M, int64_t width, int64_t K, int64_t group,
                         float* x_float, uint16_t* x_bf16, float* x_sums) {
  HWY_DYNAMIC_DISPATCH(PrepareQuantizedX)(dtype, x, M, width, K, group, x_float, x_bf16, x_sums);
}

void quantized_matmul_blocks(const QuantizedMatmul& p, DType dtype, void* out, int64_t begin, int64_t end) {
  HWY_DYNAMIC_DISPATCH(QuantizedMatmulBlocks)(p, dtype, out, begin, end);
}
}  // namespace simd
}  // namespace tokenyard
#endif  // HWY_ONCE
