"""The torch attention backend against plain causal attention computed per sequence, across its paths:
few decode rows (our CPU kernel reading the paged cache in place, or SDPA without it), many rows, rows
sharing a cached prefix (cascade), short chunks (drafts to verify: the kernel, one query token per row)
and prefill chunks, with a float cache and an int8 one, on the CPU and (where there is one) a GPU, where an
fp8 cache is checked too."""

from __future__ import annotations

import pytest
import torch

from tokenyard.runtime.layers import attention
from tokenyard.runtime.layers.attention import AttentionMetadata, TorchAttentionBackend, dequantize_kv, quantize_kv

BS, KV_HEADS, HEADS, DIM = 4, 2, 6, 16


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
needs_fp8 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs a GPU with fp8"
)
# (device, our CPU attention kernels on, KV cache dtype); on a GPU the backend's torch paths serve every step
PLACES = [
    *(
        pytest.param("cpu", kernels, kv, id=f"cpu-{'kernels' if kernels else 'eager'}-{kv}")
        for kernels in (True, False)
        for kv in ("auto", "int8")
    ),
    pytest.param("cuda", False, "auto", id="cuda-auto", marks=needs_cuda),
    pytest.param("cuda", False, "int8", id="cuda-int8", marks=needs_cuda),
    pytest.param("cuda", False, "fp8", id="cuda-fp8", marks=needs_fp8),
]


def naive(q_rows: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, first_position: int) -> torch.Tensor:
    """q_rows: (n, heads, dim) at positions first_position.. ; keys/values: (context, kv_heads, dim)."""
    keys = keys.repeat_interleave(HEADS // KV_HEADS, dim=1)
    values = values.repeat_interleave(HEADS // KV_HEADS, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q_rows, keys) * DIM**-0.5
    positions = torch.arange(q_rows.shape[0])[:, None] + first_position
    scores = scores.masked_fill(torch.arange(keys.shape[0])[None, :] > positions, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), values)


@pytest.mark.parametrize(
    ("contexts", "new_tokens", "shared_blocks"),
    [
        ([9], [1], 0),  # one decode row
        ([5, 13, 22], [1, 1, 1], 0),  # a few decode rows
        ([5, 13, 22] * 4, [1] * 12, 0),  # many decode rows, nothing shared
        ([12, 17, 30, 9], [1, 1, 1, 1], 2),  # decode rows sharing two cached blocks (cascade)
        ([12, 17, 9, 20], [1, 1, 6, 20], 2),  # decodes, a prefill chunk after a cached prefix, a fresh prefill
        ([9, 14, 21], [1, 4, 7], 0),  # a decode, then decodes with drafts to verify (short chunks)
        ([12, 18], [3, 5], 2),  # short chunks sharing two cached blocks
    ],
    ids=["one-decode", "few-decodes", "many-decodes", "shared-prefix", "mixed", "verify", "verify-shared"],
)
@pytest.mark.parametrize(("device", "cpu_kernels", "kv_cache_dtype"), PLACES)
def test_backend_matches_plain_attention(
    contexts, new_tokens, shared_blocks, device, cpu_kernels, kv_cache_dtype, monkeypatch
):
    """With an int8 or fp8 cache the reference reads the dequantized cache: what the backend stored, new tokens
    included."""
    if not cpu_kernels:
        monkeypatch.setattr(attention, "kernels_for", lambda x: None)
    torch.manual_seed(0)
    cache = torch.randn(2, 64 * BS, KV_HEADS, DIM)
    if kv_cache_dtype != "auto":
        cache = quantize_kv(cache.view(-1, KV_HEADS, DIM), kv_cache_dtype).view(2, 64 * BS, KV_HEADS, DIM + 2)
    shared = list(range(shared_blocks))
    free = iter(range(shared_blocks, 64))
    tables = [shared + [next(free) for _ in range(-(-c // BS) - shared_blocks)] for c in contexts]
    total = sum(new_tokens)
    q = torch.randn(total, HEADS, DIM)
    k, v = torch.randn(total, KV_HEADS, DIM), torch.randn(total, KV_HEADS, DIM)
    starts = [0]
    slots = []
    for table, context, n in zip(tables, contexts, new_tokens, strict=True):
        starts.append(starts[-1] + n)
        slots += [table[p // BS] * BS + p % BS for p in range(context - n, context)]
    meta = AttentionMetadata(
        torch.tensor(slots, device=device),
        starts,
        contexts,
        tables,
        num_decodes=next((i for i, n in enumerate(new_tokens) if n != 1), len(new_tokens)),
        block_size=BS,
    )
    backend = TorchAttentionBackend(kv_cache_dtype)
    backend.prepare(meta, torch.device(device))
    device_cache = cache.to(device)  # written by the backend: the new tokens' keys and values
    out = backend.forward(q.to(device), k.to(device), v.to(device), device_cache, meta, DIM**-0.5).cpu()
    cache = device_cache.cpu()
    stored = cache if kv_cache_dtype == "auto" else dequantize_kv(cache, kv_cache_dtype, torch.float32)
    for row, (table, context, n) in enumerate(zip(tables, contexts, new_tokens, strict=True)):
        rows = slice(starts[row], starts[row + 1])
        if n == context:  # a fresh prefill attends to its own keys and values as computed
            expected = naive(q[rows], k[rows], v[rows], 0)
        else:
            context_slots = torch.tensor([table[p // BS] * BS + p % BS for p in range(context)])
            expected = naive(q[rows], stored[0][context_slots], stored[1][context_slots], context - n)
        torch.testing.assert_close(out[rows], expected, atol=1e-5, rtol=1e-5)
