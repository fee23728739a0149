"""``tokenyard eval run | baseline | gate``. Exit codes: 0 passed, 1 failed (a gate, an endpoint), 2 bad usage."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .gate import compare, describe_failures, markdown, parse_floors, text_table
from .results import Baseline, JudgeInfo, Results, read_model

if TYPE_CHECKING:
    from .client import RetryPolicy

DEFAULT_METRICS_HELP = "all offline metrics, plus the judged ones when a judge is configured"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="eval_command", metavar="{run,baseline,gate}", required=True)

    run = commands.add_parser("run", help="answer a testset on an endpoint and score it")
    run.add_argument("--base-url", required=True, help="the OpenAI-compatible endpoint, e.g. http://localhost:8000")
    run.add_argument("--model", required=True, help="the `model` to send")
    run.add_argument("--testset", type=Path, required=True, help="a testset JSONL (see evals/testsets/README.md)")
    run.add_argument("--out", type=Path, required=True, help="where to write results.json")
    run.add_argument("--metrics", default=None, help=f"comma-separated metric names (default: {DEFAULT_METRICS_HELP})")
    run.add_argument("--limit", type=int, default=None, help="only the first N items")
    run.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    run.add_argument("--max-tokens", type=int, default=256, help="max_tokens of each answer")
    run.add_argument("--timeout", type=float, default=120, help="seconds per request (per attempt)")
    run.add_argument(
        "--no-response-format",
        dest="response_format",
        action="store_false",
        help="do not send an item's JSON Schema as response_format (measures the unconstrained model; "
        "its results are not comparable with a baseline made with the schema)",
    )
    run.add_argument(
        "--retries", type=int, default=4, help="more attempts for an item that timed out, was dropped or got 429/5xx"
    )
    run.add_argument("--retry-backoff", type=float, default=1.0, help="seconds before the first retry; doubles")
    run.add_argument("--retry-budget", type=float, default=120, help="most seconds one item may spend backing off")
    judge = run.add_argument_group("judge (optional; API key from $TOKENYARD_JUDGE_API_KEY)")
    judge.add_argument("--judge-base-url", default=None)
    judge.add_argument("--judge-model", default=None)
    judge.add_argument("--repeats", type=int, default=3, help="runs of each judged metric (mean and spread)")
    judge.add_argument("--judge-cache", type=Path, default=Path("~/.cache/tokenyard/judge"))
    judge.add_argument("--judge-max-tokens", type=int, default=512)

    baseline = commands.add_parser("baseline", help="write a baseline from a results file")
    baseline.add_argument("--results", type=Path, required=True)
    baseline.add_argument("--out", type=Path, required=True)
    baseline.add_argument("--metrics", default=None, help="comma-separated metrics to keep (default: all)")

    gate = commands.add_parser("gate", help="fail when a run is worse than its baseline")
    gate.add_argument("--baseline", type=Path, required=True)
    gate.add_argument("--current", type=Path, required=True, help="a results file from `tokenyard eval run`")
    gate.add_argument("--max-drop", type=float, default=0.05, help="largest allowed drop below the baseline")
    gate.add_argument("--min", action="append", default=[], metavar="METRIC=VALUE", help="a floor; repeatable")
    gate.add_argument(
        "--max-errors",
        type=int,
        default=0,
        help="items the endpoint may have failed (each counts at its metrics' worst score); default 0",
    )


def run(args: argparse.Namespace) -> int:
    try:
        return {"run": _run, "baseline": _baseline, "gate": _gate}[args.eval_command](args)
    except ValueError as error:  # bad arguments or input files: say what, exit 2 like argparse
        print(f"tokenyard eval {args.eval_command}: error: {error}", file=sys.stderr)
        return 2


def _names(spec: str | None, allowed: list[str]) -> list[str]:
    if spec is None:
        return allowed
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise ValueError(f"--metrics: unknown {', '.join(unknown) or '(none given)'}; allowed: {', '.join(allowed)}")
    return names


def _run(args: argparse.Namespace) -> int:
    from .client import EndpointError
    from .judge import JUDGED_METRICS
    from .metrics import OFFLINE_METRICS
    from .run import evaluate
    from .testset import TestsetError

    if (args.judge_base_url is None) != (args.judge_model is None):
        raise ValueError("--judge-base-url and --judge-model go together: give both or neither")
    judge = None
    allowed = list(OFFLINE_METRICS)
    if args.judge_base_url:
        if args.repeats < 1:
            raise ValueError(f"--repeats must be at least 1, not {args.repeats}")
        judge = JudgeInfo(base_url=args.judge_base_url, model=args.judge_model, repeats=args.repeats)
        allowed += JUDGED_METRICS
    retry = _retry_policy(args)
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")  # ragas reports usage otherwise
    try:
        results = asyncio.run(
            evaluate(
                args.base_url,
                args.model,
                args.testset,
                _names(args.metrics, allowed),
                limit=args.limit,
                concurrency=args.concurrency,
                max_tokens=args.max_tokens,
                timeout=args.timeout,
                judge=judge,
                judge_cache=args.judge_cache,
                judge_max_tokens=args.judge_max_tokens,
                retry=retry,
                constrained=args.response_format,
            )
        )
    except TestsetError as error:
        raise ValueError(str(error)) from None
    except EndpointError as error:
        print(f"tokenyard eval run: FAILED: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(results.model_dump_json(indent=2) + "\n", encoding="utf-8")
    for name, summary in results.metrics.items():
        mean = "NaN" if summary.mean is None else f"{summary.mean:.4f}"
        print(f"{name:45} {mean:>8}  n={summary.n} nan={summary.nan} failed={summary.failed}")
    print(f"wrote {args.out}")
    if failures := describe_failures(results):
        print(f"tokenyard eval run: {failures}; the gate fails unless --max-errors allows them", file=sys.stderr)
    return 0


def _retry_policy(args: argparse.Namespace) -> RetryPolicy:
    from .client import RetryPolicy

    for flag in ("retries", "retry_backoff", "retry_budget"):
        if getattr(args, flag) < 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 0, not {getattr(args, flag)}")
    return RetryPolicy(retries=args.retries, backoff=args.retry_backoff, budget=args.retry_budget)


def _baseline(args: argparse.Namespace) -> int:
    results = read_model(args.results, Results)
    if failures := describe_failures(results):
        raise ValueError(f"{args.results}: {failures}; a baseline must come from a run that answered every item")
    names = _names(args.metrics, list(results.metrics))
    missing = [name for name in names if results.metrics[name].mean is None or results.metrics[name].nan]
    if missing:
        raise ValueError(f"{args.results}: NaN in {', '.join(missing)}; a baseline must be numbers")
    baseline = Baseline(
        model=results.model, testset=results.testset, metrics={name: results.metrics[name].mean for name in names}
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(baseline.model_dump_json(indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(names)} metrics")
    return 0


def _gate(args: argparse.Namespace) -> int:
    floors = parse_floors(args.min)
    if args.max_drop < 0:
        raise ValueError(f"--max-drop must be >= 0, not {args.max_drop}")
    if args.max_errors < 0:
        raise ValueError(f"--max-errors must be >= 0, not {args.max_errors}")
    baseline = read_model(args.baseline, Baseline)
    current = read_model(args.current, Results)
    rows, reason = compare(baseline, current, args.max_drop, floors, args.max_errors)
    passed = not reason and all(row.ok for row in rows)
    failures = describe_failures(current)
    allowed = bool(failures) and len(current.failed_items) <= args.max_errors
    note = f"{failures}: allowed by --max-errors {args.max_errors}, each at its metrics' worst score" if allowed else ""
    print(text_table(rows))
    if reason:
        print(f"FAILED: {reason}")
    if note:
        print(f"note: {note}")
    print(f"quality gate {'passed' if passed else 'FAILED'}: {current.model} on {current.testset.path}")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as out:
            out.write(markdown(rows, reason, passed, f"Quality gate: {Path(current.testset.path).name}", note))
    return 0 if passed else 1
