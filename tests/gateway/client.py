"""Calling a gateway under test the way an application would, and reading what it answered."""

from __future__ import annotations

import json

import httpx

from .conftest import TENANTS

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def ask(
    gateway,
    tenant: str = "acme",
    stream: bool = False,
    system: str | None = None,
    headers: dict | None = None,
    **fields,
) -> httpx.Response:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": fields.pop("content", "Name a fruit.")})
    body = {"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0, **fields}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        timeout=120,
        headers={"Authorization": f"Bearer {TENANTS[tenant]}", **(headers or {})},
    )


def outcome(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-tokenyard-cache"]


def answer(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


def sse_text_and_usage(response: httpx.Response) -> tuple[str, dict, bool]:
    text, usage, done = [], None, False
    for line in response.text.splitlines():
        if line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            for choice in event["choices"]:
                text.append(choice["delta"].get("content") or "")
    return "".join(text), usage, done


def metric(gateway, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(f"{gateway.url}/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
