"""LLM-judged ragas metrics against any OpenAI-compatible judge, with every judge call cached on disk.

Judges are noisy and local ones often answer unparsable JSON: each metric runs ``repeats`` times, and a call
that fails or cannot be parsed scores NaN (the gate fails it), never a dropped sample.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import httpx
from tqdm.auto import tqdm

from .client import Answer, api_root
from .testset import Item

JUDGED_METRICS = ("faithfulness", "answer_relevancy", "context_precision", "context_recall")
DEFAULT_CACHE = Path("~/.cache/tokenyard/judge")


def applies(name: str, item: Item) -> bool:
    if name in ("context_precision", "context_recall"):
        return bool(item.contexts) and item.reference is not None
    return bool(item.contexts)  # a judge of a JSON label against no passages measures nothing


class CachingTransport(httpx.AsyncBaseTransport):
    """Answers a request the judge has seen before from disk. The key is the repeat number plus the request's
    method, URL and body (never its headers: they carry the API key), so a re-run costs no judge calls while
    the repeats within one run stay independent."""

    def __init__(self, directory: Path, repeat: int) -> None:
        self.directory = directory
        self.repeat = repeat
        self.inner = httpx.AsyncHTTPTransport()
        self.calls = 0  # requests that reached the judge
        self.hits = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        key = hashlib.sha256(f"{self.repeat}\n{request.method}\n{request.url}\n".encode() + body).hexdigest()
        path = self.directory / f"{key}.json"
        if path.is_file():
            self.hits += 1
            return _response(json.loads(path.read_text(encoding="utf-8")))
        self.calls += 1
        response = await self.inner.handle_async_request(request)
        entry = {"status": response.status_code, "body": (await response.aread()).decode("utf-8", "replace")}
        if response.status_code < 500 and response.status_code != 429:  # overload and server errors pass
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(entry), encoding="utf-8")
            temporary.replace(path)  # atomic: a concurrent run never reads half an entry
        return _response(entry)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _response(entry: dict) -> httpx.Response:
    return httpx.Response(entry["status"], headers={"content-type": "application/json"}, content=entry["body"])


def _metrics(llm, embeddings) -> dict[str, Callable]:
    from ragas.metrics import collections as m

    faithfulness = m.Faithfulness(llm=llm)
    relevancy = m.AnswerRelevancy(llm=llm, embeddings=embeddings)
    precision = m.ContextPrecision(llm=llm)
    recall = m.ContextRecall(llm=llm)
    return {
        "faithfulness": lambda i, a: faithfulness.ascore(
            user_input=i.question, response=a, retrieved_contexts=i.contexts
        ),
        "answer_relevancy": lambda i, a: relevancy.ascore(user_input=i.question, response=a),
        "context_precision": lambda i, a: precision.ascore(
            user_input=i.question, reference=i.reference, retrieved_contexts=i.contexts
        ),
        "context_recall": lambda i, a: recall.ascore(
            user_input=i.question, retrieved_contexts=i.contexts, reference=i.reference
        ),
    }


async def score_judged(
    items: list[Item],
    answers: list[Answer],
    names: list[str],
    base_url: str,
    model: str,
    repeats: int,
    concurrency: int,
    cache_dir: Path,
    max_tokens: int,
) -> tuple[dict[str, list[dict[int, float]]], list[CachingTransport]]:
    """metric -> one {item index: score} per repeat; and the transports, which count judge calls and hits."""
    from openai import AsyncOpenAI
    from ragas.llms import llm_factory

    from .embeddings import MiniLM

    embeddings = MiniLM()
    limit = asyncio.Semaphore(concurrency)
    scores: dict[str, list[dict[int, float]]] = {name: [] for name in names}
    transports = []
    todo = [(i, name) for name in names for i, item in enumerate(items) if applies(name, item)]
    progress = tqdm(total=len(todo) * repeats, desc="judging", unit="score")
    for repeat in range(repeats):
        transport = CachingTransport(cache_dir.expanduser(), repeat)
        transports.append(transport)
        client = AsyncOpenAI(
            base_url=f"{api_root(base_url)}/v1",
            api_key=os.environ.get("TOKENYARD_JUDGE_API_KEY", "none"),
            http_client=httpx.AsyncClient(transport=transport, timeout=300),
            max_retries=2,
        )
        metrics = _metrics(llm_factory(model, client=client, max_tokens=max_tokens), embeddings)

        async def one(i: int, name: str, metrics=metrics) -> float:
            if answers[i].error is not None:
                return math.nan
            async with limit:
                try:
                    value = (await metrics[name](items[i], answers[i].text or "")).value
                    value = float(value)
                except Exception:  # an unparsable or failed judge answer is NaN, counted by the gate
                    value = math.nan
            progress.update()
            return value

        values = await asyncio.gather(*(one(i, name) for i, name in todo))
        for name in names:
            scores[name].append({})
        for (i, name), value in zip(todo, values, strict=True):
            scores[name][repeat][i] = value
        await client.close()
    progress.close()
    return scores, transports
