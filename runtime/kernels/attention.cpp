// Attention read straight from the paged KV cache: decode rows, and short chunks (decodes with drafts). The
// SIMD code is simd/attention_simd.cc.
#include "common.h"
#include "simd/attention.h"

namespace tokenyard {
namespace {

// The checks both kernels share, and the batch they describe; out: (tokens, heads, dim).
simd::PagedAttention paged_attention(const char* kernel, const at::Tensor& q, const at::Tensor& kv_cache,
                                     const at::Tensor& slots, at::Tensor& out, double scale) {
  TORCH_CHECK(kv_cache.is_contiguous() && slots.is_contiguous() && slots.scalar_type() == at::kLong, kernel,
              " takes a contiguous cache and int64 slots");
  TORCH_CHECK(q.stride(2) == 1, "query heads must be contiguous in dim");
  TORCH_CHECK(kv_cache.scalar_type() == q.scalar_type(), kernel, " takes a cache of the queries' dtype");
  const int64_t dim = q.size(2), lanes = simd::float_lanes();
  TORCH_CHECK(dim % lanes == 0 && dim <= 256, kernel, " takes head_dim a multiple of ", lanes,
              " (floats in this CPU's vectors) up to 256, got ", dim);
  const int64_t heads = q.size(1), kv_heads = kv_cache.size(2);
  TORCH_CHECK(heads % kv_heads == 0, kernel, " takes a number of query heads that is a multiple of the KV heads'");
  return {dtype_of(q), q.data_ptr(), q.stride(0), q.stride(1), kv_cache.data_ptr(), kv_cache.size(1), heads, kv_heads,
          dim, slots.data_ptr<int64_t>(), slots.size(1), out.data_ptr(), static_cast<float>(scale)};
}

}  // namespace

// One query token per row attending to its context straight from the paged cache (no gathered copy):
// q (rows, heads, dim); kv_cache (2, slots, kv_heads, dim); slots (rows, longest) int64, the cache
// slot of each context position; lengths (rows,) int64. Grouped-query heads share their KV head.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& slots,
                            const at::Tensor& lengths, double scale) {
  TORCH_CHECK(lengths.is_contiguous() && lengths.scalar_type() == at::kLong, "decode_attention takes int64 lengths");
  const int64_t rows = q.size(0), heads = q.size(1);
  at::Tensor out = at::empty({rows, heads, q.size(2)}, q.options());
  const simd::PagedAttention batch = paged_attention("decode_attention", q, kv_cache, slots, out, scale);
  const int64_t* length = lengths.data_ptr<int64_t>();
  const int64_t items = rows * heads;
  at::parallel_for(0, items, parallel_grain(items, items * batch.longest * batch.dim), [&](int64_t begin, int64_t end) {
    simd::decode_attention_rows(batch, length, begin, end);
  });
  return out;
}

// Attention of short query chunks straight from the paged cache: decodes with the draft tokens they
// verify. q (tokens, heads, dim); kv_cache (2, slots, kv_heads, dim), already holding the chunks' own keys
// and values; per sequence s: slots[s] its context's cache slots (padded), context_lens[s] its context
// length after this step, and its query tokens q[query_starts[s] : query_starts[s + 1]], the last ones
// of its context, each seeing the keys up to its own.
//
// A work item is as many query rows of one (sequence, KV head) as a vector has lanes: its grouped heads for
// each token, which all read the same keys. The rows sit in the lanes of a vector (queries transposed once),
// so each key costs dim FMAs for all rows at once, the online softmax (running max and sum per row) is
// lane-wise, and no horizontal sums are needed.
at::Tensor chunk_attention(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& slots,
                           const at::Tensor& context_lens, const at::Tensor& query_starts, double scale) {
  TORCH_CHECK(context_lens.is_contiguous() && query_starts.is_contiguous() && context_lens.scalar_type() == at::kLong &&
                  query_starts.scalar_type() == at::kLong,
              "chunk_attention takes contiguous int64 context lengths and query starts");
  const int64_t seqs = slots.size(0);
  const int64_t* start = query_starts.data_ptr<int64_t>();
  TORCH_CHECK(query_starts.size(0) == seqs + 1 && start[0] == 0 && start[seqs] == q.size(0),
              "query_starts must run from 0 to the number of query tokens, one entry per sequence and one more");
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  const simd::PagedAttention batch = paged_attention("chunk_attention", q, kv_cache, slots, out, scale);
  const int64_t group = batch.heads / batch.kv_heads, lanes = simd::float_lanes();
  std::vector<simd::ChunkRows> items;
  for (int64_t s = 0; s < seqs; ++s)
    for (int64_t h = 0; h < batch.kv_heads; ++h)
      for (int64_t first = 0, rows = (start[s + 1] - start[s]) * group; first < rows; first += lanes)
        items.push_back({s, h, first, std::min(lanes, rows - first)});
  const int64_t* context = context_lens.data_ptr<int64_t>();
  const int64_t count = static_cast<int64_t>(items.size()), work = q.size(0) * batch.heads * batch.longest * batch.dim;
  at::parallel_for(0, count, parallel_grain(count, work), [&](int64_t begin, int64_t end) {
    simd::chunk_attention_rows(batch, context, start, items.data(), begin, end);
  });
  return out;
}

}  // namespace tokenyard
