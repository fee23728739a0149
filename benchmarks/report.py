"""docs/benchmarks.md is written in sections, one per benchmark script, so each can be re-run alone."""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from tokenyard.runtime.cpu import ISA_ENV, capped, cpu_isa

HEADER = (
    "# Benchmarks\n\nWritten by `make bench`. Every figure is measured in the same run, on the same machine, next "
    "to its baseline;\nonly the ratios are meant to travel between machines.\n"
)


# The instruction sets the CPU kernels and oneDNN choose between: figures differ by them, so each is written down.
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_description() -> str:
    """The CPU's model name, its core count and the CPU_FLAGS it has, as read from /proc/cpuinfo, then the ISA level
    the kernels run at (``cpu_isa().describe()``) and, where the AVX2 path is forced, what forced it."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    present = [flag for flag in CPU_FLAGS if flag in flags] or ["none of " + ", ".join(CPU_FLAGS)]
    name = model.group(1).strip() if model else platform.processor() or platform.machine()
    line = f"{name}, {os.cpu_count()} cores, flags {' '.join(present)}; ISA level {cpu_isa().describe()}"
    forced = forced_isa_note()
    return f"{line}; {forced}" if forced else line


# Each CPU-sensitive benchmark (engine, quantization, llama_cpp) writes one section per CPU kind, so a run on another
# kind of CPU adds its section beside the others instead of replacing them.
def section_for(name: str) -> str:
    """The section a CPU-sensitive benchmark writes on this CPU, e.g. ``engine-avx2``: named by the ISA level the
    kernels run at (capped by TOKENYARD_CPU_ISA when the AVX2 path is forced)."""
    return f"{name}-{cpu_isa().name}"


# What forces an ISA path, for PyTorch, oneDNN and tokenyard's own kernels: each reads its own variable, before torch
# is imported; the three together run an AVX-512 machine as an AVX2 one (see runtime/cpu.py).
FORCED_ISA_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", ISA_ENV: "avx2"},
}


def forced_isa_note(environ: Mapping[str, str] = os.environ) -> str:
    """A clause for the report when TOKENYARD_CPU_ISA lowered what the process uses of the CPU (e.g. "AVX2 path
    forced on an AVX-512 CPU with ..."); empty when nothing is forced (or the cap changes nothing on this CPU)."""
    isa = cpu_isa()
    if isa.capped_from is None:
        return ""
    kind = {"avx512": "an AVX-512", "avx512_bf16": "an AVX-512 + BF16", "neon_bf16": "an Arm BF16"}.get(
        isa.capped_from, f"a {isa.capped_from}"
    )
    settings = " ".join(
        f"{key}={environ[key]}" for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", ISA_ENV) if key in environ
    )
    return f"{isa.name.upper()} path forced on {kind} CPU with {settings}{_torch_capability()}"


def _torch_capability() -> str:
    """What PyTorch's kernels really dispatch to (it honours ATEN_CPU_CAPABILITY), where torch is already loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        return ""
    return f" (PyTorch's kernels: {torch.backends.cpu.get_cpu_capability()})"


def add_isa_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--isa",
        choices=sorted(FORCED_ISA_ENV),
        default=None,
        help="run on this ISA path on a newer CPU (avx2: an AVX-512 machine computes as an AVX2-only one, for "
        "PyTorch, oneDNN and tokenyard's kernels alike); the script re-runs itself with "
        + " ".join(f"{k}={v}" for k, v in FORCED_ISA_ENV["avx2"].items()),
    )


def isa_environment(isa: str | None, environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The environment to re-run this script in for ``--isa``, or None when it already runs there (or no ISA was
    asked for). ValueError when this CPU cannot take that path (avx2 on Arm)."""
    if isa is None:
        return None
    forced = FORCED_ISA_ENV[isa]
    capped(cpu_isa(), forced[ISA_ENV])  # raises where the CPU cannot honour it, before anything runs
    if all(environ.get(key) == value for key, value in forced.items()):
        return None
    return {**environ, **forced}


def force_isa(args: argparse.Namespace) -> None:
    """Re-run this very command (``sys.orig_argv``) with ``--isa``'s environment, unless it already has it: PyTorch
    and oneDNN read theirs once, so the variables must be set before torch is first imported."""
    try:
        environ = isa_environment(args.isa)
    except ValueError as error:
        raise SystemExit(f"--isa {args.isa}: {error}") from None
    if environ is not None:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (q in [0, 100]), as ``tokenyard bench serve`` reports p99; NaN for none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def write_section(path: Path, name: str, markdown: str) -> None:
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- section:{name} -->\n{markdown.strip()}\n<!-- /section:{name} -->"
    pattern = re.compile(rf"<!-- section:{re.escape(name)} -->.*?<!-- /section:{re.escape(name)} -->", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
