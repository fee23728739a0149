"""``tokenyard eval gate``: compare a run with a baseline and fail closed."""

from __future__ import annotations

from dataclasses import dataclass

from .results import Baseline, Results


@dataclass
class Row:
    metric: str
    baseline: float | None
    current: float | None
    status: str  # "ok", or why the metric fails

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def parse_floors(specs: list[str]) -> dict[str, float]:
    """``["json_valid=0.9", ...]`` -> {"json_valid": 0.9}; a bad spec raises ValueError saying what is allowed."""
    floors = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            floors[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--min {spec!r}: expected METRIC=NUMBER, for example --min json_valid=0.95") from None
    return floors


def compare(
    baseline: Baseline, current: Results, max_drop: float, floors: dict[str, float], max_errors: int = 0
) -> tuple[list[Row], str]:
    """The table's rows, and a reason for the whole gate to fail ('' if none beyond the rows)."""
    reason = "; ".join(why for why in (_testset_reason(baseline, current), _errors_reason(current, max_errors)) if why)
    rows = []
    for name in sorted(set(baseline.metrics) | set(floors)):
        base = baseline.metrics.get(name)
        summary = current.metrics.get(name)
        value = summary.mean if summary else None
        if summary is None:
            status = "FAIL: missing from the current run"
        elif summary.mean is None or summary.nan:
            status = f"FAIL: NaN for {summary.nan} of {summary.n} items"
        elif base is not None and value < base - max_drop:
            status = f"FAIL: dropped {base - value:.3f} (> {max_drop})"
        elif name in floors and value < floors[name]:
            status = f"FAIL: below the floor {floors[name]}"
        else:
            status = "ok"
        rows.append(Row(name, base, value, status))
    return rows, reason


def _testset_reason(baseline: Baseline, current: Results) -> str:
    if baseline.testset.sha256 != current.testset.sha256:
        return (
            f"the testsets differ: baseline {baseline.testset.path} ({baseline.testset.sha256[:12]}), "
            f"current {current.testset.path} ({current.testset.sha256[:12]}); a gate against another testset "
            "means nothing: re-run on the baseline's testset or write a new baseline"
        )
    if baseline.testset.items != current.testset.items:
        return (
            f"the baseline scored {baseline.testset.items} items of the testset, the current run "
            f"{current.testset.items} (--limit?): run the same items as the baseline"
        )
    return ""


def _errors_reason(current: Results, max_errors: int) -> str:
    failed = current.failed_samples()
    if len(failed) <= max_errors:
        return ""
    return f"{describe_failures(current)}, more than --max-errors {max_errors}"


def describe_failures(results: Results, shown: int = 5) -> str:
    """'3 of 114 items failed: cls-003 [ReadTimeout: ... (after 5 attempts)], ...'; '' when none failed."""
    failed = results.failed_samples()
    if not failed:
        return ""
    listed = ", ".join(f"{sample.id} [{sample.error}]" for sample in failed[:shown])
    more = f" and {len(failed) - shown} more" if len(failed) > shown else ""
    return f"{len(failed)} of {len(results.samples)} items failed: {listed}{more}"


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _cells(row: Row) -> list[str]:
    return [row.metric, _number(row.baseline), _number(row.current), _number(row.delta, signed=True), row.status]


HEADER = ["metric", "baseline", "current", "delta", "status"]


def text_table(rows: list[Row]) -> str:
    lines = [HEADER, *(_cells(row) for row in rows)]
    widths = [max(len(line[c]) for line in lines) for c in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def markdown(rows: list[Row], reason: str, passed: bool, title: str, note: str = "") -> str:
    lines = [f"### {title}: {'passed' if passed else 'FAILED'}", ""]
    if reason:
        lines += [f"**{reason}**", ""]
    if note:
        lines += [note, ""]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
