"""The files the eval commands write: results (per run) and baselines (what a gate compares against)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, computed_field

from tokenyard import __version__


class TestsetInfo(BaseModel):
    __test__ = False

    path: str
    sha256: str
    items: int


class JudgeInfo(BaseModel):
    base_url: str
    model: str
    repeats: int


class MetricSummary(BaseModel):
    # Over the items that have the metric and a number for it, plus every failed item at the metric's worst
    # score (a failed item never leaves the denominator); None if there is none.
    mean: float | None
    std: float | None  # spread of the mean over the judge's repeats; 0 for deterministic metrics
    n: int  # items the metric applies to
    nan: int  # of those, answered items whose score is NaN (an unparsable or failed judge answer)
    failed: int = 0  # of those, items the endpoint never answered (after retries): counted at the worst score


class Sample(BaseModel):
    id: str
    answer: str | None
    latency_ms: float | None
    error: str | None  # why the endpoint gave no answer, after every attempt; None if it answered
    attempts: int = 1  # requests sent for this item (more than 1: retried after a timeout, drop or overload)
    scores: dict[str, float | None]  # None is NaN (JSON has no NaN); a failed item's scores are all None


class Results(BaseModel):
    tokenyard_version: str = __version__
    created: str = Field(default_factory=lambda: now())
    endpoint: str
    model: str
    testset: TestsetInfo
    judge: JudgeInfo | None
    metrics: dict[str, MetricSummary]
    samples: list[Sample]

    @computed_field  # written to the file for readers; recomputed from the samples when a file is read
    @property
    def failed_items(self) -> list[str]:
        """Ids of the items the endpoint never answered; the gate fails on more than --max-errors of them."""
        return [sample.id for sample in self.failed_samples()]

    def failed_samples(self) -> list[Sample]:
        return [sample for sample in self.samples if sample.error is not None]


class Baseline(BaseModel):
    tokenyard_version: str = __version__
    created: str = Field(default_factory=lambda: now())
    model: str
    testset: TestsetInfo
    metrics: dict[str, float]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def summarize(per_repeat: list[dict[int, float]], failed: Collection[int] = (), worst: float = 0.0) -> MetricSummary:
    """``per_repeat[r][i]``: item i's score in repeat r (one repeat for deterministic metrics). An item is NaN
    if any repeat is: a judge that failed once is not trusted on that item. Items in ``failed`` got no answer:
    they count in every repeat's mean at ``worst``, so a run that fails its hard items never looks better."""
    items = list(per_repeat[0])
    lost = [i for i in items if i in failed]
    answered = [i for i in items if i not in failed]
    good = [i for i in answered if not any(math.isnan(scores[i]) for scores in per_repeat)]
    nan = len(answered) - len(good)
    if not good and not lost:
        return MetricSummary(mean=None, std=None, n=len(items), nan=nan, failed=0)
    repeat_means = [statistics.fmean([*(scores[i] for i in good), *(worst for _ in lost)]) for scores in per_repeat]
    std = statistics.pstdev(repeat_means) if len(repeat_means) > 1 else 0.0
    return MetricSummary(mean=statistics.fmean(repeat_means), std=std, n=len(items), nan=nan, failed=len(lost))


def read_model(path: Path, model: type[BaseModel]) -> BaseModel:
    """Reads a results or baseline file, or raises ValueError saying which file and what is wrong."""
    try:
        return model.model_validate_json(path.read_bytes())
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from error
    except ValueError as error:
        raise ValueError(f"{path} is not a {model.__name__.lower()} file: {error}") from error
