"""``--speculative-config``: vLLM's JSON shape, checked key by key so a bad value says what is allowed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenyard.runtime.validation import require

METHODS = ("ngram", "draft_model")
# Measured on SmolLM2-135M, CPU, input-grounded prompts (benchmarks/spec_decode.py).
DEFAULT_LOOKUP_MIN = 2
DEFAULT_LOOKUP_MAX = 4
DEFAULT_RECENT_OUTPUTS = 128  # finished requests whose outputs n-gram lookup also searches


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str
    num_speculative_tokens: int
    model: str | None = None  # the draft model (draft_model only)
    quantization: str | None = None  # the draft's own, e.g. an int4 "self-draft" of the target
    dtype: str = "auto"  # the draft's own
    prompt_lookup_min: int = DEFAULT_LOOKUP_MIN
    prompt_lookup_max: int = DEFAULT_LOOKUP_MAX
    lookup_recent_outputs: int = DEFAULT_RECENT_OUTPUTS  # ngram only; 0 searches the sequence alone (vLLM's)
    disable_by_batch_size: int | None = None  # no speculation while more requests than this are running or waiting

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SpeculativeConfig:
        require(isinstance(raw, dict), "speculative_config", raw, "a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        require(not unknown, "speculative_config", unknown, f"made of the keys {', '.join(sorted(known))}")
        method: Any = raw.get("method")  # checked below
        require(method in METHODS, "speculative_config.method", method, f"one of {', '.join(METHODS)}")
        k: Any = raw.get("num_speculative_tokens")
        require(isinstance(k, int) and k >= 1, "speculative_config.num_speculative_tokens", k, "an integer >= 1")
        lookup_min = raw.get("prompt_lookup_min", raw.get("prompt_lookup_max", DEFAULT_LOOKUP_MIN))
        lookup_max = raw.get("prompt_lookup_max", max(lookup_min, DEFAULT_LOOKUP_MAX))
        for key, value in (("prompt_lookup_min", lookup_min), ("prompt_lookup_max", lookup_max)):
            require(isinstance(value, int) and value >= 1, f"speculative_config.{key}", value, "an integer >= 1")
        require(
            lookup_min <= lookup_max,
            "speculative_config.prompt_lookup_min",
            lookup_min,
            f"<= prompt_lookup_max ({lookup_max})",
        )
        recent = raw.get("lookup_recent_outputs", DEFAULT_RECENT_OUTPUTS)
        require(
            isinstance(recent, int) and recent >= 0,
            "speculative_config.lookup_recent_outputs",
            recent,
            "an integer >= 0 (0: look up in the sequence only)",
        )
        model = raw.get("model")
        if method == "draft_model":
            require(bool(model), "speculative_config.model", model, "the draft model's path or id (method draft_model)")
        else:
            require(model is None, "speculative_config.model", model, "absent for method ngram (it needs no model)")
        limit = raw.get("disable_by_batch_size")
        if limit is not None:
            require(isinstance(limit, int) and limit >= 1, "speculative_config.disable_by_batch_size", limit, ">= 1")
        return cls(
            method,
            k,
            model,
            raw.get("quantization"),
            raw.get("dtype", "auto"),
            lookup_min,
            lookup_max,
            recent,
            limit,
        )
