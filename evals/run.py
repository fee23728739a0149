"""``tokenyard eval run``: answer a testset on an endpoint, score it, and build the results file."""

from __future__ import annotations

import logging
from pathlib import Path

from .client import DEFAULT_RETRY, Answer, RetryPolicy, ask_all
from .metrics import OFFLINE_METRICS, score_offline, worst_score
from .results import JudgeInfo, Results, Sample, TestsetInfo, nan_to_none, summarize
from .testset import load_testset

log = logging.getLogger(__name__)


async def evaluate(
    base_url: str,
    model: str,
    testset_path: Path,
    metrics: list[str],
    *,
    limit: int | None = None,
    concurrency: int = 8,
    max_tokens: int = 256,
    timeout: float = 120,
    judge: JudgeInfo | None = None,
    judge_cache: Path | None = None,
    judge_max_tokens: int = 512,
    retry: RetryPolicy = DEFAULT_RETRY,
    constrained: bool = True,
) -> Results:
    testset = load_testset(testset_path, limit)
    items = testset.items
    answers = await ask_all(base_url, model, items, concurrency, max_tokens, timeout, retry, constrained)
    failed = _failed(answers)
    if failed:
        log.warning("%d of %d items got no answer; each counts at its metrics' worst score", len(failed), len(items))
    scores = {name: [per_item] for name, per_item in (await score_offline(items, answers, _offline(metrics))).items()}
    if judge is not None:
        from .judge import score_judged

        judged, transports = await score_judged(
            items,
            answers,
            [name for name in metrics if name not in OFFLINE_METRICS],
            judge.base_url,
            judge.model,
            judge.repeats,
            concurrency,
            judge_cache,
            judge_max_tokens,
        )
        log.info(
            "judge: %d calls, %d answered from the cache",
            sum(t.calls for t in transports),
            sum(t.hits for t in transports),
        )
        scores.update(judged)
    scores = {name: repeats for name, repeats in scores.items() if repeats and repeats[0]}  # drop inapplicable
    samples = [
        Sample(
            id=item.id,
            answer=answer.text,
            latency_ms=answer.latency_ms,
            error=answer.error,
            attempts=answer.attempts,
            scores={name: nan_to_none(_mean(r[i] for r in per)) for name, per in scores.items() if i in per[0]},
        )
        for i, (item, answer) in enumerate(zip(items, answers, strict=True))
    ]
    return Results(
        endpoint=base_url,
        model=model,
        testset=TestsetInfo(path=testset.path, sha256=testset.sha256, items=len(items)),
        judge=judge,
        metrics={name: summarize(repeats, failed, worst_score(name)) for name, repeats in scores.items()},
        samples=samples,
    )


def _failed(answers: list[Answer]) -> set[int]:
    return {i for i, answer in enumerate(answers) if answer.error is not None}


def _offline(metrics: list[str]) -> list[str]:
    return [name for name in metrics if name in OFFLINE_METRICS]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)  # NaN if any repeat is NaN, as in summarize
