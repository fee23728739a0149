"""The engine: add_request / step / abort over the scheduler, the KV cache manager and the executor."""

from __future__ import annotations

import gc
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.engine.detokenizer import IncrementalDetokenizer
from tokenyard.runtime.engine.inputs import InputProcessor, TokenizedPrompt
from tokenyard.runtime.engine.kv_cache_manager import KVCacheManager
from tokenyard.runtime.engine.scheduler import Scheduler
from tokenyard.runtime.engine.sequence import Sequence
from tokenyard.runtime.executor.executor import Executor
from tokenyard.runtime.layers.sampler import Sampled, SamplingRow
from tokenyard.runtime.outputs import CompletionOutput, RequestOutput
from tokenyard.runtime.sampling_params import SamplingParams
from tokenyard.runtime.spec_decode.proposer import SpecDecodeStats, Speculator
from tokenyard.runtime.structured_output import StructuredOutputs
from tokenyard.runtime.validation import require

log = logging.getLogger(__name__)

Prompt = str | dict[str, Any] | list[int] | TokenizedPrompt


class StepFailed(RuntimeError):
    """A step raised; the requests it was serving were aborted and the engine can go on."""

    def __init__(self, request_ids: list[str], cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.request_ids = request_ids


@dataclass
class _Request:
    seq: Sequence
    detokenizer: IncrementalDetokenizer


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.executor = Executor(config)
        self.tokenizer = self.executor.loaded.tokenizer
        self.model_config = self.executor.loaded.config
        context = self.model_config.max_position_embeddings
        self.max_model_len = config.max_model_len or context
        require(
            self.max_model_len <= context,
            "max_model_len",
            self.max_model_len,
            f"<= the model's context length {context}",
        )
        if not config.enable_chunked_prefill:
            require(
                config.max_num_batched_tokens >= self.max_model_len,
                "max_num_batched_tokens",
                config.max_num_batched_tokens,
                f">= max_model_len ({self.max_model_len}) without chunked prefill",
            )
        num_blocks = self.executor.allocate_kv_cache()
        if num_blocks * config.block_size < self.max_model_len:
            raise ValueError(
                f"the KV cache holds {num_blocks * config.block_size} tokens, fewer than one sequence "
                f"of max_model_len={self.max_model_len}: raise the memory budget or lower max_model_len"
            )
        self.inputs = InputProcessor(self.tokenizer, self.model_config.vocab_size, self.max_model_len)
        self.structured_outputs = StructuredOutputs(self.tokenizer, self.model_config.vocab_size)
        self.kv_cache = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.kv_cache)
        self._requests: dict[str, _Request] = {}
        self._rng = random.Random(config.seed)
        self.num_prompt_tokens = 0  # of requests whose prefill completed
        self.num_generation_tokens = 0
        spec = config.speculative
        self.speculator = Speculator(config, spec, self.executor.loaded) if spec is not None else None
        self.spec_decode_stats = self.speculator.stats if self.speculator is not None else SpecDecodeStats()
        self.is_shut_down = False
        self._stepping: list[Sequence] = []  # the sequences the current step serves

    # --- requests -------------------------------------------------------------------------------
    def add_request(
        self, request_id: str, prompt: Prompt, params: SamplingParams | None = None, arrival_time: float | None = None
    ) -> None:
        """Validate and queue a request. Raises ValueError (naming the field and what is allowed) and
        changes nothing when the request is invalid."""
        params = params or SamplingParams()
        if self.is_shut_down:
            raise RuntimeError("this engine was shut down: it takes no more requests (start a new one)")
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        checked = self.inputs.prompt(prompt)
        self.inputs.check_params(params)
        token_ids = checked.token_ids
        room = self.max_model_len - len(token_ids)
        seq = Sequence(
            request_id, token_ids, params, min(params.max_tokens or room, room), checked.text, self._generator(params)
        )
        if arrival_time is not None:  # time.monotonic() when the request reached the server
            seq.arrival_time = arrival_time
        self.structured_outputs.start(seq)
        detokenizer = IncrementalDetokenizer(self.tokenizer, params.stop_strings, params.skip_special_tokens)
        self._requests[request_id] = _Request(seq, detokenizer)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> bool:
        """Stop a request at once and free its blocks. Returns False if it was not running or waiting."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        self.scheduler.finish(request.seq, "abort")
        if self.speculator is not None:
            self.speculator.release(request.seq)
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    def shutdown(self) -> None:
        """Abort the unfinished requests, stop tensor-parallel workers, and free the KV cache and the weights
        (on a GPU their memory goes back to the device, for another engine in this process). Idempotent."""
        if self.is_shut_down:
            return
        for request_id in list(self._requests):
            self.abort_request(request_id)
        self.is_shut_down = True
        self.executor.shutdown()
        if self.speculator is not None:
            self.speculator.shutdown()
        gc.collect()  # the model's modules refer to each other: only the collector frees them
        if self.executor.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- one step ------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Propose draft tokens, schedule, run the model once, and report every request that got new tokens.

        A step that raises aborts the requests it was serving (their blocks go back) and raises StepFailed
        naming them; the engine serves the others on. If even that cleanup fails, the error propagates as is:
        the engine's state can no longer be trusted."""
        self._stepping = list(self.scheduler.running)
        try:
            return self._step()
        except Exception as error:
            failed = [seq.request_id for seq in self._stepping if self.abort_request(seq.request_id)]
            log.exception("a step failed; aborted the %d requests it was serving", len(failed))
            raise StepFailed(failed, error) from error

    def _step(self) -> list[RequestOutput]:
        if self.speculator is not None:
            self.speculator.propose(self.scheduler)
        self.structured_outputs.draft(self.scheduler)
        batch = self.scheduler.schedule()
        if not batch:
            return []
        self._stepping = list(batch.seqs)
        finishing = [s for s, n in batch.items() if s.num_computed_tokens + n >= s.num_tokens]
        allowed, grammar_failed = self.structured_outputs.allowed_tokens(finishing)
        rows = [self._sampling_row(seq, mask) for seq, mask in zip(finishing, allowed, strict=True)]
        sampled = self.executor.execute(batch, rows)
        results = dict(zip(finishing, sampled, strict=True))
        now = time.monotonic()
        outputs = []
        for seq, num_tokens in batch.items():
            if seq not in results:  # a prefill chunk that does not end its prompt
                self.scheduler.account(seq, num_tokens)
                continue
            if seq.first_token_time is None:
                seq.first_token_time = now
                self.num_prompt_tokens += len(seq.prompt_token_ids)
            if seq in grammar_failed:  # its token was sampled without the mask: drop it, end the request
                self.scheduler.finish(seq, "error", grammar_failed[seq])
            else:
                self._accept(seq, num_tokens, results[seq])
            outputs.append(self._output(seq))
            if seq.is_finished:
                self._requests.pop(seq.request_id, None)
                if self.speculator is not None:
                    self.speculator.release(seq)
        return outputs

    def _accept(self, seq: Sequence, num_scheduled: int, sampled: list[Sampled]) -> None:
        """Append the accepted draft tokens and the target's own token, each checked for a stop in order
        (a stop cuts the run). The KV of rejected drafts is not counted as computed and its blocks go back."""
        num_drafts, num_accepted = seq.num_draft_tokens, len(sampled) - 1
        forced = self.structured_outputs.verified(seq, num_accepted)
        if self.speculator is not None and not forced:
            self.speculator.verified(num_drafts, num_accepted)
        seq.keep_drafts(0)
        finish = None
        for result in sampled:
            seq.append_token(result.token_id, result.logprobs)
            self.num_generation_tokens += 1
            finish = self._finish_reason(seq, result.token_id)
            ended = None if seq.grammar is None else self.structured_outputs.accept(seq, result.token_id)
            if ended is not None and (finish is None or finish[0] == "length" or ended[0] == "error"):
                finish = ended
            if finish is not None:
                break
        computed = num_scheduled - (num_drafts - num_accepted)
        self.scheduler.account(seq, min(computed, seq.num_tokens - seq.num_computed_tokens))
        if finish is not None:
            self.scheduler.finish(seq, *finish)
        elif num_drafts > num_accepted:
            self.kv_cache.release_tail(seq)

    def _finish_reason(self, seq: Sequence, token_id: int) -> tuple[str, int | str | None] | None:
        params = seq.params
        stop_string = self._requests[seq.request_id].detokenizer.add(token_id)
        if stop_string is not None:
            return "stop", stop_string
        if token_id in params.stop_token_ids or (not params.ignore_eos and token_id in self.model_config.eos_token_ids):
            return "stop", token_id
        if len(seq.output_token_ids) >= seq.max_tokens:
            return "length", None
        return None

    def _sampling_row(self, seq: Sequence, allowed_tokens: torch.Tensor | None) -> SamplingRow:
        banned: list[int] = []
        if len(seq.output_token_ids) < seq.params.min_tokens:
            banned = list(seq.params.stop_token_ids) + (
                [] if seq.params.ignore_eos else self.model_config.eos_token_ids
            )
        return SamplingRow(
            seq.params,
            seq.generator,
            seq.prompt_token_ids,
            seq.output_token_ids,
            banned,
            seq.draft_token_ids,
            seq.draft_probs,
            allowed_tokens,
        )

    def _generator(self, params: SamplingParams) -> torch.Generator | None:
        if params.greedy:
            return None
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        return torch.Generator(self.executor.device).manual_seed(seed)

    def _output(self, seq: Sequence) -> RequestOutput:
        detokenizer = self._requests[seq.request_id].detokenizer
        completion = CompletionOutput(
            index=0,
            text=detokenizer.visible_text(seq.is_finished),
            token_ids=list(seq.output_token_ids),
            logprobs=list(seq.logprobs) if seq.params.logprobs is not None else None,
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
        )
        return RequestOutput(
            seq.request_id,
            seq.prompt,
            seq.prompt_token_ids,
            [completion],
            seq.is_finished,
            seq.num_cached_tokens,
            _timings(seq),
        )


def _timings(seq: Sequence) -> dict[str, float]:
    times = {"arrival_time": seq.arrival_time}
    for name in ("first_scheduled_time", "first_token_time"):
        if getattr(seq, name) is not None:
            times[name] = getattr(seq, name)
    return times
