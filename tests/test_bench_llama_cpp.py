"""`python -m tokenyard.benchmarks.llama_cpp` and the per-CPU-kind sections of the CPU benchmarks, without timing
anything: argument parsing, the flags each side runs with, section names per CPU kind (and the forced AVX2 path),
the report rendered from fixed figures with its goals met or not, and what a second CPU kind does to
docs/benchmarks.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

from tokenyard.benchmarks import engine, llama_cpp, quantization, report
from tokenyard.runtime.cpu import CpuIsa, capped, from_cpuinfo

_X86 = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx "
    "lm constant_tsc rep_good nopl pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand "
    "hypervisor lahf_lm abm bmi1 avx2 smep bmi2 erms"
)
_AVX512 = " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16"


def cpuinfo(model: str, flags: str) -> str:
    return f"processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: {model}\nflags\t\t: {flags}\n"


AVX2_CPU = from_cpuinfo(cpuinfo("AMD EPYC 7B12", _X86), "x86_64")
AVX512_BF16_CPU = from_cpuinfo(cpuinfo("AMD EPYC 9B14", _X86 + _AVX512), "x86_64")
ARM_CPU = from_cpuinfo("processor\t: 0\nFeatures\t: fp asimd asimddp bf16\n", "aarch64")
FORCED = dict(report.FORCED_ISA_ENV["avx2"])


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch):
    """Make the benchmarks see a given CPU (every module reads it through cpu_isa())."""

    def use(isa: CpuIsa) -> CpuIsa:
        for module in (report, engine, quantization, llama_cpp):
            monkeypatch.setattr(module, "cpu_isa", lambda: isa)
        return isa

    return use


def test_the_fixture_cpus_are_the_kinds_they_claim() -> None:
    assert (AVX2_CPU.name, AVX512_BF16_CPU.name, ARM_CPU.name) == ("avx2", "avx512_bf16", "neon_bf16")


# --- arguments ---------------------------------------------------------------------------------------------------


def test_defaults_are_the_best_setting_at_this_machines_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_cpp, "usable_cores", lambda: 3)
    args = llama_cpp.parse_args([])
    assert args.setting == llama_cpp.DEFAULT_SETTING == "int4-g32"
    assert args.threads == 3
    assert args.out == Path("docs/benchmarks.md")
    assert args.isa is None and args.speculative_config is None
    assert (args.rounds, args.compare) == (2, 8)


def test_flags_are_parsed() -> None:
    args = llama_cpp.parse_args(
        ["--threads", "2", "--setting", "gguf", "--isa", "avx2", "--requests", "4", "--compare", "2", "--out", "x.md"]
    )
    assert (args.threads, args.setting, args.isa, args.requests, args.compare) == (2, "gguf", "avx2", 4, 2)
    assert args.out == Path("x.md")


@pytest.mark.parametrize(
    "argv",
    [
        ["--setting", "bf16"],
        ["--isa", "avx512"],
        ["--threads", "0"],
        ["--decode-tokens", "1"],
        ["--requests", "4", "--compare", "5"],
        ["--rounds", "0"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        llama_cpp.parse_args(argv)
    assert exit_.value.code == 2


def test_each_setting_serves_with_its_quantization_flags_and_the_same_threads() -> None:
    args = llama_cpp.parse_args(["--threads", "2", "--setting", "int4-g32"])
    command = llama_cpp.tokenyard_command(args)
    assert command[command.index("--num-threads") + 1] == "2"
    assert command[command.index("--quantization") + 1] == "int4"
    assert command[command.index("--quantization-group-size") + 1] == "32"
    assert command[command.index("--dtype") + 1] == "auto"
    assert "--speculative-config" not in command
    gguf = llama_cpp.tokenyard_command(llama_cpp.parse_args(["--setting", "gguf", "--speculative-config", "{}"]))
    assert gguf[gguf.index("--quantization") + 1] == "gguf" and "--quantization-group-size" not in gguf
    assert gguf[-2:] == ["--speculative-config", "{}"]

    theirs = llama_cpp.llama_command(Path("/m.gguf"), 1234, 2)
    assert theirs[theirs.index("--n_threads") + 1] == theirs[theirs.index("--n_threads_batch") + 1] == "2"
    assert theirs[theirs.index("--model") + 1] == "/m.gguf" and theirs[theirs.index("--port") + 1] == "1234"
    assert theirs[theirs.index("--interrupt_requests") + 1] == "False"  # else queued requests truncate answers


def test_llama_cpp_build_features_and_isa() -> None:
    info = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 0 | OPENMP = 1 | "
    features = llama_cpp.llama_features(info)
    assert features == ["SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "OPENMP"]
    assert llama_cpp.llama_isa(features) == "avx2"
    assert llama_cpp.llama_isa([*features, "AVX512"]) == "avx512"
    assert llama_cpp.llama_isa([*features, "AVX512", "AVX512_BF16"]) == "avx512_bf16"


# --- sections per CPU kind and the forced AVX2 path --------------------------------------------------------------


def test_sections_are_named_by_cpu_kind(cpu) -> None:
    cpu(AVX2_CPU)
    assert report.section_for("llama_cpp") == "llama_cpp-avx2"
    cpu(AVX512_BF16_CPU)
    assert report.section_for("engine") == "engine-avx512_bf16"
    cpu(capped(AVX512_BF16_CPU, "avx2"))
    assert report.section_for("quantization") == "quantization-avx2"


def test_a_forced_avx2_path_is_said_and_a_native_one_is_not(cpu) -> None:
    cpu(AVX512_BF16_CPU)
    assert report.forced_isa_note({}) == ""
    assert "ISA level avx512_bf16" in report.cpu_description()
    cpu(AVX2_CPU)
    assert report.forced_isa_note(FORCED) == ""  # the cap changes nothing on an AVX2 CPU: nothing is forced
    cpu(capped(AVX512_BF16_CPU, "avx2"))
    note = report.forced_isa_note(FORCED)
    assert note.startswith("AVX2 path forced on an AVX-512 + BF16 CPU with ")
    assert "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 TOKENYARD_CPU_ISA=avx2" in note
    assert "capped from avx512_bf16" in report.cpu_description()


def test_isa_environment_reexecs_once_and_refuses_what_the_cpu_cannot(cpu) -> None:
    cpu(AVX512_BF16_CPU)
    assert report.isa_environment(None, {}) is None
    environ = report.isa_environment("avx2", {"PATH": "/bin"})
    assert environ == {"PATH": "/bin", **FORCED}
    assert report.isa_environment("avx2", environ) is None  # already there: no second re-exec
    cpu(ARM_CPU)
    with pytest.raises(ValueError, match="avx2"):
        report.isa_environment("avx2", {})


def test_force_isa_reruns_the_same_command_in_the_forced_environment(cpu, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(report.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    for key in FORCED:
        monkeypatch.delenv(key, raising=False)
    cpu(AVX512_BF16_CPU)
    report.force_isa(argparse.Namespace(isa=None))
    assert calls == []
    report.force_isa(argparse.Namespace(isa="avx2"))
    [(path, argv, env)] = calls
    assert path == sys.executable and argv == [sys.executable, *sys.orig_argv[1:]]
    assert all(env[key] == value for key, value in FORCED.items())
    cpu(ARM_CPU)
    with pytest.raises(SystemExit, match="--isa avx2"):
        report.force_isa(argparse.Namespace(isa="avx2"))


def test_a_second_cpu_kind_adds_a_section_beside_the_first(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    report.write_section(out, "engine-avx512_bf16", "old figures")
    report.write_section(out, "engine-avx2", "new figures")
    report.write_section(out, "engine-avx2", "newer figures")
    text = out.read_text()
    assert "old figures" in text and "newer figures" in text and "new figures\n" not in text
    assert text.count("<!-- section:engine-avx2 -->") == 1


def test_engine_compares_bfloat16_only_where_it_is_native() -> None:
    assert engine.compared_dtypes(True) == [torch.bfloat16, torch.float32]
    assert engine.compared_dtypes(False) == [torch.float32]


def test_engine_says_why_bfloat16_is_missing(cpu) -> None:
    rows = [engine.Row("batch-1 decode, float32, tok/s", 30.0, "tok/s", "transformers", 15.0, ">= 1.5x")]
    args = argparse.Namespace(threads=2, sequential=6, batch_size=16, requests=128)
    cpu(AVX2_CPU)
    text = engine.render(rows, args)
    assert "CPU, avx2" in text and "No bfloat16 rows" in text and "| 2.00x | >= 1.5x | yes |" in text
    cpu(AVX512_BF16_CPU)
    assert "No bfloat16 rows" not in engine.render(rows, args)


def test_quantization_baseline_is_named_by_its_float(cpu) -> None:
    cpu(AVX2_CPU)
    rows = [
        quantization.Row(quantization.FLOAT, 514, 100.0, 800.0, "float32"),
        quantization.Row("int8", 129, 150.0, 700.0, "float32"),
        quantization.Row("int4, groups of 32", 114, 250.0, 900.0, "float32"),
    ]
    args = argparse.Namespace(threads=2, decode_tokens=128, throughput_tokens=64, runs=5)
    text = quantization.render(rows, args)
    assert "| batch-1 decode tok/s | vs float (float32) |" in text
    assert "| float (float32) | 514 | 100.0 | 1.00x |" in text
    assert "| int8 | 129 | 150.0 | 1.50x | >= 1.6x | NO | 700.0 | 0.88x |" in text
    assert "| int4, groups of 32 | 114 | 250.0 | 2.50x | >= 2.0x | yes | 900.0 | 1.12x |" in text
    assert all(settings["dtype"] == "auto" for settings in quantization.FORMATS.values())


# --- the report ---------------------------------------------------------------------------------------------------


def figures(ours_p50_ms: float, decode: float, throughput: float) -> llama_cpp.Figures:
    """Fixed figures: llama.cpp decodes at 100 tok/s, answers in 400 ms (p50) and makes 20 tok/s at concurrency 8."""
    ours = llama_cpp.ServerFigures(
        latency=[ours_p50_ms / 1e3] * 9 + [1.0],
        ttft=[0.02] * 10,
        output_tokens=[12] * 10,
        throughput=throughput,
        request_rate=throughput / 12,
        throughput_tokens=12.0,
        answers=['{"emotion": "happy", "learn_score": true}', "b"],
        prompt_tokens=[500, 502],
    )
    theirs = llama_cpp.ServerFigures(
        latency=[0.3] * 5 + [0.4] * 4 + [0.9],
        ttft=[0.1] * 10,
        output_tokens=[8] * 10,
        throughput=20.0,
        request_rate=2.5,
        throughput_tokens=8.0,
        answers=['{"emotion": "happy", "learn_score": true}', "c"],
        prompt_tokens=[500, 502],
    )
    features = ["SSE3", "AVX", "AVX2", "FMA"]
    return llama_cpp.Figures(2, "int4-g32", "float32", decode, 100.0, ours, theirs, "0.3.36", features)


def render(f: llama_cpp.Figures, *argv: str) -> str:
    return llama_cpp.render(f, llama_cpp.parse_args(["--threads", "2", "--requests", "10", *argv]), machine="test CPU")


def test_report_meets_every_goal(cpu) -> None:
    cpu(AVX2_CPU)
    text = render(figures(ours_p50_ms=80.0, decode=160.0, throughput=70.0))
    assert text.startswith("## tokenyard against llama.cpp: SmolLM2-135M-Instruct Q4_1, CPU, avx2")
    assert (
        "| batch-1 decode, tok/s | 160.0 | llama.cpp (llama-cpp-python `Llama`), same file | 100.0 | 1.60x | " in text
    )
    assert "| >= 1.5x | yes |" in text
    # p50 of ours: 80 ms; of theirs (nearest rank, 10 values): 300 ms
    assert "| classifier request, concurrency 1, p50 end to end (ms) | 80.0 |" in text
    assert "| 300.0 | 0.27x | <= 0.5x | yes |" in text
    assert "| classifier request, concurrency 1, p90 end to end (ms) | 80.0 |" in text
    assert "| classifier request, concurrency 1, p50 time to first token (ms) | 20.0 |" in text
    assert "| classifier request, concurrency 1, output tokens per request (mean) | 12.0 |" in text
    assert "| classifier requests, concurrency 8, output tok/s | 70.0 |" in text and "| 3.50x | >= 3x | yes |" in text
    assert "tokenyard's p50 end to end under 100 ms at concurrency 1: yes (80.0 ms)" in text
    assert "the same text on 1 of the first 2 concurrency-1 requests" in text
    assert "20 requests one at a time" in text and "the two taking turns over 2 rounds" in text
    assert "Machine: test CPU." in text and "(its kernels: avx2)." in text and "not the same ISA" not in text
    assert "`int4-g32` (`--dtype auto --quantization int4 --quantization-group-size 32`, computing in float32)" in text


def test_report_misses_goals_and_says_so(cpu) -> None:
    cpu(capped(AVX512_BF16_CPU, "avx2"))
    text = render(figures(ours_p50_ms=250.0, decode=140.0, throughput=50.0), "--speculative-config", '{"x": 1}')
    assert "| 1.40x | >= 1.5x | NO |" in text
    assert "| 0.83x | <= 0.5x | NO |" in text
    assert "| 2.50x | >= 3x | NO |" in text
    assert "under 100 ms at concurrency 1: NO (250.0 ms)" in text
    assert "`--speculative-config '{\"x\": 1}'`" in text
    assert " yes |" not in text


def test_report_flags_a_llama_cpp_built_for_another_isa(cpu) -> None:
    cpu(AVX512_BF16_CPU)
    text = render(figures(ours_p50_ms=80.0, decode=160.0, throughput=70.0))
    assert "llama.cpp was built for avx2 but tokenyard ran at avx512_bf16" in text


def test_rows_put_every_figure_beside_its_llama_cpp_baseline() -> None:
    rows = llama_cpp.rows(figures(ours_p50_ms=80.0, decode=160.0, throughput=70.0))
    assert [row.target for row in rows] == [">= 1.5x", "<= 0.5x", None, None, None, None, ">= 3x", None, None]
    assert all(row.baseline > 0 for row in rows)
    assert rows[-2].value == pytest.approx(70.0 / 12) and rows[-2].baseline == 2.5
    assert (rows[-1].value, rows[-1].baseline) == (12.0, 8.0)
