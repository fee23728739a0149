"""The SIMD kernels compute the same numbers on every instruction set they are compiled for: x86-64's (SSE4,
AVX2, AVX-512 where this CPU has it) and, cross-compiled for aarch64 and run under qemu-user, Arm's (NEON, SVE,
SVE2). ``simd/selftest.cc`` runs each kernel on fixed inputs once per target; the first x86-64 target's outputs
are the reference (test_cpu_kernels.py holds the x86-64 targets to PyTorch's formulas)."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "runtime" / "kernels"
SELFTEST = Path(__file__).with_name("simd") / "selftest.cc"
TOLERANCE = {"float32": 1e-5, "bfloat16": 2**-7}  # relative to the output's largest value: one rounding

Outputs = dict[str, dict[str, list[float]]]  # target -> "kernel dtype" -> values


def build(compiler: str, flags: list[str], out: Path) -> Path:
    sources = [SELFTEST, *sorted((KERNELS / "simd").glob("*_simd.cc"))]
    # no fused multiply-adds but Highway's own: the inputs the selftest makes are the same bits on every target
    command = [
        compiler,
        "-std=c++20",
        "-O2",
        "-ffp-contract=off",
        *flags,
        f"-I{KERNELS}",
        *map(str, sources),
        "-lhwy",
        "-o",
        str(out),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out


def run(command: list[str]) -> Outputs:
    outputs: Outputs = defaultdict(dict)
    target = ""
    for line in subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines():
        name, kind, *values = line.split()
        if name == "target":
            target = kind
        else:
            outputs[target][f"{name} {kind}"] = [float(v) for v in values]
    return dict(outputs)


@pytest.fixture(scope="module")
def x86_outputs(tmp_path_factory) -> Outputs:
    if shutil.which("g++") is None or not Path("/usr/include/hwy/highway.h").exists():
        pytest.skip("needs g++ and Highway (libhwy-dev): `make install` installs them")
    binary = build("g++", ["-msse4.2", "-mpclmul", "-maes"], tmp_path_factory.mktemp("x86") / "selftest")
    return run([str(binary)])


def assert_same_numbers(outputs: Outputs, reference: dict[str, list[float]]) -> None:
    for target, kernels in outputs.items():
        assert kernels.keys() == reference.keys(), target
        for name, values in kernels.items():
            expected = reference[name]
            scale = max(abs(v) for v in expected)
            worst = max(abs(a - b) for a, b in zip(values, expected, strict=True))
            assert worst <= TOLERANCE[name.split()[1]] * scale, f"{name} on {target}: off by {worst} (scale {scale})"


def test_every_x86_target_computes_the_same_numbers(x86_outputs):
    assert {"SSE4", "AVX2"} <= x86_outputs.keys()  # AVX3 too where this CPU has AVX-512
    assert_same_numbers(x86_outputs, next(iter(x86_outputs.values())))


def test_the_kernels_built_for_arm_compute_the_same_numbers_under_qemu(x86_outputs, tmp_path):
    tools = [shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")]
    if None in tools or not Path("/usr/lib/aarch64-linux-gnu/libhwy.so").exists():
        pytest.skip("needs g++-aarch64-linux-gnu, qemu-user and libhwy-dev:arm64: `make install` installs them")
    binary = build("aarch64-linux-gnu-g++", [], tmp_path / "selftest")
    arm = run(["qemu-aarch64", str(binary)])  # qemu's default CPU has SVE2: every Arm target runs
    assert {"NEON", "SVE", "SVE2"} <= arm.keys()
    assert_same_numbers(arm, next(iter(x86_outputs.values())))
