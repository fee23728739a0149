"""Choosing a semantic-cache threshold from labelled prompt pairs: for each threshold, the share of must-not
pairs the cache would serve (false hits) and the share of should-hit pairs it would serve (recall), under a
cache policy (bypass patterns and meaning checks included, as the gateway applies them).

    python -m tokenyard.gateway.calibrate pairs.jsonl [more.jsonl ...]

Each line of a pairs file: {"cached": ..., "incoming": ..., "label": "hit" | "miss", "category": ...}."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenyard.gateway.config import CachePolicy
from tokenyard.gateway.semantic import serves

THRESHOLDS = (0.80, 0.85, 0.90, 0.92, 0.95, 0.97)


@dataclass(frozen=True)
class Pair:
    cached: str
    incoming: str
    should_hit: bool
    category: str


@dataclass(frozen=True)
class Judgement:
    threshold: float
    false_hits: list[Pair]
    must_not: int
    hits: int
    should_hit: int
    served_by_category: Counter[str]

    @property
    def false_hit_rate(self) -> float:
        return len(self.false_hits) / self.must_not

    @property
    def recall(self) -> float:
        return self.hits / self.should_hit


def load_pairs(path: Path) -> list[Pair]:
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if row.get("label") not in ("hit", "miss"):
                raise ValueError(f"{path}:{number}: label must be 'hit' or 'miss', not {row.get('label')!r}")
            pairs.append(Pair(row["cached"], row["incoming"], row["label"] == "hit", row.get("category", "")))
    return pairs


def similarities(pairs: list[Pair], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """Cosine similarity of each pair; ``embed`` maps a list of texts to unit-length rows."""
    similarity: np.ndarray = (embed([p.cached for p in pairs]) * embed([p.incoming for p in pairs])).sum(axis=1)
    return similarity


def judge(pairs: list[Pair], similarity: np.ndarray, policy: CachePolicy) -> Judgement:
    served = [serves(p.cached, p.incoming, float(s), policy) for p, s in zip(pairs, similarity, strict=True)]
    return Judgement(
        threshold=policy.semantic_threshold,
        false_hits=[p for p, hit in zip(pairs, served, strict=True) if hit and not p.should_hit],
        must_not=sum(not p.should_hit for p in pairs),
        hits=sum(hit and p.should_hit for p, hit in zip(pairs, served, strict=True)),
        should_hit=sum(p.should_hit for p in pairs),
        served_by_category=Counter(p.category for p, hit in zip(pairs, served, strict=True) if hit),
    )


def sweep_table(pairs: list[Pair], similarity: np.ndarray, policy: CachePolicy) -> str:
    """A markdown table: per threshold, false hits and recall with the meaning checks, and by cosine alone."""
    rows = [
        "| threshold (reworded) | false hits | recall | cosine alone: false hits | cosine alone: recall |",
        "|---:|---:|---:|---:|---:|",
    ]
    should = np.array([p.should_hit for p in pairs])
    margin = policy.semantic_reworded_threshold - policy.semantic_threshold  # kept as the threshold moves
    for threshold in THRESHOLDS:
        moved = {"semantic_threshold": threshold, "semantic_reworded_threshold": min(1.0, threshold + margin)}
        judgement = judge(pairs, similarity, policy.model_copy(update=moved))
        above = similarity >= threshold
        false_hits = f"{judgement.false_hit_rate:.1%} ({len(judgement.false_hits)}/{judgement.must_not})"
        recall = f"{judgement.recall:.1%} ({judgement.hits}/{judgement.should_hit})"
        cosine_false = (above & ~should).sum() / (~should).sum()
        cosine_recall = (above & should).sum() / should.sum()
        rows.append(
            f"| {threshold:.2f} ({moved['semantic_reworded_threshold']:.2f}) | {false_hits} | {recall}"
            f" | {cosine_false:.1%} | {cosine_recall:.1%} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", type=Path, nargs="+")
    parser.add_argument("--no-bypass", action="store_true", help="judge without the default bypass patterns")
    args = parser.parse_args()
    from tokenyard.gateway.embeddings import LocalEmbedder

    embedder = LocalEmbedder()
    policy = CachePolicy(bypass_patterns=[]) if args.no_bypass else CachePolicy()
    for path in args.pairs:
        pairs = load_pairs(path)
        print(
            f"## {path} ({len(pairs)} pairs)\n\n{sweep_table(pairs, similarities(pairs, embedder.embed_now), policy)}\n"
        )


if __name__ == "__main__":
    main()
