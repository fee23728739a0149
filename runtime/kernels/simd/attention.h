// Attention read straight from the paged KV cache, on raw pointers (the tensor-facing checks, the work items
// and the threads are in ../attention.cpp): float32 inside, one rounding to the queries' dtype.
#pragma once

#include <cstdint>

#include "simd/targets.h"

namespace tokenyard::simd {

// Query tokens attending to their sequences' contexts in a paged KV cache. Strides count elements.
struct PagedAttention {
  DType dtype;
  const void* q;  // (tokens, heads, dim), each head's dim contiguous
  int64_t token_stride, head_stride;
  const void* kv_cache;  // (2, cache_slots, kv_heads, dim): keys, then values; grouped query heads share one
  int64_t cache_slots, heads, kv_heads, dim;
  const int64_t* slots;  // (sequences, longest): the cache slot of each context position, padded
  int64_t longest;
  void* out;  // (tokens, heads, dim), contiguous
  float scale;
};

// Floats in the chosen target's vector: the query rows a chunk item holds (4 on NEON, 8 on AVX2, 16 on
// AVX-512), and what head_dim must be a multiple of.
int64_t float_lanes();

// One query token per sequence (token s of sequence s) attending to its first lengths[s] context positions:
// (sequence, head) pairs [begin, end), numbered sequence * heads + head. head_dim at most 256.
void decode_attention_rows(const PagedAttention& batch, const int64_t* lengths, int64_t begin, int64_t end);

// Up to float_lanes() query rows of one sequence and KV head: rows first .. first + count - 1 of its chunk,
// row r being its grouped head r % group for query token r / group.
struct ChunkRows {
  int64_t sequence, kv_head, first, count;
};

// Short query chunks (decodes with the drafts they verify), items [begin, end): sequence s's query tokens are
// query_starts[s] .. query_starts[s + 1] - 1, the last ones of its context_lens[s] positions, each seeing the
// positions up to its own.
void chunk_attention_rows(const PagedAttention& batch, const int64_t* context_lens, const int64_t* query_starts,
                          const ChunkRows* items, int64_t begin, int64_t end);

}  // namespace tokenyard::simd
