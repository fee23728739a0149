// Attention read straight from the paged KV cache: decode rows, and short chunks (decodes with drafts).
#include "common.h"

namespace tokenyard {

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
        __m512 sum = _mm512_setzero_ps();  // the softmax's exponentials, 16 keys at a time
        for (int64_t j = 0; j < n; j += 16) {
          const __mmask16 mask = n - j >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - j)) - 1);
          const __m512 weight = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, scores.data() + j), _mm512_set1_ps(top)));
          _mm512_mask_storeu_ps(scores.data() + j, mask, weight);
          sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, weight));
        }
        const float total = _mm512_reduce_add_ps(sum);
        for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; ++j) {
          const scalar_t* value = cache + ((half + slot[r * longest + j]) * kv_heads + kvh) * dim;
          for (int64_t c = 0; c < chunks; ++c)
            acc[c] = _mm512_fmadd_ps(_mm512_set1_ps(scores[j]), load16(value + 16 * c), acc[c]);
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

}  // namespace tokenyard
