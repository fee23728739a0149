"""What the gateway accepts: a POST body is parsed and checked against the OpenAI wire models before anything
else looks at it, so the cache, the router and the forwarder only ever see well-formed requests, and a bad
one is answered here with a 400 that names the field. The original dict is what travels on, not the model's
dump: the upstream sees exactly what the client sent, vendor extensions included."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tokenyard.wire.asgi import validation_message
from tokenyard.wire.openai import ChatCompletionRequest, CompletionRequest, SamplingFields

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODELS: dict[str, type[SamplingFields]] = {CHAT: ChatCompletionRequest, COMPLETIONS: CompletionRequest}
# Deeper than any OpenAI request (a tool's JSON Schema included) needs, shallow enough that nothing recursive
# downstream (the cache key's json.dumps, pydantic, the runtime's parser) is ever at risk.
MAX_JSON_DEPTH = 64


class InvalidRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class ParsedRequest:
    body: dict[str, Any]  # as the client sent it
    raw: bytes
    fields: SamplingFields  # the validated view, for the fields the gateway itself acts on

    @property
    def stream(self) -> bool:
        return self.fields.stream

    @property
    def include_usage(self) -> bool:
        return bool(self.fields.stream_options and self.fields.stream_options.include_usage)


def parse_request(raw: bytes, endpoint: str) -> ParsedRequest:
    """The request, or InvalidRequest saying what is wrong with it."""
    body = _json_object(raw)
    try:
        fields = MODELS[endpoint].model_validate(body)
    except ValidationError as error:
        raise InvalidRequest(*validation_message(error.errors(include_url=False))) from None
    return ParsedRequest(body, raw, fields)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except RecursionError:
        raise InvalidRequest(f"the body is nested too deeply; the limit is {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise InvalidRequest(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be a JSON object, not {type(body).__name__}")
    # Every nesting level needs a bracket: a body with few brackets needs no walk (the common case, for free).
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and json_depth(body) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"the body is nested too deeply; the limit is {MAX_JSON_DEPTH} levels")
    return body


def json_depth(value: object) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # past the limit the answer is already known
            pending.extend((child, depth + 1) for child in children)
    return deepest
