"""Asks the endpoint under test every testset question over ``/v1/chat/completions``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
from tqdm.auto import tqdm

from .testset import Item

RETRY_STATUSES = (429, 503)  # overload: the server says when to come back (Retry-After)
MAX_RETRIES = 5
SEED = 1234  # fixed so a server that honours `seed` answers the same way on every run


class EndpointError(RuntimeError):
    """The endpoint answered no item: the run must fail, never produce results that look like a pass."""


@dataclass
class Answer:
    text: str | None
    latency_ms: float | None
    error: str | None


def messages(item: Item) -> list[dict[str, str]]:
    system = [{"role": "system", "content": item.system_prompt}] if item.system_prompt else []
    if item.contexts:
        # Retrieved passages go in the user turn, the way a RAG app sends them.
        passages = "\n\n".join(f"[{n}] {text}" for n, text in enumerate(item.contexts, start=1))
        user = f"Answer the question using only these passages.\n\n{passages}\n\nQuestion: {item.question}"
    else:
        user = item.question
    return [*system, {"role": "user", "content": user}]


async def ask(client: httpx.AsyncClient, model: str, item: Item, max_tokens: int) -> Answer:
    body = {"model": model, "messages": messages(item), "temperature": 0, "seed": SEED, "max_tokens": max_tokens}
    for attempt in range(MAX_RETRIES + 1):
        start = time.perf_counter()
        try:
            response = await client.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as error:
            return Answer(None, None, f"{type(error).__name__}: {error or 'no detail'}")
        latency_ms = (time.perf_counter() - start) * 1000
        if response.status_code in RETRY_STATUSES and attempt < MAX_RETRIES:
            await asyncio.sleep(_retry_after(response, attempt))
            continue
        if response.status_code != 200:
            return Answer(None, latency_ms, f"HTTP {response.status_code}: {response.text[:300]}")
        try:
            text = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return Answer(None, latency_ms, f"not a chat completion: {response.text[:300]}")
        return Answer(text or "", latency_ms, None)
    raise AssertionError("unreachable: the last attempt returns")


def api_root(base_url: str) -> str:
    """Accepts both ``http://host:8000`` and the OpenAI-style ``http://host:8000/v1``."""
    return base_url.rstrip("/").removesuffix("/v1")


def _retry_after(response: httpx.Response, attempt: int) -> float:
    try:
        return min(float(response.headers["retry-after"]), 60.0)
    except (KeyError, ValueError):
        return min(2.0**attempt, 30.0)


async def ask_all(
    base_url: str, model: str, items: list[Item], concurrency: int, max_tokens: int, timeout: float
) -> list[Answer]:
    """Answers in item order; at most ``concurrency`` requests in flight."""
    limit = asyncio.Semaphore(concurrency)
    progress = tqdm(total=len(items), desc="answering", unit="item")

    async def one(client: httpx.AsyncClient, item: Item) -> Answer:
        async with limit:
            answer = await ask(client, model, item, max_tokens)
        progress.update()
        return answer

    async with httpx.AsyncClient(base_url=api_root(base_url), timeout=timeout) as client:
        answers = await asyncio.gather(*(one(client, item) for item in items))
    progress.close()
    if all(answer.error for answer in answers):
        raise EndpointError(f"{base_url} answered none of the {len(items)} items; first error: {answers[0].error}")
    return answers
