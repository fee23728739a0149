"""What makes two requests the same request: the body with OpenAI's defaults filled in (an absent
temperature is 1.0, not 0), minus what cannot change the output (streaming, user)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# OpenAI's documented defaults for fields that change the output.
DEFAULTS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "n": 1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "max_tokens": None,
    "stop": None,
    "seed": None,
    "logprobs": None,
    "top_logprobs": None,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "ignore_eos": False,
    "min_tokens": 0,
    "response_format": None,
    "logit_bias": None,
    "echo": False,
}
# Fields that change how the answer travels, not what it is.
TRANSPORT = {"stream", "stream_options", "user", "model"}


def canonical_request(body: dict[str, Any], endpoint: str) -> dict[str, Any]:
    canonical = {key: value for key, value in body.items() if key not in TRANSPORT}
    for key, default in DEFAULTS.items():
        canonical.setdefault(key, default)
    if "max_completion_tokens" in canonical and canonical["max_completion_tokens"] is not None:
        canonical["max_tokens"] = canonical.pop("max_completion_tokens")
    if isinstance(canonical.get("stop"), str):
        canonical["stop"] = [canonical["stop"]]
    for number in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p", "repetition_penalty"):
        if isinstance(canonical.get(number), int):
            canonical[number] = float(canonical[number])
    canonical["endpoint"] = endpoint
    return canonical


def is_deterministic(body: dict[str, Any]) -> bool:
    """Greedy, or sampled with a fixed seed: the same request gives the same answer."""
    return body.get("temperature", 1.0) == 0 or body.get("seed") is not None


def cache_key(tenant: str, model: str, canonical: dict[str, Any]) -> str:
    payload = json.dumps(
        {"tenant": tenant, "model": model, "request": canonical},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return "tokenyard:exact:" + hashlib.sha256(payload.encode()).hexdigest()
