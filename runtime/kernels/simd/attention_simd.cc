#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd/attention_simd.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/aligned_allocator.h"
#include "simd/attention.h"
#include "simd/simd-inl.h"

HWY_BEFORE_NAMESPACE();
namespace tokenyard {
namespace HWY_NAMESPACE {
using simd::ChunkRows;
using simd::PagedAttention;
using DI = hn::RebindToSigned<DF>;

// The longest head a decode row's stack buffers hold (attention.cpp checks head_dim against it).
constexpr int64_t kMaxDim = 256;
// Keys a chunk item takes at a time: eight independent FMA chains, enough to fill the FMA units.
constexpr int64_t kKeys = 8;

int64_t FloatLanes() { return hn::Lanes(DF()); }

template <typename T>
const T* query_of(const PagedAttention& batch, int64_t token, int64_t head) {
  return static_cast<const T*>(batch.q) + token * batch.token_stride + head * batch.head_stride;
}

template <typename T>
T* output_of(const PagedAttention& batch, int64_t token, int64_t head) {
  return static_cast<T*>(batch.out) + (token * batch.heads + head) * batch.dim;
}

template <typename T>
const T* key_at(const PagedAttention& batch, int64_t slot, int64_t kv_head) {
  return static_cast<const T*>(batch.kv_cache) + (slot * batch.kv_heads + kv_head) * batch.dim;
}

template <typename T>
const T* value_at(const PagedAttention& batch, int64_t slot, int64_t kv_head) {
  return key_at<T>(batch, batch.cache_slots + slot, kv_head);
}

// In place: scores[0, n) become exp(score - top); returns their sum. scores holds whole vectors.
HWY_INLINE float exponentiate(DF d, float* scores, int64_t n, float top) {
  const int64_t lanes = hn::Lanes(d);
  VF sum = hn::Zero(d);
  for (int64_t j = 0; j < n; j += lanes) {
    const VF weight = exp(d, hn::Sub(hn::Load(d, scores + j), hn::Set(d, top)));
    hn::Store(weight, d, scores + j);
    sum = hn::Add(sum, hn::IfThenElseZero(hn::FirstN(d, n - j), weight));
  }
  return sum_of_lanes(d, sum);
}

// scores[j] = query . key at slot[j], for the row's n context positions; returns the largest.
template <typename T>
float score_keys(const PagedAttention& batch, const float* query, const int64_t* slot, int64_t n, int64_t kv_head,
                 float* scores) {
  const DF d;
  const int64_t lanes = hn::Lanes(d);
  float top = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    const T* key = key_at<T>(batch, slot[j], kv_head);
    VF dot = hn::Mul(hn::Load(d, query), load(d, key));
    for (int64_t c = lanes; c < batch.dim; c += lanes)
      dot = hn::MulAdd(hn::Load(d, query + c), load(d, key + c), dot);
    scores[j] = sum_of_lanes(d, dot);
    top = std::max(top, scores[j]);
  }
  return top;
}

// acc = the sum of weights[j] * the value at slot[j], over the row's n context positions, in order. Four
// values per pass over acc: acc's store-to-load round trip (the loop's critical path) once per four FMAs.
template <typename T>
void sum_values(const PagedAttention& batch, const float* weights, const int64_t* slot, int64_t n, int64_t kv_head,
                float* acc) {
  const DF d;
  const int64_t lanes = hn::Lanes(d);
  for (int64_t c = 0; c < batch.dim; c += lanes) hn::Store(hn::Zero(d), d, acc + c);
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const T *v0 = value_at<T>(batch, slot[j], kv_head), *v1 = value_at<T>(batch, slot[j + 1], kv_head);
    const T *v2 = value_at<T>(batch, slot[j + 2], kv_head), *v3 = value_at<T>(batch, slot[j + 3], kv_head);
    const VF w0 = hn::Set(d, weights[j]), w1 = hn::Set(d, weights[j + 1]);
    const VF w2 = hn::Set(d, weights[j + 2]), w3 = hn::Set(d, weights[j + 3]);
    for (int64_t c = 0; c < batch.dim; c += lanes) {
      VF sum = hn::MulAdd(w0, load(d, v0 + c), hn::Load(d, acc + c));
      sum = hn::MulAdd(w1, load(d, v1 + c), sum);
      sum = hn::MulAdd(w2, load(d, v2 + c), sum);
      hn::Store(hn::MulAdd(w3, load(d, v3 + c), sum), d, acc + c);
    }
  }
  for (; j < n; ++j) {
    const T* value = value_at<T>(batch, slot[j], kv_head);
    const VF weight = hn::Set(d, weights[j]);
    for (int64_t c = 0; c < batch.dim; c += lanes)
      hn::Store(hn::MulAdd(weight, load(d, value + c), hn::Load(d, acc + c)), d, acc + c);
  }
}

// One query row (one head of one token) over its context: scores in full first, the softmax over them, then
// the weighted values. scores: room for the longest context rounded up to whole vectors.
template <typename T>
void decode_row(const PagedAttention& batch, const int64_t* lengths, int64_t index, float* scores) {
  const DF d;
  const int64_t lanes = hn::Lanes(d), dim = batch.dim;
  const int64_t s = index / batch.heads, head = index % batch.heads, n = lengths[s];
  const int64_t kv_head = head / (batch.heads / batch.kv_heads);
  const int64_t* slot = batch.slots + s * batch.longest;
  HWY_ALIGN float query[kMaxDim], acc[kMaxDim];
  const T* q = query_of<T>(batch, s, head);
  for (int64_t c = 0; c < dim; c += lanes) hn::Store(hn::Mul(load(d, q + c), hn::Set(d, batch.scale)), d, query + c);
  const float top = score_keys<T>(batch, query, slot, n, kv_head, scores);
  const float total = exponentiate(d, scores, n, top);
  sum_values<T>(batch, scores, slot, n, kv_head, acc);
  T* out = output_of<T>(batch, s, head);
  for (int64_t c = 0; c < dim; c += lanes) store(hn::Div(hn::Load(d, acc + c), hn::Set(d, total)), d, out + c);
}

template <typename T>
void decode_rows(const PagedAttention& batch, const int64_t* lengths, int64_t begin, int64_t end) {
  const size_t lanes = hn::Lanes(DF());
  const auto scores = hwy::AllocateAligned<float>((batch.longest + lanes - 1) / lanes * lanes);
  for (int64_t index = begin; index < end; ++index) decode_row<T>(batch, lengths, index, scores.get());
}

void DecodeAttentionRows(const PagedAttention& batch, const int64_t* lengths, int64_t begin, int64_t end) {
  if (batch.dtype == DType::kFloat32)
    decode_rows<float>(batch, lengths, begin, end);
  else
    decode_rows<bf16>(batch, lengths, begin, end);
}

// A chunk item's rows, one per lane: lane r is row item.first + r of its sequence's chunk, the grouped head
// (item.first + r) % group of query token (item.first + r) / group.
struct ItemRows {
  const ChunkRows& item;
  int64_t group, first_token;  // first_token: the chunk's first query token in the batch

  int64_t chunk_token(int64_t lane) const { return (item.first + lane) / group; }
  int64_t token(int64_t lane) const { return first_token + chunk_token(lane); }
  int64_t head(int64_t lane) const { return item.kv_head * group + (item.first + lane) % group; }
};

// queries[i * lanes + r] = scale * row r's query[i]; zero for lanes past the item's rows. A scalar transpose:
// dim * lanes values once per item, against dim * lanes FMAs per key.
template <typename T>
void transpose_queries(const PagedAttention& batch, const ItemRows& rows, int64_t lanes, float* queries) {
  for (int64_t r = 0; r < lanes; ++r) {
    const T* q = r < rows.item.count ? query_of<T>(batch, rows.token(r), rows.head(r)) : nullptr;
    for (int64_t i = 0; i < batch.dim; ++i) queries[i * lanes + r] = q ? to_float(q[i]) * batch.scale : 0.f;
  }
}

// The float32 keys and values of context positions j0 .. j0 + kKeys - 1, rows of dim; past the count'th,
// position j0's again (finite values, which the visibility mask then leaves out).
struct KeyBlock {
  const float* key[kKeys];
  const float* value[kKeys];
};

// float32 rows are read in place; bfloat16 ones are widened into scratch (2 * kKeys * dim floats) once, not
// once per FMA.
template <typename T>
KeyBlock key_block(const PagedAttention& batch, const int64_t* slot, int64_t kv_head, int64_t j0, int64_t count,
                   float* scratch) {
  const DF d;
  const int64_t lanes = hn::Lanes(d), dim = batch.dim;
  KeyBlock block;
  for (int64_t j = 0; j < kKeys; ++j) {
    const int64_t position = j0 + (j < count ? j : 0);
    const T *key = key_at<T>(batch, slot[position], kv_head), *value = value_at<T>(batch, slot[position], kv_head);
    if constexpr (std::is_same_v<T, float>) {
      block.key[j] = key, block.value[j] = value;
    } else {
      float *wide_key = scratch + 2 * j * dim, *wide_value = wide_key + dim;
      for (int64_t c = 0; c < dim; c += lanes) {
        hn::Store(load(d, key + c), d, wide_key + c);
        hn::Store(load(d, value + c), d, wide_value + c);
      }
      block.key[j] = wide_key, block.value[j] = wide_value;
    }
  }
  return block;
}

// Lanes whose row sees context position j: those below visible_to.
HWY_INLINE hn::Mask<DF> sees(DF d, hn::Vec<DI> visible_to, int64_t j) {
  return hn::RebindMask(d, hn::Gt(visible_to, hn::Set(DI(), static_cast<int32_t>(j))));
}

// Moves each row's running maximum from top to new_top: its total and acc (dim x lanes) times exp(top - new_top),
// which is 0 before the first key (top = -inf).
HWY_INLINE void move_top(DF d, int64_t dim, VF new_top, VF& top, VF& total, float* acc) {
  const int64_t lanes = hn::Lanes(d);
  const VF rescale = exp(d, hn::Sub(top, new_top));
  total = hn::Mul(total, rescale);
  for (int64_t i = 0; i < dim * lanes; i += lanes) hn::Store(hn::Mul(hn::Load(d, acc + i), rescale), d, acc + i);
  top = new_top;
}

// A block of keys for every lane's row, the online softmax lane-wise: top and total are each row's running
// maximum score and sum of exponentials, acc (dim x lanes) its sum of weighted values, scaled to top. Lane r
// sees positions below visible_to[r]; every lane sees position 0, so top is finite after the first block.
HWY_INLINE void attend_key_block(DF d, int64_t dim, const float* queries, const KeyBlock& block, hn::Vec<DI> visible_to,
                                 int64_t j0, VF& top, VF& total, float* acc) {
  const int64_t lanes = hn::Lanes(d);
  VF s0 = hn::Zero(d), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
  // Vectors cannot be array elements on SVE: each step is applied to the kKeys named ones in turn.
  const auto each_key = [&](auto&& step) {
    step(0, s0), step(1, s1), step(2, s2), step(3, s3), step(4, s4), step(5, s5), step(6, s6), step(7, s7);
  };
  for (int64_t i = 0; i < dim; ++i) {
    const VF q = hn::Load(d, queries + i * lanes);
    each_key([&](int64_t j, VF& score) { score = hn::MulAdd(q, hn::Set(d, block.key[j][i]), score); });
  }
  VF new_top = top;
  each_key([&](int64_t j, VF& score) {
    new_top = hn::IfThenElse(sees(d, visible_to, j0 + j), hn::Max(new_top, score), new_top);
  });
  // After the first keys a row's maximum seldom moves: most blocks skip the rescaling pass over acc.
  if (!hn::AllTrue(d, hn::Eq(new_top, top))) move_top(d, dim, new_top, top, total, acc);
  each_key([&](int64_t j, VF& score) {
    score = hn::IfThenElseZero(sees(d, visible_to, j0 + j), exp(d, hn::Sub(score, top)));
    total = hn::Add(total, score);
  });
  for (int64_t i = 0; i < dim; ++i) {
    VF sum = hn::Load(d, acc + i * lanes);
    each_key([&](int64_t j, VF& weight) { sum = hn::MulAdd(weight, hn::Set(d, block.value[j][i]), sum); });
    hn::Store(sum, d, acc + i * lanes);
  }
}

// Back to one row per query: acc (dim x lanes) divided by each lane's total, rounded once to T.
template <typename T>
void write_rows(const PagedAttention& batch, const ItemRows& rows, const float* acc, VF total) {
  const DF d;
  const int64_t lanes = hn::Lanes(d);
  HWY_ALIGN float inverse[hn::MaxLanes(DF())];
  hn::Store(hn::Div(hn::Set(d, 1.f), total), d, inverse);
  for (int64_t r = 0; r < rows.item.count; ++r) {
    T* out = output_of<T>(batch, rows.token(r), rows.head(r));
    for (int64_t i = 0; i < batch.dim; ++i) out[i] = from_float<T>(acc[i * lanes + r] * inverse[r]);
  }
}

// scratch: 2 * dim * lanes + 2 * kKeys * dim floats, vector-aligned.
template <typename T>
void chunk_item(const PagedAttention& batch, const int64_t* context_lens, const int64_t* query_starts,
                const ChunkRows& item, float* scratch) {
  const DF d;
  const int64_t lanes = hn::Lanes(d), dim = batch.dim, s = item.sequence;
  float *queries = scratch, *acc = queries + dim * lanes, *widened = acc + dim * lanes;
  const ItemRows rows{item, batch.heads / batch.kv_heads, query_starts[s]};
  const int64_t first_position = context_lens[s] - (query_starts[s + 1] - query_starts[s]);  // of the first token
  transpose_queries<T>(batch, rows, lanes, queries);
  HWY_ALIGN int32_t visible_to[hn::MaxLanes(DI())];  // lane r sees positions [0, visible_to[r]); spare lanes 0 only
  for (int64_t r = 0; r < lanes; ++r)
    visible_to[r] = r < item.count ? first_position + rows.chunk_token(r) + 1 : 1;
  for (int64_t i = 0; i < dim * lanes; i += lanes) hn::Store(hn::Zero(d), d, acc + i);
  VF top = hn::Set(d, -INFINITY), total = hn::Zero(d);
  const int64_t seen = first_position + rows.chunk_token(item.count - 1) + 1;  // by any lane
  for (int64_t j0 = 0; j0 < seen; j0 += kKeys) {
    const KeyBlock block =
        key_block<T>(batch, batch.slots + s * batch.longest, item.kv_head, j0, std::min(kKeys, seen - j0), widened);
    attend_key_block(d, dim, queries, block, hn::Load(DI(), visible_to), j0, top, total, acc);
  }
  write_rows<T>(batch, rows, acc, total);
}

template <typename T>
void chunk_items(const PagedAttention& batch, const int64_t* context_lens, const int64_t* query_starts,
                 const ChunkRows* items, int64_t begin, int64_t end) {
  const int64_t lanes = hn::Lanes(DF());
  const auto scratch = hwy::AllocateAligned<float>(2 * batch.dim * lanes + 2 * kKeys * batch.dim);
  for (int64_t item = begin; item < end; ++item)
    chunk_item<T>(batch, context_lens, query_starts, items[item], scratch.get());
}

void ChunkAttentionRows(const PagedAttention& batch, const int64_t* context_lens, const int64_t* query_starts,
                        const ChunkRows* items, int64_t begin, int64_t end) {
  if (batch.dtype == DType::kFloat32)
    chunk_items<float>(batch, context_lens, query_starts, items, begin, end);
  else
    chunk_items<bf16>(batch, context_lens, query_starts, items, begin, end);
}

}  // namespace HWY_NAMESPACE
}  // namespace tokenyard
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace tokenyard {
HWY_EXPORT(FloatLanes);
HWY_EXPORT(DecodeAttentionRows);
HWY_EXPORT(ChunkAttentionRows);

namespace simd {
int64_t float_lanes() { return HWY_DYNAMIC_DISPATCH(FloatLanes)(); }

void decode_attention_rows(const PagedAttention& batch, const int64_t* lengths, int64_t begin, int64_t end) {
  HWY_DYNAMIC_DISPATCH(DecodeAttentionRows)(batch, lengths, begin, end);
}

void chunk_attention_rows(const PagedAttention& batch, const int64_t* context_lens, const int64_t* query_starts,
                          const ChunkRows* items, int64_t begin, int64_t end) {
  HWY_DYNAMIC_DISPATCH(ChunkAttentionRows)(batch, context_lens, query_starts, items, begin, end);
}
}  // namespace simd
}  // namespace tokenyard
#endif  // HWY_ONCE
