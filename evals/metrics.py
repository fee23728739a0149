"""Offline, deterministic scores: ragas' non-LLM metrics, MiniLM semantic similarity, and JSON task checks.

Each metric applies only to items that carry what it needs; an item whose request failed gets NaN for every
metric that applies to it, and the metric's mean counts it at ``worst_score`` (never leaves it out), so a broken
endpoint can never look like a good one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from .client import Answer
from .testset import Item

# name -> does it apply to this item?
CONTEXT_METRICS = ("non_llm_context_precision_with_reference", "non_llm_context_recall")
STRING_METRICS = ("non_llm_string_similarity", "bleu_score", "rouge_score", "chrf_score")
TASK_METRICS = ("json_valid", "schema_valid", "label_accuracy", "field_accuracy")
APPLIES: dict[str, Callable[[Item], bool]] = {
    **{name: lambda item: bool(item.contexts and item.reference_contexts) for name in CONTEXT_METRICS},
    **{name: lambda item: item.reference is not None for name in STRING_METRICS},
    "semantic_similarity": lambda item: item.reference is not None,
    "json_valid": lambda item: item.schema_ is not None or item.expected_output is not None,
    "schema_valid": lambda item: item.schema_ is not None,
    "label_accuracy": lambda item: item.expected_label is not None,
    "field_accuracy": lambda item: item.expected_output is not None,
}
OFFLINE_METRICS = tuple(APPLIES)
# The lowest score a metric can give, at which an unanswered item counts: cosines go down to -1, the rest to 0.
WORST_SCORE = {"semantic_similarity": -1.0, "answer_relevancy": -1.0}


def worst_score(name: str) -> float:
    return WORST_SCORE.get(name, 0.0)


Scores = dict[str, dict[int, float]]  # metric -> item index -> score (NaN where it could not be scored)


async def score_offline(items: list[Item], answers: list[Answer], names: list[str]) -> Scores:
    scores: Scores = {name: {} for name in names}
    for name in names:
        todo = [i for i, item in enumerate(items) if APPLIES[name](item)]
        for i in todo:
            scores[name][i] = math.nan  # overwritten below where the item has an answer
        answered = [i for i in todo if answers[i].error is None]
        if name == "semantic_similarity":
            scores[name].update(_semantic_similarity(items, answers, answered))
        elif name in TASK_METRICS:
            scores[name].update({i: _task_check(name, items[i], answers[i].text or "") for i in answered})
        else:
            scores[name].update({i: await _ragas_score(name, items[i], answers[i].text or "") for i in answered})
    return scores


def _semantic_similarity(items: list[Item], answers: list[Answer], indices: list[int]) -> dict[int, float]:
    if not indices:
        return {}
    from .embeddings import embed

    left = embed([answers[i].text or "" for i in indices])
    right = embed([items[i].reference or "" for i in indices])
    return {i: float((a * b).sum()) for i, a, b in zip(indices, left, right, strict=True)}


_RAGAS: dict[str, object] = {}


async def _ragas_score(name: str, item: Item, answer: str) -> float:
    from ragas.dataset_schema import SingleTurnSample

    if not _RAGAS:
        from ragas import metrics

        for metric in (
            metrics.NonLLMContextPrecisionWithReference(),
            metrics.NonLLMContextRecall(),
            metrics.NonLLMStringSimilarity(),
            metrics.BleuScore(),
            metrics.RougeScore(),
            metrics.ChrfScore(),
        ):
            _RAGAS[metric.name] = metric
    sample = SingleTurnSample(
        user_input=item.question,
        response=answer,
        reference=item.reference,
        retrieved_contexts=item.contexts,
        reference_contexts=item.reference_contexts,
    )
    return float(await _RAGAS[name].single_turn_ascore(sample))


def _task_check(name: str, item: Item, answer: str) -> float:
    """1.0/0.0 checks of a JSON answer; field_accuracy is the fraction of expected keys answered right."""
    try:
        parsed = json.loads(answer.strip())
    except ValueError:
        parsed = None
    if name == "json_valid":
        return float(parsed is not None)
    if name == "schema_valid":
        import jsonschema

        return float(parsed is not None and jsonschema.Draft202012Validator(item.schema_).is_valid(parsed))
    if not isinstance(parsed, dict):
        return 0.0
    if name == "label_accuracy":
        return float(parsed.get(item.label_field) == item.expected_label)
    expected = item.expected_output or {}
    return sum(parsed.get(key, object()) == value for key, value in expected.items()) / len(expected)
