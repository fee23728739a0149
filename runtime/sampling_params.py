"""Per-request sampling settings, shaped like vLLM's ``SamplingParams``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from tokenyard.runtime.validation import InvalidValue, require

MAX_LOGPROBS = 20
GREEDY_BELOW_TEMPERATURE = 1e-5  # as vLLM: dividing logits by less overflows, and the argmax is what it means
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1  # torch.Generator.manual_seed's range
MAX_SCHEMA_DEPTH = 64  # nesting of a JSON Schema's objects and arrays; real-world schemas stay under 20


@dataclass(frozen=True)
class StructuredOutputsParams:
    """One constraint on the answer's text, as vLLM's ``structured_outputs`` names them: a JSON Schema (``json``, a
    dict or its JSON text), any JSON object (``json_object=True``), a ``regex``, one of a ``choice`` of strings, or
    a Lark / GBNF ``grammar``. The checks here need no tokenizer; compiling (structured_output/) checks the rest."""

    json: dict[str, Any] | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def __post_init__(self) -> None:
        given = [f.name for f in fields(self) if getattr(self, f.name) not in (None, False)]
        require(
            len(given) == 1,
            "structured_outputs",
            given or None,
            "exactly one of json, regex, choice, grammar, json_object",
        )
        if isinstance(self.json, str):
            try:
                object.__setattr__(self, "json", json.loads(self.json))
            except (ValueError, RecursionError) as error:
                reason = str(error) if isinstance(error, ValueError) else f"nested at most {MAX_SCHEMA_DEPTH} levels"
                raise InvalidValue("structured_outputs.json", self.json[:200], f"a JSON Schema ({reason})") from None
        require(
            self.json is None or isinstance(self.json, dict),
            "structured_outputs.json",
            self.json,
            "a JSON Schema object",
        )
        require(
            _depth(self.json) <= MAX_SCHEMA_DEPTH,
            "structured_outputs.json",
            "(a schema nested deeper)",
            f"a JSON Schema nested at most {MAX_SCHEMA_DEPTH} levels",
        )
        require(
            self.regex is None or (isinstance(self.regex, str) and self.regex),
            "structured_outputs.regex",
            self.regex,
            "a non-empty regular expression",
        )
        require(
            self.grammar is None or (isinstance(self.grammar, str) and self.grammar.strip()),
            "structured_outputs.grammar",
            self.grammar,
            "a non-empty Lark or GBNF grammar",
        )
        if self.choice is not None:
            require(
                isinstance(self.choice, list) and len(self.choice) > 0,
                "structured_outputs.choice",
                self.choice,
                "a non-empty list of strings",
            )
            require(
                all(isinstance(c, str) and c for c in self.choice),
                "structured_outputs.choice",
                self.choice,
                "non-empty strings",
            )
        require(
            self.json_object in (None, True), "structured_outputs.json_object", self.json_object, "true (or absent)"
        )

    @property
    def kind(self) -> str:
        """Which constraint this is: json, json_object, regex, choice or grammar (a metrics label)."""
        return next(f.name for f in fields(self) if getattr(self, f.name) not in (None, False))

    @property
    def key(self) -> str:
        """The compiled-grammar cache's key. A schema's key order is kept: the order of its properties is the order
        the answer writes them in."""
        return self.kind + ":" + json.dumps(getattr(self, self.kind), separators=(",", ":"))


def _depth(value: object) -> int:
    """How deeply dicts and lists nest in ``value``, found without recursion (a hostile schema may nest 10,000)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_SCHEMA_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    max_tokens: int | None = 16  # None: up to max_model_len
    min_tokens: int = 0
    logprobs: int | None = None  # number of top logprobs per token besides the chosen one
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit, in [-100, 100]
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None  # a dict of its fields is taken too

    @property
    def stop_strings(self) -> list[str]:
        """``stop`` as the list it is once constructed (it may be given as one string)."""
        return self.stop if isinstance(self.stop, list) else []

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.logit_bias = dict(self.logit_bias or {})
        require(self.n == 1, "n", self.n, "1 (n > 1 is not supported yet)")
        require(self.temperature >= 0, "temperature", self.temperature, ">= 0")
        require(0 < self.top_p <= 1, "top_p", self.top_p, "in (0, 1]")
        require(self.top_k == -1 or self.top_k >= 0, "top_k", self.top_k, "-1 or 0 (disabled) or >= 1")
        require(0 <= self.min_p <= 1, "min_p", self.min_p, "in [0, 1]")
        require(-2 <= self.presence_penalty <= 2, "presence_penalty", self.presence_penalty, "in [-2, 2]")
        require(-2 <= self.frequency_penalty <= 2, "frequency_penalty", self.frequency_penalty, "in [-2, 2]")
        require(self.repetition_penalty > 0, "repetition_penalty", self.repetition_penalty, "> 0")
        require(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", self.max_tokens, ">= 1")
        require(self.min_tokens >= 0, "min_tokens", self.min_tokens, ">= 0")
        require(
            self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
            "logprobs",
            self.logprobs,
            f"in [0, {MAX_LOGPROBS}]",
        )
        require(all(isinstance(s, str) and s for s in self.stop), "stop", self.stop, "non-empty strings")
        require(
            self.seed is None or MIN_SEED <= self.seed <= MAX_SEED, "seed", self.seed, f"in [{MIN_SEED}, {MAX_SEED}]"
        )
        require(
            all(-100 <= bias <= 100 for bias in self.logit_bias.values()),
            "logit_bias",
            self.logit_bias,
            "biases in [-100, 100]",
        )
        if self.top_k == -1:
            self.top_k = 0
        if isinstance(self.structured_outputs, dict):
            names = {f.name for f in fields(StructuredOutputsParams)}
            unknown = sorted(set(self.structured_outputs) - names)
            require(not unknown, "structured_outputs", unknown, f"keys among {sorted(names)}")
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        require(
            self.structured_outputs is None or isinstance(self.structured_outputs, StructuredOutputsParams),
            "structured_outputs",
            self.structured_outputs,
            "a StructuredOutputsParams (or a dict of its fields)",
        )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1
