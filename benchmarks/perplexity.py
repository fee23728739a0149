"""Perplexity of a token stream under our engine's model, and the held-out English text to measure it on.

Windows of up to ``window`` tokens slide by ``stride``; each token is scored once, in the window that ends
with the ``stride`` tokens it belongs to (Hugging Face's sliding-window recipe, token-weighted). A window runs through
``ModelRunner.run_model`` in prefill chunks of ``chunk`` tokens, so later chunks read earlier ones' keys and
values back from the paged KV cache: a quantized KV cache shows up in the score, as it would when serving.

Corpus: CPython's own documentation topics (``pydoc_data.topics``, shipped with every Python, ~460 KB of
English prose and code): nothing to download, no copied text in the repository. Topics in sorted order
alternate between a calibration part (even) and a held-out evaluation part (odd), which share no paragraph.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.engine.model_runner import ModelRunner, StepInputs
from tokenyard.runtime.layers.attention import AttentionMetadata
from tokenyard.runtime.validation import require


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    nll: float  # mean negative log-likelihood of a scored token, in nats
    tokens: int  # tokens scored


def pydoc_corpus() -> tuple[str, str]:
    """(calibration text, evaluation text) from the running Python's documentation topics. Some topics
    repeat others' paragraphs: each paragraph is kept only where it first appears, so no paragraph is in both."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    parts: tuple[list[str], list[str]] = ([], [])
    for index, name in enumerate(sorted(topics)):
        fresh = [p for p in paragraphs(topics[name]) if p not in seen]
        seen.update(fresh)
        parts[index % 2].append("\n\n".join(fresh))
    return "\n\n".join(parts[0]), "\n\n".join(parts[1])


def paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def load_runner(model: str, window: int, **engine_args: object) -> ModelRunner:
    """A model runner with a KV cache that holds one window (float32 unless ``dtype`` says otherwise)."""
    config = EngineConfig(model=model, **{"dtype": "float32", "kv_cache_memory_bytes": 64 << 20, **engine_args})
    runner = ModelRunner(config)
    blocks = runner.kv_blocks_that_fit()
    runner.allocate_kv_cache(blocks)
    require(
        blocks * runner.block_size >= window,
        "kv_cache_memory_bytes",
        config.kv_cache_memory_bytes,
        f"large enough for a window of {window} tokens",
    )
    return runner


@torch.inference_mode()
def perplexity(runner: ModelRunner, ids: list[int], window: int, stride: int, chunk: int | None = None) -> Perplexity:
    """Each step scores the next ``stride`` tokens, reading up to ``window`` tokens (the scored ones and
    those before them); stride = window - 1 makes the windows disjoint."""
    require(len(ids) >= 2, "ids", f"{len(ids)} tokens", "at least 2 tokens")
    require(
        0 < stride < window,
        "stride",
        stride,
        f"in [1, window={window}): a window also holds its first target's context",
    )
    total, scored_until = 0.0, 1  # the first token has no context: it is never scored
    while scored_until < len(ids):
        end = min(scored_until + stride, len(ids))
        begin = max(0, end - window)
        logits = window_logits(runner, ids[begin:end], chunk or window)
        # target ids[t] is predicted by the row of the token before it
        logprobs = torch.log_softmax(logits[scored_until - 1 - begin : end - 1 - begin], dim=-1)
        targets = torch.tensor(ids[scored_until:end], device=logprobs.device)
        total -= float(logprobs.gather(1, targets[:, None]).sum())
        scored_until = end
    count = len(ids) - 1
    return Perplexity(math.exp(total / count), total / count, count)


def window_logits(runner: ModelRunner, ids: list[int], chunk: int) -> torch.Tensor:
    """(len(ids), vocab) float32 logits of every position of one sequence, prefilled chunk by chunk into
    the first blocks of the cache (slot = position)."""
    device, block_size = runner.device, runner.block_size
    block_table = list(range(-(-len(ids) // block_size)))
    rows = []
    for start in range(0, len(ids), chunk):
        end = min(start + chunk, len(ids))
        meta = AttentionMetadata(
            slot_mapping=torch.arange(start, end, device=device),
            query_start_loc=[0, end - start],
            context_lens=[end],
            block_tables=[block_table],
            num_decodes=int(end - start == 1),
            block_size=block_size,
        )
        step = StepInputs(
            input_ids=torch.tensor(ids[start:end], device=device),
            positions=torch.arange(start, end, device=device),
            meta=meta,
            sample_index=list(range(end - start)),
        )
        rows.append(runner.run_model(step))
    return torch.cat(rows)
