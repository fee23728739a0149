"""A draft model proposes by decoding k tokens itself. It is any model sharing the target's tokenizer
(a smaller sibling, or the target itself at a cheaper dtype/quantization: a "self-draft"), loaded by our
loaders, with its own KV cache. It runs in the engine's process only (rank 0 under tensor parallelism).

Each request has a shadow ``Sequence`` in the draft's own block pool. Before proposing, the shadow is
synced with the request: its tokens are cut back to the longest prefix they share with the request's (the
drafts the target rejected fall away, with their KV) and the request's new tokens are appended; the first
draft forward computes whatever the shadow is missing, then one token per forward."""

from __future__ import annotations

from dataclasses import replace

import torch

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.engine.kv_cache_manager import KVCacheManager
from tokenyard.runtime.engine.model_runner import ModelRunner
from tokenyard.runtime.engine.scheduler import ScheduledBatch
from tokenyard.runtime.engine.sequence import Sequence
from tokenyard.runtime.layers.sampler import draw, filtered_probs
from tokenyard.runtime.loaders import LoadedModel
from tokenyard.runtime.spec_decode.config import SpeculativeConfig
from tokenyard.runtime.validation import InvalidValue, require


class DraftModelProposer:
    # Drafting for a prompt's last step would run the draft's prefill before the target's, adding to TTFT.
    proposes_before_first_token = False

    def __init__(self, config: EngineConfig, spec: SpeculativeConfig, target: LoadedModel) -> None:
        if spec.model is None:
            raise InvalidValue("speculative_config.model", None, "the draft model's path or id (method draft_model)")
        draft_config = replace(
            config,
            model=spec.model,
            dtype=spec.dtype,
            quantization=spec.quantization,
            tensor_parallel_size=1,
            speculative_config=None,
            enable_prefix_caching=False,
        )
        self.runner = ModelRunner(draft_config)
        check_compatible(self.runner.loaded, target)
        num_blocks = self.runner.kv_blocks_that_fit()
        self.runner.allocate_kv_cache(num_blocks)
        self.kv_cache = KVCacheManager(num_blocks, config.block_size, enable_prefix_caching=False)
        self._shadows: dict[str, Sequence] = {}

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], limits: list[int]) -> None:
        by_id = {seq.request_id: seq for seq, limit in zip(seqs, limits, strict=True) if limit}
        limit_of = dict(zip((s.request_id for s in seqs), limits, strict=True))
        shadows = [self._synced_shadow(seq) for seq in by_id.values()]
        probs: dict[str, list[torch.Tensor]] = {request_id: [] for request_id in by_id}
        for seq in by_id.values():
            seq.draft_token_ids = []
        while shadows:
            batch = ScheduledBatch()
            for shadow in shadows:
                if self.kv_cache.allocate(shadow, shadow.num_uncomputed_tokens):  # a full pool: fewer drafts
                    batch.add(shadow, shadow.num_uncomputed_tokens)
            logits = self.runner.run_model(self.runner.prepare(batch)) if batch else None
            if logits is None:  # no shadow had room in the draft's pool
                break
            for row, (shadow, num_tokens) in enumerate(batch.items()):
                seq = by_id[shadow.request_id]
                shadow.num_computed_tokens += num_tokens
                token, q = self._pick(logits[row], seq)
                shadow.output_token_ids.append(token)
                seq.draft_token_ids.append(token)
                if q is not None:
                    probs[seq.request_id].append(q)
            shadows = [s for s in batch.seqs if len(by_id[s.request_id].draft_token_ids) < limit_of[s.request_id]]
        for request_id, qs in probs.items():
            by_id[request_id].draft_probs = torch.stack(qs) if qs else None

    def _pick(self, logits: torch.Tensor, seq: Sequence) -> tuple[int, torch.Tensor | None]:
        """Greedy requests get the draft's argmax; sampled ones a draw from the draft's own q (which the
        rejection test needs), with the request's RNG."""
        if seq.params.greedy:
            return int(logits.argmax()), None
        q = filtered_probs(logits[None], [seq.params])[0]
        q = q / q.sum()
        return draw(q, seq.generator), q

    def _synced_shadow(self, seq: Sequence) -> Sequence:
        shadow = self._shadows.get(seq.request_id)
        if shadow is None:
            shadow = Sequence(seq.request_id, list(seq.prompt_token_ids), seq.params, max_tokens=0)
            self._shadows[seq.request_id] = shadow
        same = _common_prefix(shadow.output_token_ids, seq.output_token_ids)
        del shadow.output_token_ids[same:]
        shadow.output_token_ids += seq.output_token_ids[same:]
        # at least the last token is recomputed: its logits give the first draft
        shadow.num_computed_tokens = min(
            shadow.num_computed_tokens, len(shadow.prompt_token_ids) + same, shadow.num_tokens - 1
        )
        self.kv_cache.release_tail(shadow)
        return shadow

    def release(self, seq: Sequence) -> None:
        shadow = self._shadows.pop(seq.request_id, None)
        if shadow is not None:
            self.kv_cache.free(shadow)

    def shutdown(self) -> None:
        self._shadows.clear()
        self.runner.shutdown()


def check_compatible(draft: LoadedModel, target: LoadedModel) -> None:
    """Draft and target must speak the same tokens: the target verifies the draft's token ids as they are."""
    require(
        draft.config.vocab_size == target.config.vocab_size,
        "speculative_config.model",
        draft.source.name,
        f"a model with the target's vocabulary size {target.config.vocab_size} (it has {draft.config.vocab_size})",
    )
    require(
        draft.tokenizer.get_vocab() == target.tokenizer.get_vocab(),
        "speculative_config.model",
        draft.source.name,
        "a model with the target's tokenizer (its vocabulary maps tokens to other ids)",
    )


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):  # up to the shorter one
        if x != y:
            break
        n += 1
    return n
