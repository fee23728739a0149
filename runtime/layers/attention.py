"""Paged attention behind a backend interface.

The model runner builds one ``AttentionMetadata`` per step (the same for every layer); the backend
turns it into whatever its kernels want once (``prepare``) and then serves every layer (``forward``).
The torch backend here is the reference that runs anywhere; a Triton paged-attention backend plugs in
for GPUs without the model or the runner changing.

Within a step, decode rows (one query token each) come first, then prefill chunks.

The KV cache holds one entry per (slot, KV head) in the model's dtype, or quantized
(``kv_cache_dtype`` int8 / fp8): ``head_dim`` one-byte codes followed by the entry's bfloat16 scale in
two more bytes (per token and head: absmax / 127 for int8), so one int8 tensor still holds a layer's
cache and each entry is written once. Entries are quantized on write and dequantized on read; a prefill
chunk attends to its own fresh keys and values unquantized, as vLLM's kernels do.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

from tokenyard.runtime.kernels import kernels_for


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (num_tokens,) cache slot for each new token's K/V
    query_start_loc: list[int]  # (num_seqs + 1,) where each sequence's new tokens start in the flat batch
    context_lens: list[int]  # (num_seqs,) tokens in the cache for each sequence after this step
    block_tables: list[list[int]]  # per sequence, its KV blocks in order
    num_decodes: int  # the first num_decodes sequences have exactly one new token
    block_size: int
    plan: TorchAttentionPlan | None = None  # what TorchAttentionBackend.prepare derived, reused by all layers

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)


class AttentionBackend(Protocol):
    def prepare(self, meta: AttentionMetadata, device: torch.device) -> None: ...

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor: ...


def context_slots(block_tables: list[list[int]], length: int, block_size: int) -> torch.Tensor:
    """(rows, length) cache slots of positions [0, length) of each row's sequence; padding reads slot 0."""
    width = -(-length // block_size)
    table = torch.zeros(len(block_tables), width, dtype=torch.long)
    for row, blocks in enumerate(block_tables):
        blocks = blocks[:width]
        table[row, : len(blocks)] = torch.tensor(blocks, dtype=torch.long)
    offsets = torch.arange(block_size)
    return (table[:, :, None] * block_size + offsets).flatten(1)[:, :length]


# kv_cache_dtype -> the dtype of a quantized entry's codes (stored as int8 bytes) and its largest code
QUANTIZED_KV_DTYPES = {"int8": (torch.int8, 127.0), "fp8": (torch.float8_e4m3fn, 448.0)}
QUANTIZED_KV_DTYPES["fp8_e4m3"] = QUANTIZED_KV_DTYPES["fp8"]
_SCALE_BYTES = 2  # one bfloat16 scale per entry


def kv_cache_entry(head_dim: int, kv_cache_dtype: str, model_dtype: torch.dtype) -> tuple[torch.dtype, int]:
    """(storage dtype, width) of one token's key (or value) for one KV head in the cache."""
    if kv_cache_dtype == "auto":
        return model_dtype, head_dim
    return torch.int8, head_dim + _SCALE_BYTES


def check_kv_cache_dtype(kv_cache_dtype: str, device: torch.device) -> None:
    """fp8 needs hardware fp8 (CUDA compute capability 8.9+: Ada, Hopper and later)."""
    if kv_cache_dtype.startswith("fp8"):
        has_fp8 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
        if not has_fp8:
            raise ValueError(
                f"kv_cache_dtype={kv_cache_dtype!r} is invalid on {device}: fp8 needs a GPU with compute capability "
                ">= 8.9; allowed here: auto, int8"
            )


def quantize_kv(x: torch.Tensor, kv_cache_dtype: str) -> torch.Tensor:
    """(tokens, kv_heads, dim) -> (tokens, kv_heads, dim + 2) int8 entries: codes, then the scale's bytes."""
    codes_dtype, largest = QUANTIZED_KV_DTYPES[kv_cache_dtype]
    scale = (x.float().abs().amax(-1, keepdim=True) / largest).to(torch.bfloat16).clamp_(min=1e-30)
    scaled = x.float() / scale.float()  # the rounded scale, so that codes times it is what reads give back
    if codes_dtype == torch.int8:
        codes = scaled.round_().clamp_(-largest, largest).to(torch.int8)
    else:
        codes = scaled.clamp_(-largest, largest).to(codes_dtype).view(torch.int8)
    return torch.cat([codes, scale.view(torch.int8)], dim=-1)


def dequantize_kv(entries: torch.Tensor, kv_cache_dtype: str, dtype: torch.dtype) -> torch.Tensor:
    codes_dtype, _ = QUANTIZED_KV_DTYPES[kv_cache_dtype]
    codes = entries[..., :-_SCALE_BYTES]
    if codes_dtype != torch.int8:
        codes = codes.contiguous().view(codes_dtype)
    scale = entries[..., -_SCALE_BYTES:].contiguous().view(torch.bfloat16)
    return codes.to(dtype) * scale.to(dtype)


class TorchAttentionBackend:
    """Reference backend: gathers each sequence's context from the paged cache and runs SDPA.

    Keys and values are never repeated per query head: decode rows fold a group's query heads into the query
    length ((kv_heads, group) queries against kv_heads keys), prefill chunks let SDPA group them (enable_gqa).
    """

    def __init__(self, kv_cache_dtype: str = "auto") -> None:
        self.kv_cache_dtype = kv_cache_dtype

    def _write(self, kv_cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        ops = kernels_for(k) if self.kv_cache_dtype == "auto" else None
        if ops is not None and kv_cache.dtype == k.dtype:
            ops.write_kv_cache(kv_cache, slots, k, v)
            return
        for half, x in ((kv_cache[0], k), (kv_cache[1], v)):
            half.index_copy_(0, slots, x if self.kv_cache_dtype == "auto" else quantize_kv(x, self.kv_cache_dtype))

    def _reader(self, kv_cache: torch.Tensor, dtype: torch.dtype) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """``read(0 for keys / 1 for values, slots)``: cache entries at ``slots`` in ``dtype``."""
        if self.kv_cache_dtype == "auto":
            return lambda half, slots: kv_cache[half].index_select(0, slots)
        return lambda half, slots: dequantize_kv(kv_cache[half].index_select(0, slots), self.kv_cache_dtype, dtype)

    def prepare(self, meta: AttentionMetadata, device: torch.device) -> None:
        d = meta.num_decodes
        decode = _plan_decode(meta, device) if d else None
        prefills = []
        for row in range(d, meta.num_seqs):
            start, end = meta.query_start_loc[row], meta.query_start_loc[row + 1]
            context = meta.context_lens[row]
            prior = context - (end - start)  # tokens already cached before this chunk
            slots = mask = None
            if prior:
                slots = context_slots([meta.block_tables[row]], context, meta.block_size)[0].to(device)
                positions = torch.arange(context, device=device)
                mask = positions[None, :] <= positions[prior:, None]  # each query sees the context up to itself
            prefills.append(PrefillChunk(start, end, prior, slots, mask))
        on_cpu_kernels = self.kv_cache_dtype == "auto" and device.type == "cpu"
        decode_only = d == meta.num_seqs
        in_place = on_cpu_kernels and decode_only and decode is not None and _reads_cache_directly(decode)
        meta.plan = TorchAttentionPlan(
            decode=decode,
            prefills=prefills,
            decode_in_place=(decode.suffix_slots, decode.suffix_lens) if in_place else None,
            chunks=_plan_chunks(meta, device) if on_cpu_kernels and not decode_only else None,
        )

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """q: (tokens, heads, dim); k, v: (tokens, kv_heads, dim); kv_cache: (2, slots, kv_heads, entry width)."""
        self._write(kv_cache, meta.slot_mapping, k, v)
        plan = meta.plan
        d = meta.num_decodes
        ops = kernels_for(q) if self.kv_cache_dtype == "auto" and q.shape[-1] % 16 == 0 else None
        if ops is not None and plan.decode_in_place is not None:  # the kernel's output is the whole output
            return ops.decode_attention(q, kv_cache, *plan.decode_in_place, scale)
        if ops is not None and plan.chunks is not None:  # decodes, and decodes with drafts to verify
            return ops.chunk_attention(q, kv_cache, *plan.chunks, scale)
        read = self._reader(kv_cache, q.dtype)
        out = torch.empty_like(q)
        if d:
            out[:d] = _decode(q[:d], read, plan.decode, scale)
        for chunk in plan.prefills:
            start, end = chunk.start, chunk.end
            if chunk.prior:
                keys, values = read(0, chunk.slots), read(1, chunk.slots)
            else:
                keys, values = k[start:end], v[start:end]
            out[start:end] = _prefill(q[start:end], keys, values, chunk.mask, scale)
        return out


# Measured on CPU: SDPA's kernel wins for a few decode rows, plain matmuls for many.
SDPA_MAX_DECODE_ROWS = 8
# Chunks this short (a decode with the drafts it verifies) are read from the cache in place by the CPU
# kernel: SDPA on gathered copies costs several times more there.
MAX_PAGED_CHUNK = 16


@dataclass
class _DecodePlan:
    """Decode rows read [shared prefix | own suffix]. The prefix (blocks every row holds, e.g. one
    system prompt from the prefix cache) is gathered once and attended by all rows in one matmul
    (cascade attention); each row's suffix is gathered per row and padded."""

    shared_slots: torch.Tensor | None  # (shared_len,)
    suffix_slots: torch.Tensor  # (rows, longest_suffix)
    suffix_lens: torch.Tensor  # (rows,)
    suffix_mask: torch.Tensor  # (rows, 1, 1, longest_suffix), True where a key exists


class PrefillChunk(NamedTuple):
    start: int  # where the chunk's queries start and end in the flat batch
    end: int
    prior: int  # tokens of its sequence already cached before this chunk
    slots: torch.Tensor | None  # (prior + chunk,) cache slots of its whole context, None when prior is 0
    mask: torch.Tensor | None  # (chunk, prior + chunk), True where a query sees a key; None (causal) when prior is 0


@dataclass
class TorchAttentionPlan:
    """What ``TorchAttentionBackend.prepare`` derives from a step's metadata once, for every layer."""

    decode: _DecodePlan | None  # the decode rows' reads, None without decode rows
    prefills: list[PrefillChunk]  # one per prefill chunk, after the decode rows
    # (slots, lengths) of a step that only decodes, for the CPU kernel reading the cache in place
    decode_in_place: tuple[torch.Tensor, torch.Tensor] | None
    # (context slots, context lengths, query starts) for the CPU chunk kernel (see _plan_chunks)
    chunks: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None

    @property
    def cache_context(self) -> tuple[torch.Tensor, ...] | None:
        """What the CPU kernels take to read this step's context from the cache in place; None where the
        step is not theirs (prefill, many rows, a shared prefix, a quantized cache, a GPU)."""
        return self.decode_in_place if self.decode_in_place is not None else self.chunks


def _plan_decode(meta: AttentionMetadata, device: torch.device) -> _DecodePlan:
    d, bs = meta.num_decodes, meta.block_size
    tables, lens = meta.block_tables[:d], meta.context_lens[:d]
    shared_blocks = 0
    if d > 1:
        shortest = min(lens) // bs  # only blocks that are full in every row
        first = tables[0]
        while shared_blocks < shortest and all(t[shared_blocks] == first[shared_blocks] for t in tables):
            shared_blocks += 1
    shared = shared_blocks * bs
    suffix_lens = torch.tensor(lens) - shared
    longest = int(suffix_lens.max())
    suffix_slots = context_slots([t[shared_blocks:] for t in tables], longest, bs)
    mask = (torch.arange(longest)[None, :] < suffix_lens[:, None]).view(d, 1, 1, longest)
    shared_slots = context_slots([first[:shared_blocks]], shared, bs)[0].to(device) if shared else None
    return _DecodePlan(shared_slots, suffix_slots.contiguous().to(device), suffix_lens.to(device), mask.to(device))


def _reads_cache_directly(plan: _DecodePlan) -> bool:
    """The CPU kernel reads each row's context from the cache in place: it wins where SDPA would have run
    on gathered copies (a few rows, no shared prefix); cascade attention wins for many rows sharing one."""
    return plan.shared_slots is None and plan.suffix_slots.shape[0] <= SDPA_MAX_DECODE_ROWS


def _plan_chunks(
    meta: AttentionMetadata, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(context slots, context lengths, query starts) per sequence for the CPU chunk kernel, which serves
    a step of a few sequences whose chunks are all short (decodes with the drafts they verify); SDPA serves
    the others."""
    starts = meta.query_start_loc
    longest_chunk = max(end - start for start, end in itertools.pairwise(starts))
    if meta.num_seqs > SDPA_MAX_DECODE_ROWS or longest_chunk > MAX_PAGED_CHUNK:
        return None
    slots = context_slots(meta.block_tables, max(meta.context_lens), meta.block_size).contiguous()
    return slots.to(device), torch.tensor(meta.context_lens, device=device), torch.tensor(starts, device=device)


def _decode(
    q: torch.Tensor, read: Callable[[int, torch.Tensor], torch.Tensor], plan: _DecodePlan, scale: float
) -> torch.Tensor:
    rows, heads, dim = q.shape
    length = plan.suffix_slots.shape[1]
    flat = plan.suffix_slots.reshape(-1)
    keys, values = read(0, flat), read(1, flat)
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    grouped = q.view(rows, kv_heads, group, dim)
    keys = keys.view(rows, length, kv_heads, dim).transpose(1, 2)
    values = values.view(rows, length, kv_heads, dim).transpose(1, 2)
    if plan.shared_slots is None and rows <= SDPA_MAX_DECODE_ROWS:
        out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=plan.suffix_mask, scale=scale)
        return out.reshape(rows, heads, dim)
    scores = (grouped @ keys.transpose(-1, -2)).float().mul_(scale).masked_fill_(~plan.suffix_mask, float("-inf"))
    if plan.shared_slots is None:
        return (torch.softmax(scores, dim=-1).to(q.dtype) @ values).reshape(rows, heads, dim)
    # all rows' queries against the shared keys at once: (kv_heads, rows * group, shared_len)
    shared_keys = read(0, plan.shared_slots).permute(1, 2, 0)
    shared_values = read(1, plan.shared_slots).transpose(0, 1)
    stacked = grouped.transpose(0, 1).reshape(kv_heads, rows * group, dim)
    shared_scores = (stacked @ shared_keys).float().mul_(scale)
    # one softmax over both parts: a common max, then the two weighted sums over one normaliser
    top = torch.maximum(scores.amax(-1), shared_scores.view(kv_heads, rows, group, -1).amax(-1).transpose(0, 1))
    weights = torch.exp(scores - top[..., None])
    shared_weights = torch.exp(shared_scores - top.transpose(0, 1).reshape(kv_heads, rows * group, 1))
    total = weights.sum(-1) + shared_weights.sum(-1).view(kv_heads, rows, group).transpose(0, 1)
    out = (weights.to(q.dtype) @ values).float()
    shared_out = (shared_weights.to(q.dtype) @ shared_values).float()
    out += shared_out.view(kv_heads, rows, group, dim).transpose(0, 1)
    return (out / total[..., None]).to(q.dtype).reshape(rows, heads, dim)


def _prefill(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Attention of a chunk of queries over its cached context plus itself: ``mask`` says which keys each query
    sees (None: the chunk is the whole context, causal). Four dimensions, (1, heads, tokens, dim), because SDPA's
    fused kernels take no other shape: three fall back to its math path (~2.5x slower on CPU, where it was most
    of a cached-prefix prefill's attention)."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        keys.transpose(0, 1)[None],
        values.transpose(0, 1)[None],
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=True,
    )
    return out[0].transpose(0, 1)
