"""The offline API, shaped like vLLM's: ``LLM(model=...).generate(prompts, sampling_params)``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import fields

from tokenyard.runtime.config import DEFAULT_MODEL, EngineConfig
from tokenyard.runtime.engine.inputs import TokenizedPrompt
from tokenyard.runtime.engine.llm_engine import LLMEngine, Prompt
from tokenyard.runtime.outputs import RequestOutput
from tokenyard.runtime.sampling_params import SamplingParams

Conversation = list[dict]


class LLM:
    def __init__(self, model: str = DEFAULT_MODEL, **engine_args: object) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **engine_args))
        self._ids = itertools.count()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the engine and free its memory (the GPU's too) and its tensor-parallel workers; ``with LLM(...) as
        llm:`` does it on leaving the block. Needed before another tensor-parallel engine starts in this process."""
        self.engine.shutdown()

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLM:
        return cls(**{field.name: getattr(config, field.name) for field in fields(config) if field.init})

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; results come back in the order of the prompts. An invalid
        prompt raises ValueError (saying which one) before any work starts."""
        if isinstance(prompts, (str, dict, TokenizedPrompt)) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]
        params = _per_prompt(sampling_params, len(prompts))
        tokenized = []
        for index, prompt in enumerate(prompts):
            try:
                tokenized.append(self.engine.inputs.prompt(prompt))
            except ValueError as error:
                raise ValueError(f"prompt {index}: {error}") from None
        request_ids = [f"offline-{next(self._ids)}" for _ in prompts]
        for index, (request_id, prompt, p) in enumerate(zip(request_ids, tokenized, params, strict=True)):
            try:
                self.engine.add_request(request_id, prompt, p)
            except ValueError as error:  # e.g. a constraint that does not compile: nothing of this call runs
                for added in request_ids[:index]:
                    self.engine.abort_request(added)
                raise ValueError(f"prompt {index}: {error}") from None
        return self._run(request_ids)

    def chat(
        self,
        messages: Conversation | Sequence[Conversation],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Apply the model's chat template (with the assistant's generation prompt) and generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.engine.inputs.chat(c, chat_template, add_generation_prompt) for c in conversations]
        return self.generate(prompts, sampling_params)

    def _run(self, request_ids: list[str]) -> list[RequestOutput]:
        pending = set(request_ids)
        finished: dict[str, RequestOutput] = {}
        while pending:
            for output in self.engine.step():
                if output.finished and output.request_id in pending:
                    finished[output.request_id] = output
                    pending.discard(output.request_id)
        return [finished[r] for r in request_ids]


def _per_prompt(params: SamplingParams | Sequence[SamplingParams] | None, count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * count
    if isinstance(params, SamplingParams):
        return [params] * count
    if len(params) != count:
        raise ValueError(f"sampling_params has {len(params)} entries for {count} prompts: give one, or one per prompt")
    return list(params)
