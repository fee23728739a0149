"""The one input path: a prompt or a chat becomes validated token ids, and sampling settings are checked
against the model, before anything reaches the scheduler. Used by ``LLM``, the server and ``add_request``.

Tokenising is the slow part of a request that the engine does not do: the server calls this off its event
loop. A text far longer than the context is refused after tokenising a bounded prefix of it, so a 5 MB
body costs what a full-context prompt costs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from tokenyard.runtime.sampling_params import SamplingParams
from tokenyard.runtime.validation import require

# A prompt of this many characters per context token is tokenised a prefix at a time: English averages ~4.
PREFIX_CHARS_PER_TOKEN = 8
PREFIX_MARGIN_TOKENS = 64  # a word cut at the prefix's end tokenises into at most a few more pieces


class PromptTooLong(ValueError):
    pass


@dataclass(frozen=True)
class TokenizedPrompt:
    text: str | None
    token_ids: list[int]


class InputProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        # The Rust tokenizer itself: thread-safe, and it releases the GIL while it encodes.
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self.vocab_size, self.max_model_len = vocab_size, max_model_len
        self._max_token_chars = max((len(t) for t in tokenizer.get_vocab()), default=1)

    # --- prompts ------------------------------------------------------------------------------------
    def prompt(self, prompt: str | dict[str, Any] | list[int] | TokenizedPrompt) -> TokenizedPrompt:
        """A string (special tokens added as the model's tokenizer does), token ids, or vLLM's dict form."""
        if isinstance(prompt, TokenizedPrompt):
            return self.checked(prompt)
        if isinstance(prompt, str):
            return self.checked(TokenizedPrompt(prompt, self.encode(prompt, add_special_tokens=True)))
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return self.checked(TokenizedPrompt(prompt.get("prompt"), list(prompt["prompt_token_ids"])))
        if isinstance(prompt, dict) and "prompt" in prompt:
            return self.prompt(prompt["prompt"])
        if isinstance(prompt, list):
            return self.checked(TokenizedPrompt(None, list(prompt)))
        raise ValueError("prompt must be a string, a list of token ids, or a dict with 'prompt' or 'prompt_token_ids'")

    def chat(
        self, messages: list[dict[str, Any]], chat_template: str | None = None, add_generation_prompt: bool = True
    ) -> TokenizedPrompt:
        """The chat template applied (it places the special tokens), then tokenised and checked."""
        text = self.render_chat(messages, chat_template, add_generation_prompt)
        return self.checked(TokenizedPrompt(text, self.encode(text, add_special_tokens=False)))

    def render_chat(
        self, messages: list[dict[str, Any]], chat_template: str | None, add_generation_prompt: bool
    ) -> str:
        if chat_template is None and not self.tokenizer.chat_template:
            raise ValueError("the model has no chat template: pass one (chat_template=...)")
        # The template puts every message's text in the prompt: refuse what cannot fit before rendering it.
        self._check_characters(sum(len(m.get("content") or "") for m in messages if isinstance(m.get("content"), str)))
        return str(
            self.tokenizer.apply_chat_template(
                messages, chat_template=chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids; raises PromptTooLong for a text that cannot fit, without tokenising all of it."""
        if len(text) > self.max_model_len * self._max_token_chars:  # even the longest tokens cannot hold it
            raise PromptTooLong(
                self._too_long(f"{len(text)} characters: at least {len(text) // self._max_token_chars}")
            )
        prefix_chars = self.max_model_len * PREFIX_CHARS_PER_TOKEN
        if len(text) > prefix_chars:
            counted = len(self._encode(text[:prefix_chars], add_special_tokens))
            if counted >= self.max_model_len + PREFIX_MARGIN_TOKENS:
                raise PromptTooLong(self._too_long(f"more than {counted - PREFIX_MARGIN_TOKENS}"))
        return self._encode(text, add_special_tokens)

    def _check_characters(self, characters: int) -> None:
        if characters > self.max_model_len * self._max_token_chars:  # even the longest tokens cannot hold them
            raise PromptTooLong(
                self._too_long(f"{characters} characters: at least {characters // self._max_token_chars}")
            )

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        if self._backend is not None:
            ids: list[int] = self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        else:
            ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return ids

    def checked(self, prompt: TokenizedPrompt) -> TokenizedPrompt:
        ids = prompt.token_ids
        require(len(ids) > 0, "prompt", "''", "at least one token (the prompt is empty)")
        if len(ids) >= self.max_model_len:
            raise PromptTooLong(self._too_long(str(len(ids))))
        bad = next((t for t in ids if not (isinstance(t, int) and 0 <= t < self.vocab_size)), None)
        require(bad is None, "prompt_token_ids", bad, f"token ids in [0, {self.vocab_size})")
        return prompt

    def _too_long(self, tokens: str) -> str:
        return (
            f"the prompt has {tokens} tokens; it must be shorter than max_model_len={self.max_model_len} tokens "
            "(at least one token of output must fit)"
        )

    # --- sampling settings ----------------------------------------------------------------------------
    def check_params(self, params: SamplingParams) -> None:
        """What only the model can judge: token ids within its vocabulary."""
        vocab = self.vocab_size
        bad = next((t for t in params.stop_token_ids if not 0 <= t < vocab), None)
        require(bad is None, "stop_token_ids", bad, f"token ids in [0, {vocab})")
        bad = next((t for t in params.logit_bias if not 0 <= t < vocab), None)
        require(bad is None, "logit_bias", bad, f"keyed by token ids in [0, {vocab})")

    def check_room(self, params: SamplingParams, prompt_len: int) -> None:
        """The server's rule (OpenAI's): max_tokens must fit beside the prompt. Offline, it is capped instead."""
        room = self.max_model_len - prompt_len
        if params.max_tokens is not None and params.max_tokens > room:
            raise PromptTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_len + params.max_tokens} tokens ({prompt_len} in the prompt, {params.max_tokens} for the "
                "completion). Please reduce the prompt or max_tokens."
            )
