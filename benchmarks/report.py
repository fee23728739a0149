"""docs/benchmarks.md is written in sections, one per benchmark script, so each can be re-run alone."""

from __future__ import annotations

import math
import os
import platform
import re
from collections.abc import Iterable
from pathlib import Path

HEADER = (
    "# Benchmarks\n\nWritten by `make bench`. Every figure is measured in the same run, on the same machine, next "
    "to its baseline;\nonly the ratios are meant to travel between machines.\n"
)


# The instruction sets the CPU kernels and oneDNN choose between: figures differ by them, so each is written down.
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_description() -> str:
    """The CPU's model name, its core count and the CPU_FLAGS it has, as read from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    present = [flag for flag in CPU_FLAGS if flag in flags] or ["none of " + ", ".join(CPU_FLAGS)]
    name = model.group(1).strip() if model else platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores, flags {' '.join(present)}"


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (q in [0, 100]), as ``tokenyard bench serve`` reports p99; NaN for none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def write_section(path: Path, name: str, markdown: str) -> None:
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- section:{name} -->\n{markdown.strip()}\n<!-- /section:{name} -->"
    pattern = re.compile(rf"<!-- section:{name} -->.*?<!-- /section:{name} -->", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
