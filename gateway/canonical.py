"""What makes two requests the same request: the body with OpenAI's defaults filled in (an absent
temperature is 1.0, not 0), minus what cannot change the output (streaming, user), with its structured-output
constraint in one form whichever field carried it (``constraint``). The exact cache keys on all of it; the
semantic cache scopes on all of it but the last user turn."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError

from tokenyard.gateway.inputs import MAX_JSON_DEPTH, json_depth
from tokenyard.wire.openai import SamplingFields

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
    "logit_bias": None,
    "echo": False,
}
# Fields that change how the answer travels, not what it is.
TRANSPORT = {"stream", "stream_options", "user", "model"}
# The fields that carry a structured-output constraint (a request has at most one). In the canonical request they
# are replaced by one entry, under the first name: no client field can then be mistaken for it.
CONSTRAINT_FIELDS = (
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
)


def canonical_request(body: dict[str, Any], endpoint: str) -> dict[str, Any]:
    canonical = {key: value for key, value in body.items() if key not in TRANSPORT and key not in CONSTRAINT_FIELDS}
    for key, default in DEFAULTS.items():
        canonical.setdefault(key, default)
    canonical[CONSTRAINT_FIELDS[0]] = constraint(body)
    if "max_completion_tokens" in canonical and canonical["max_completion_tokens"] is not None:
        canonical["max_tokens"] = canonical.pop("max_completion_tokens")
    if isinstance(canonical.get("stop"), str):
        canonical["stop"] = [canonical["stop"]]
    for number in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "min_p", "repetition_penalty"):
        if isinstance(canonical.get(number), int):
            canonical[number] = float(canonical[number])
    canonical["endpoint"] = endpoint
    return canonical


def constraint(body: dict[str, Any]) -> list[str] | None:
    """The request's structured-output constraint as the runtime compiles it, ``[kind, value as JSON text]`` (kind:
    json, json_object, regex, choice or grammar), or None for none; ``response_format: {"type": "text"}`` is none.

    Spellings of one constraint share a form: ``guided_X`` is ``structured_outputs.X``; response_format's
    json_object is ``structured_outputs.json_object``, and its json_schema is its schema alone (the runtime
    generates under the schema: its name, description and strict change nothing); a schema sent as JSON text
    is that schema. Nothing else is normalised: a schema's key order is kept (properties are generated in the
    order it lists them), as are a choice's order and a regex's or grammar's text. The value is JSON text so
    that cache_key's sorting of keys cannot reach inside it."""
    given = {name: body[name] for name in CONSTRAINT_FIELDS if body.get(name) is not None}
    if not given:
        return None
    try:
        found = SamplingFields.model_validate(given).constraint()
    except ValidationError:  # not a request the gateway forwards (inputs.py refuses it): kept as it came
        return ["unchecked", _text(given)]
    if found is None:
        return None
    value = _parsed(found.value) if found.kind == "json" else found.value
    return [found.kind, _text(value)]


def _parsed(schema: object) -> object:
    """A schema sent as JSON text, parsed as the runtime parses it. Text that is not a JSON object, or one nested
    deeper than any body may be, stays text (the runtime refuses it)."""
    if not isinstance(schema, str):
        return schema  # within the body's depth limit (inputs.py)
    try:
        parsed = json.loads(schema)
    except (ValueError, RecursionError):
        return schema
    return parsed if isinstance(parsed, dict) and json_depth(parsed) <= MAX_JSON_DEPTH else schema


def _text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


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
