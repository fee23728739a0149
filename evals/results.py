"""The files the eval commands write: results (per run) and baselines (what a gate compares against)."""

from __future__ import annotations

import math
import statistics
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

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
    mean: float | None  # over the items that have the metric and a number for it; None if none has
    std: float | None  # spread of the mean over the judge's repeats; 0 for deterministic metrics
    n: int  # items the metric applies to
    nan: int  # of those, items whose score is NaN (an endpoint error, an unparsable judge answer)


class Sample(BaseModel):
    id: str
    answer: str | None
    latency_ms: float | None
    error: str | None
    scores: dict[str, float | None]  # None is NaN (JSON has no NaN)


class Results(BaseModel):
    tokenyard_version: str = __version__
    created: str = Field(default_factory=lambda: now())
    endpoint: str
    model: str
    testset: TestsetInfo
    judge: JudgeInfo | None
    metrics: dict[str, MetricSummary]
    samples: list[Sample]


class Baseline(BaseModel):
    tokenyard_version: str = __version__
    created: str = Field(default_factory=lambda: now())
    model: str
    testset: TestsetInfo
    metrics: dict[str, float]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def summarize(per_repeat: list[list[float]]) -> MetricSummary:
    """``per_repeat[r][i]``: item i's score in repeat r (one repeat for deterministic metrics). An item is NaN
    if any repeat is: a judge that failed once is not trusted on that item."""
    items = list(zip(*per_repeat, strict=True))
    nan = sum(any(math.isnan(score) for score in scores) for scores in items)
    good = [scores for scores in items if not any(math.isnan(score) for score in scores)]
    if not good:
        return MetricSummary(mean=None, std=None, n=len(items), nan=nan)
    repeat_means = [statistics.fmean(scores[r] for scores in good) for r in range(len(per_repeat))]
    std = statistics.pstdev(repeat_means) if len(repeat_means) > 1 else 0.0
    return MetricSummary(mean=statistics.fmean(repeat_means), std=std, n=len(items), nan=nan)


def read_model(path: Path, model: type[BaseModel]) -> BaseModel:
    """Reads a results or baseline file, or raises ValueError saying which file and what is wrong."""
    try:
        return model.model_validate_json(path.read_bytes())
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from error
    except ValueError as error:
        raise ValueError(f"{path} is not a {model.__name__.lower()} file: {error}") from error
