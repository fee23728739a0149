"""Asks the endpoint under test every testset question over ``/v1/chat/completions``.

A request that fails for a reason that may pass (a timeout, a dropped connection, 429/503 overload, a 500/502/504)
is sent again after a back-off: answers are at temperature 0 with a fixed seed, so a retry asks the same question
and gets the same answer. What still fails after the last attempt is an error ``Answer``, never a dropped item.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError
from tqdm.auto import tqdm

from tokenyard.wire.openai import ChatCompletionRequest, ErrorResponse

from .testset import Item

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})  # overload (Retry-After) and server errors that may pass
# Worth another try: the request timed out, could not connect, or the connection broke before an answer came.
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
SEED = 1234  # fixed so a server that honours `seed` answers the same way on every run


class EndpointError(RuntimeError):
    """The endpoint answered no item: the run must fail, never produce results that look like a pass."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one item is tried: ``retries`` more attempts after the first, waiting ``backoff`` seconds and
    doubling (or the server's Retry-After), at most ``max_wait`` per wait and ``budget`` in all for the item."""

    retries: int = 4
    backoff: float = 1.0
    max_wait: float = 30.0
    budget: float = 120.0

    def wait(self, retry: int, retry_after: float | None) -> float:
        """Seconds before retry number ``retry`` (0 for the first retry)."""
        wanted = self.backoff * 2**retry if retry_after is None else retry_after
        return min(max(wanted, 0.0), self.max_wait)


DEFAULT_RETRY = RetryPolicy()


@dataclass
class Answer:
    text: str | None
    latency_ms: float | None  # of the attempt that answered (or failed last)
    error: str | None
    attempts: int = 1


class _Retryable(Exception):
    """An attempt failed in a way another attempt may not."""

    def __init__(self, error: str, latency_ms: float | None, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.latency_ms = latency_ms
        self.retry_after = retry_after


def messages(item: Item) -> list[dict[str, str]]:
    system = [{"role": "system", "content": item.system_prompt}] if item.system_prompt else []
    if item.contexts:
        # Retrieved passages go in the user turn, the way a RAG app sends them.
        passages = "\n\n".join(f"[{n}] {text}" for n, text in enumerate(item.contexts, start=1))
        user = f"Answer the question using only these passages.\n\n{passages}\n\nQuestion: {item.question}"
    else:
        user = item.question
    return [*system, {"role": "user", "content": user}]


def response_format(item: Item) -> dict[str, Any] | None:
    """OpenAI's ``response_format`` for an item with a JSON Schema (strict: the answer must follow it, as the
    product asks for it); None for an item without one."""
    if item.schema_ is None:
        return None
    schema = {"name": item.schema_name or "schema", "schema": item.schema_, "strict": True}
    return {"type": "json_schema", "json_schema": schema}


def chat_request(model: str, item: Item, max_tokens: int, constrained: bool = True) -> dict[str, Any]:
    """The request body, built through the wire's ChatCompletionRequest (what the runtime and the gateway accept),
    so a request they would refuse (say max_tokens 0) fails here, once, not as an HTTP 400 for every item.
    An item's JSON Schema goes as ``response_format`` unless ``constrained`` is False (the model's own answer)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages(item),
        "temperature": 0,
        "seed": SEED,
        "max_tokens": max_tokens,
    }
    if constrained and (form := response_format(item)) is not None:
        body["response_format"] = form
    request = ChatCompletionRequest.model_validate(body)
    return request.model_dump(mode="json", exclude_unset=True, by_alias=True)


async def ask(
    client: httpx.AsyncClient,
    model: str,
    item: Item,
    max_tokens: int,
    policy: RetryPolicy = DEFAULT_RETRY,
    constrained: bool = True,
) -> Answer:
    body = chat_request(model, item, max_tokens, constrained)
    waited = 0.0
    for attempt in range(policy.retries + 1):
        try:
            answer = await _attempt(client, body)
        except _Retryable as failure:
            wait = policy.wait(attempt, failure.retry_after)
            if attempt == policy.retries or waited + wait > policy.budget:
                return Answer(None, failure.latency_ms, _gave_up(failure.error, attempt + 1, policy), attempt + 1)
            await asyncio.sleep(wait)
            waited += wait
            continue
        answer.attempts = attempt + 1
        return answer
    raise AssertionError("unreachable: the last attempt returns")


async def _attempt(client: httpx.AsyncClient, body: dict[str, Any]) -> Answer:
    """One request: an Answer (an answer, or an error that would come back again), or raises _Retryable."""
    start = time.perf_counter()
    try:
        response = await client.post("/v1/chat/completions", json=body)
    except RETRY_ERRORS as error:
        raise _Retryable(_describe(error), None) from error
    except httpx.HTTPError as error:
        return Answer(None, None, _describe(error))
    latency_ms = (time.perf_counter() - start) * 1000
    if response.status_code in RETRY_STATUSES:
        raise _Retryable(describe_http_error(response), latency_ms, _retry_after(response))
    if response.status_code != 200:  # 400, 401, 404, ...: the same request fails the same way again
        return Answer(None, latency_ms, describe_http_error(response))
    try:
        text = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return Answer(None, latency_ms, f"not a chat completion: {response.text[:300]}")
    return Answer(text or "", latency_ms, None)


def _gave_up(error: str, attempts: int, policy: RetryPolicy) -> str:
    spent = "" if attempts > policy.retries else f", back-off budget {policy.budget:g}s spent"
    return f"{error} (after {attempts} attempt{'s' if attempts > 1 else ''}{spent})"


def describe_http_error(response: httpx.Response) -> str:
    """``HTTP <status>: <type>: <message>`` from an OpenAI error envelope (the wire's ErrorResponse, which the
    runtime and the gateway answer with), else ``HTTP <status>: <the body's start>``."""
    try:
        detail = ErrorResponse.model_validate_json(response.content).error
    except ValidationError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    return f"HTTP {response.status_code}: {detail.type}: {detail.message[:300]}"


def _describe(error: httpx.HTTPError) -> str:
    return f"{type(error).__name__}: {str(error) or 'no detail'}"


def api_root(base_url: str) -> str:
    """Accepts both ``http://host:8000`` and the OpenAI-style ``http://host:8000/v1``."""
    return base_url.rstrip("/").removesuffix("/v1")


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds; None when absent or an HTTP date (then the back-off decides)."""
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


async def ask_all(
    base_url: str,
    model: str,
    items: list[Item],
    concurrency: int,
    max_tokens: int,
    timeout: float,
    policy: RetryPolicy = DEFAULT_RETRY,
    constrained: bool = True,
) -> list[Answer]:
    """Answers in item order; at most ``concurrency`` requests in flight (an item keeps its slot while it backs
    off, so retries never add load). ``constrained``: send each item's JSON Schema as ``response_format``."""
    limit = asyncio.Semaphore(concurrency)
    progress = tqdm(total=len(items), desc="answering", unit="item")

    async def one(client: httpx.AsyncClient, item: Item) -> Answer:
        async with limit:
            answer = await ask(client, model, item, max_tokens, policy, constrained)
        progress.update()
        return answer

    async with httpx.AsyncClient(base_url=api_root(base_url), timeout=timeout) as client:
        answers = await asyncio.gather(*(one(client, item) for item in items))
    progress.close()
    if all(answer.error for answer in answers):
        raise EndpointError(f"{base_url} answered none of the {len(items)} items; first error: {answers[0].error}")
    return answers
