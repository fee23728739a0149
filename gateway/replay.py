"""Streams and stored responses: a completed upstream stream folds into the same shape as a non-streamed
response (so there is one kind of cache entry), and a cached response replays as a valid SSE stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any


def aggregate_stream(lines: list[str], endpoint: str) -> dict[str, Any] | None:
    """The non-streamed response a finished stream amounts to, or None if it did not finish cleanly."""
    events = []
    for line in lines:
        if line == "data: [DONE]":
            break
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
    else:
        return None  # cut off before [DONE]
    if not events or any("error" in e for e in events):
        return None
    text, finish_reason, usage = [], None, None
    for event in events:
        usage = event.get("usage") or usage
        for choice in event.get("choices") or []:
            text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
            finish_reason = choice.get("finish_reason") or finish_reason
    if finish_reason is None or usage is None:
        return None
    first = events[0]
    body = "".join(text)
    if endpoint == "/v1/chat/completions":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": body},
            "finish_reason": finish_reason,
            "logprobs": None,
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": body, "finish_reason": finish_reason, "logprobs": None}
        kind = "text_completion"
    return {
        "id": first.get("id"),
        "object": kind,
        "created": first.get("created"),
        "model": first.get("model"),
        "choices": [choice],
        "usage": usage,
    }


async def replay_stream(response: dict[str, Any], include_usage: bool) -> AsyncIterator[bytes]:
    chat = response.get("object") == "chat.completion"
    choice = response["choices"][0]
    envelope = {
        "id": response.get("id"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": response.get("created"),
        "model": response.get("model"),
    }
    if chat:
        first = {
            "index": 0,
            "delta": {"role": "assistant", "content": choice["message"]["content"]},
            "finish_reason": None,
            "logprobs": None,
        }
        last = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"], "logprobs": None}
    else:
        first = {"index": 0, "text": choice["text"], "finish_reason": None, "logprobs": None}
        last = {"index": 0, "text": "", "finish_reason": choice["finish_reason"], "logprobs": None}
    events = [{**envelope, "choices": [first]}, {**envelope, "choices": [last]}]
    if include_usage:
        events.append({**envelope, "choices": [], "usage": response.get("usage")})
    for event in events:
        yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
    yield b"data: [DONE]\n\n"
