"""tokenyard against llama.cpp on the same CPU, side by side in one run, on the packaged Q4_1 GGUF with the same
thread count: batch-1 decode (llama-cpp-python's ``Llama`` in this process against tokenyard's best CPU setting),
the classifier request end to end at concurrency 1 through ``tokenyard serve`` and through llama.cpp's own OpenAI
server (``python -m llama_cpp.server``; warm prefix, the model's own stopping), and output throughput at concurrency
8 on both servers. Each server runs alone, in turn. One section per CPU kind (``llama_cpp-avx2``, ...).

    python -m tokenyard.benchmarks.llama_cpp --out docs/benchmarks.md
    python -m tokenyard.benchmarks.llama_cpp --isa avx2 --out docs/benchmarks.md   # the AVX2 path on AVX-512

llama-cpp-python (and, for its server, sse-starlette, starlette-context and pydantic-settings) is a benchmark-only
install (`make bench`), never a dependency of tokenyard; without it this script writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import torch

from tokenyard.benchmarks import serve_client
from tokenyard.benchmarks.engine import Row, decode_rate_engine, table
from tokenyard.benchmarks.quantization import FORMATS, llama_cpp_decoder
from tokenyard.benchmarks.quantization import load as load_engine
from tokenyard.benchmarks.report import (
    add_isa_argument,
    cpu_description,
    force_isa,
    percentile,
    section_for,
    write_section,
)
from tokenyard.benchmarks.serve import free_port, start_server, wait_until_ready
from tokenyard.runtime.cpu import cpu_isa
from tokenyard.runtime.loaders import packaged_model_path

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the name requests carry (llama.cpp's server serves whatever it has)
# --setting -> the quantization benchmark's FORMATS entry it loads (dtype "auto" in both: the CPU's fastest float)
SETTINGS = {"gguf": "GGUF Q4_1 kept packed", "int4-g32": "int4, groups of 32"}
# The default: the faster at batch-1 decode. int4 in groups of 32 decoded ~10-15% faster than the packed Q4_1 on
# the AVX2 path (float32: 167 against 146 tok/s, 2 threads) as on AVX-512 + BF16 (the quantization section). The
# packed Q4_1 computes with llama.cpp's very weights, so its answers match llama.cpp's more often (7 of 8 against 3).
DEFAULT_SETTING = "int4-g32"
SERVER_FLAGS = ["--max-model-len", "2048", "--max-num-seqs", "16", "--kv-cache-memory-bytes", str(512 << 20)]
MAX_TOKENS = 50
CONCURRENCY = 8
GOALS = {"decode": ">= 1.5x", "p50": "<= 0.5x", "throughput": ">= 3x"}  # tokenyard over llama.cpp
STRETCH_P50_MS = 100.0  # tokenyard's own p50 end to end, ms
LLAMA_SERVER_MODULES = ("llama_cpp", "sse_starlette", "starlette_context", "pydantic_settings")


_START = time.monotonic()


def progress(message: str) -> None:
    """A line on stderr per phase, with the seconds since the start (the run takes minutes)."""
    print(f"[{time.monotonic() - _START:6.1f} s] {message}", file=sys.stderr, flush=True)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument(
        "--threads", type=int, default=None, help="compute threads of both sides (default: this process's cores)"
    )
    parser.add_argument(
        "--setting",
        choices=sorted(SETTINGS),
        default=DEFAULT_SETTING,
        help="tokenyard's setting: gguf keeps the file's Q4_1 packed (--quantization gguf), int4-g32 requantizes "
        f"to int4 in groups of 32 (--quantization int4 --quantization-group-size 32); default {DEFAULT_SETTING}",
    )
    parser.add_argument(
        "--speculative-config", default=None, help="passed to `tokenyard serve` as is (default: no speculation)"
    )
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5, help="batch-1 decode: best of this many, taken in turn")
    parser.add_argument("--requests", type=int, default=20, help="classifier requests at concurrency 1, per round")
    parser.add_argument(
        "--throughput-requests", type=int, default=32, help=f"classifier requests at concurrency {CONCURRENCY}"
    )
    parser.add_argument("--compare", type=int, default=8, help="requests whose answers are compared (not timed)")
    parser.add_argument("--rounds", type=int, default=2, help="server rounds, the two servers taking turns")
    add_isa_argument(parser)
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = usable_cores()
    for name in ("threads", "decode_tokens", "runs", "requests", "throughput_requests", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.decode_tokens < 2:
        parser.error("--decode-tokens must be at least 2 (decode is timed after the first token)")
    if args.compare < 0 or args.compare > args.requests:
        parser.error("--compare must be between 0 and --requests")
    return args


def settings_flags(settings: dict[str, Any]) -> list[str]:
    """LLM(...) settings as `tokenyard serve` flags: quantization_group_size=32 -> --quantization-group-size 32."""
    flags: list[str] = []
    for key, value in settings.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def tokenyard_command(args: argparse.Namespace) -> list[str]:
    """`tokenyard serve`'s flags for --setting (the packaged model), after serve.py's engine flags."""
    flags = [*SERVER_FLAGS, "--num-threads", str(args.threads), *settings_flags(FORMATS[SETTINGS[args.setting]])]
    if args.speculative_config:
        flags += ["--speculative-config", args.speculative_config]
    return flags


def llama_command(model: Path, port: int, threads: int) -> list[str]:
    """llama.cpp's OpenAI server on the same file and threads. interrupt_requests off: by default a request that
    waits for the model cuts the one streaming short (it serves one at a time), which would truncate answers."""
    return [
        *(sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)),
        *("--n_ctx", "2048", "--n_threads", str(threads), "--n_threads_batch", str(threads)),
        *("--interrupt_requests", "False", "--verbose", "False"),
    ]


def llama_features(system_info: str) -> list[str]:
    """The CPU features llama.cpp was built with, from ``llama_print_system_info()``:
    "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | ..." -> ["SSE3", "AVX2"]."""
    features = []
    for part in system_info.replace("\n", "|").split("|"):
        name, sep, value = part.rpartition("=")
        if sep and value.strip() == "1":
            features.append(name.split(":")[-1].strip())
    return features


def llama_isa(features: Sequence[str]) -> str:
    """The widest x86 vector ISA among llama.cpp's build features, named as cpu_isa() names levels."""
    if any(f.startswith("AVX512") for f in features):
        return "avx512_bf16" if "AVX512_BF16" in features else "avx512"
    if "AVX2" in features:
        return "avx2"
    return "neon" if "NEON" in features else "x86-64" if "SSE3" in features else "generic"


@dataclass
class ServerFigures:
    """One server's figures, pooled over the rounds: concurrency 1 per request, concurrency 8 the best round."""

    latency: list[float] = field(default_factory=list)  # s, end to end, concurrency 1
    ttft: list[float] = field(default_factory=list)  # s
    output_tokens: list[int] = field(default_factory=list)  # per request, concurrency 1
    throughput: float = 0.0  # output tok/s at CONCURRENCY
    request_rate: float = 0.0  # requests/s at CONCURRENCY
    throughput_tokens: float = 0.0  # output tokens per request at CONCURRENCY (mean), in the same round
    answers: list[str] = field(default_factory=list)  # non-streamed answers to the first --compare requests
    prompt_tokens: list[int] = field(default_factory=list)  # as the server counted them (non-streamed usage)

    def p(self, values: str, q: float) -> float:
        """The q-th percentile of ``latency`` or ``ttft``, in ms."""
        return percentile(getattr(self, values), q) * 1e3


@dataclass
class Figures:
    threads: int
    setting: str
    dtype: str  # the float tokenyard computes in
    decode: float  # tokenyard, batch-1 decode tok/s
    llama_decode: float
    tokenyard: ServerFigures
    llama: ServerFigures
    llama_version: str
    llama_features: list[str]


def decode_figures(args: argparse.Namespace) -> tuple[float, float, str]:
    """Batch-1 decode tok/s of tokenyard's --setting and of llama.cpp, best of --runs taken in turn, and the dtype."""
    torch.set_num_threads(args.threads)
    llm = load_engine(FORMATS[SETTINGS[args.setting]], args.threads)
    dtype = str(llm.engine.executor.runner.loaded.dtype).removeprefix("torch.")
    reference = llama_cpp_decoder(args)
    assert reference is not None  # main() checked that llama_cpp is installed
    measures: dict[str, Callable[[], float]] = {
        "tokenyard": partial(decode_rate_engine, llm, args.decode_tokens),
        "llama.cpp": reference,
    }
    best = dict.fromkeys(measures, 0.0)
    for run in range(args.runs):
        for name, measure in measures.items():
            best[name] = max(best[name], measure())
        progress(f"decode run {run + 1}/{args.runs}: best so far " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()))
    del llm, reference, measures
    gc.collect()  # both models leave before the servers start
    return best["tokenyard"], best["llama.cpp"], dtype


def start_llama_server(log: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    model = packaged_model_path()
    assert model is not None
    port = free_port()
    process = subprocess.Popen(llama_command(model, port, threads), stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(process, f"{url}/v1/models", log, "llama.cpp's server")
    return process, url


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def load_args(url: str, requests: int, concurrency: int, seed: int) -> argparse.Namespace:
    """The classifier workload with the model's own stopping (max_tokens 50), as both servers are asked it."""
    return serve_client.classifier_load(url, requests, concurrency, seed)


def send(url: str, requests: int, concurrency: int, seed: int) -> tuple[list[serve_client.RequestResult], float]:
    settings = load_args(url, requests, concurrency, seed)
    results, duration = asyncio.run(serve_client.run_load(settings, serve_client.build_requests(settings)))
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} requests to {url} failed: {sorted(set(failed))[:3]}")
    return results, duration


def answers(url: str, requests: int, count: int) -> tuple[list[str], list[int]]:
    """The non-streamed answers to the first ``count`` concurrency-1 requests and their prompt token counts."""
    settings = load_args(url, requests, 1, seed=1)
    texts, prompts = [], []
    with httpx.Client(timeout=300) as client:
        for request in serve_client.build_requests(settings)[:count]:
            body = {"model": MODEL, "messages": request.messages, "max_tokens": MAX_TOKENS, "temperature": 0}
            reply = client.post(f"{url}/v1/chat/completions", json=body)
            reply.raise_for_status()
            data = reply.json()
            texts.append(data["choices"][0]["message"]["content"] or "")
            prompts.append(int(data["usage"]["prompt_tokens"]))
    return texts, prompts


def measure_server(url: str, args: argparse.Namespace, figures: ServerFigures, first_round: bool) -> None:
    """One round on one server: 2 warm-up requests (the system prompt is then cached, as in serving), the
    concurrency-1 requests, the concurrency-8 ones; on the first round, the answers to compare."""
    send(url, 2, 1, seed=99)
    results, _ = send(url, args.requests, 1, seed=1)
    figures.latency += [r.latency for r in results]
    figures.ttft += [r.ttft for r in results]
    figures.output_tokens += [r.output_tokens for r in results]
    results, duration = send(url, args.throughput_requests, CONCURRENCY, seed=2)
    tokens = sum(r.output_tokens for r in results)
    if tokens / duration > figures.throughput:
        figures.throughput, figures.request_rate = tokens / duration, len(results) / duration
        figures.throughput_tokens = tokens / len(results)
    if first_round and args.compare:
        figures.answers, figures.prompt_tokens = answers(url, args.requests, args.compare)


def server_figures(args: argparse.Namespace) -> tuple[ServerFigures, ServerFigures]:
    """Both servers, each alone: tokenyard then llama.cpp, --rounds times."""
    ours, theirs = ServerFigures(), ServerFigures()
    logs = Path(tempfile.mkdtemp(prefix="llama_cpp_bench_"))
    for round_ in range(args.rounds):
        progress(f"round {round_ + 1}: starting tokenyard serve (logs in {logs})")
        process, url = start_server(logs / f"tokenyard-{round_}.log", tokenyard_command(args))
        try:
            measure_server(url, args, ours, round_ == 0)
        finally:
            stop(process)
        progress(f"round {round_ + 1}: tokenyard done, p50 {ours.p('latency', 50):.1f} ms; starting llama.cpp's server")
        process, url = start_llama_server(logs / f"llama-{round_}.log", args.threads)
        try:
            measure_server(url, args, theirs, round_ == 0)
        finally:
            stop(process)
        progress(f"round {round_ + 1}: llama.cpp done, p50 {theirs.p('latency', 50):.1f} ms")
    return ours, theirs


def rows(f: Figures) -> list[Row]:
    """Every figure beside its llama.cpp baseline, with the goals where the issue set one."""
    c1 = "classifier request, concurrency 1"
    server = "llama.cpp's OpenAI server (llama_cpp.server)"
    ours, theirs = f.tokenyard, f.llama
    result = [
        Row(
            "batch-1 decode, tok/s",
            f.decode,
            "tok/s",
            "llama.cpp (llama-cpp-python `Llama`), same file",
            f.llama_decode,
            GOALS["decode"],
        ),
        Row(f"{c1}, p50 end to end (ms)", ours.p("latency", 50), "ms", server, theirs.p("latency", 50), GOALS["p50"]),
        Row(f"{c1}, p90 end to end (ms)", ours.p("latency", 90), "ms", server, theirs.p("latency", 90), None),
        Row(f"{c1}, p50 time to first token (ms)", ours.p("ttft", 50), "ms", server, theirs.p("ttft", 50), None),
        Row(f"{c1}, p90 time to first token (ms)", ours.p("ttft", 90), "ms", server, theirs.p("ttft", 90), None),
        Row(
            f"{c1}, output tokens per request (mean)",
            statistics.fmean(ours.output_tokens),
            "tokens",
            server,
            statistics.fmean(theirs.output_tokens),
            None,
        ),
        Row(
            f"classifier requests, concurrency {CONCURRENCY}, output tok/s",
            ours.throughput,
            "tok/s",
            f"{server}, one request at a time",
            theirs.throughput,
            GOALS["throughput"],
        ),
        Row(
            f"classifier requests, concurrency {CONCURRENCY}, requests/s",
            ours.request_rate,
            "req/s",
            f"{server}, one request at a time",
            theirs.request_rate,
            None,
        ),
        Row(
            f"classifier requests, concurrency {CONCURRENCY}, output tokens per request (mean)",
            ours.throughput_tokens,
            "tokens",
            server,
            theirs.throughput_tokens,
            None,
        ),
    ]
    return result


def stretch_line(p50_ms: float) -> str:
    met = "yes" if p50_ms < STRETCH_P50_MS else "NO"
    return (
        f"Stretch goal, tokenyard's p50 end to end under {STRETCH_P50_MS:.0f} ms at concurrency 1: {met} "
        f"({p50_ms:.1f} ms)."
    )


def answers_line(ours: ServerFigures, theirs: ServerFigures) -> str:
    if not ours.answers:
        return "Answers were not compared (--compare 0)."
    same = sum(a.strip() == b.strip() for a, b in zip(ours.answers, theirs.answers, strict=True))
    prompts = (
        f"prompt tokens (mean, as each server counts them): tokenyard {statistics.fmean(ours.prompt_tokens):.1f}, "
        f"llama.cpp {statistics.fmean(theirs.prompt_tokens):.1f}"
    )
    return (
        f"The two answer the same text on {same} of the first {len(ours.answers)} concurrency-1 requests (asked "
        f'again unstreamed; e.g. tokenyard: "{_short(ours.answers[0])}", llama.cpp: "{_short(theirs.answers[0])}"); '
        f"{prompts}."
    )


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render(f: Figures, args: argparse.Namespace, machine: str | None = None) -> str:
    """The section's markdown; ``machine`` defaults to this CPU's description (tests pass their own)."""
    isa = cpu_isa()
    built = llama_isa(f.llama_features)
    flags = " ".join(settings_flags(FORMATS[SETTINGS[f.setting]]))
    mismatch = (
        f" **llama.cpp was built for {built} but tokenyard ran at {isa.name}: not the same ISA on both sides.**"
        if built != isa.name and isa.arch == "x86_64"
        else ""
    )
    lines = [
        f"## tokenyard against llama.cpp: SmolLM2-135M-Instruct Q4_1, CPU, {isa.name} "
        "(`python -m tokenyard.benchmarks.llama_cpp`)",
        "",
        f"Machine: {machine or cpu_description()}. Both sides: the packaged Q4_1 GGUF, {f.threads} compute threads "
        "(tokenyard `--num-threads`, llama.cpp `n_threads` and `n_threads_batch`), measured in one run.",
        f"tokenyard: `{f.setting}` (`{flags}`, computing in {f.dtype}); `tokenyard serve` adds "
        f"`{' '.join(SERVER_FLAGS)}`"
        + (f" `--speculative-config '{args.speculative_config}'`" if args.speculative_config else "")
        + f". llama.cpp: llama-cpp-python {f.llama_version}, built with {' '.join(f.llama_features) or 'no features'} "
        f"(its kernels: {built}).{mismatch}",
        "",
        *table(rows(f)),
        "",
        stretch_line(f.tokenyard.p("latency", 50)),
        "",
        f"Batch-1 decode: {args.decode_tokens} tokens after a short prompt, timed after the first, best of "
        f"{args.runs} runs taken in turn, both in this process. The classifier request: the workload's ~450-token "
        f"system prompt and one user turn, temperature 0, max_tokens {MAX_TOKENS}, each model stopping on its own "
        f"(no ignore_eos), streamed; {args.requests * args.rounds} requests one at a time after 2 warm-up requests "
        f"(the system prompt is then in both servers' caches: tokenyard's prefix cache, llama.cpp's previous-prompt "
        f"KV), then {args.throughput_requests} at concurrency {CONCURRENCY}. Each server ran alone"
        + (f", the two taking turns over {args.rounds} rounds" if args.rounds > 1 else "")
        + "; the load generator (`tokenyard bench serve`'s) shares the CPU with the server on both sides.",
        answers_line(f.tokenyard, f.llama) + " Where the answers differ their lengths do too, and so output tok/s "
        "weighs different work on the two sides: requests/s compares the same requests.",
        "llama.cpp's server serves one request at a time (a lock around its one model), so its figure at "
        f"concurrency {CONCURRENCY} is that; it runs with `--interrupt_requests False` (by default a waiting request "
        "cuts the streaming one short). Its streams carry no usage: its output tokens are the streamed chunks, one "
        "per token.",
        "",
    ]
    return "\n".join(lines)


def llama_server_missing() -> list[str]:
    return [name for name in LLAMA_SERVER_MODULES if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    force_isa(args)
    missing = llama_server_missing()
    if missing:
        print(
            f"llama.cpp's side is not installed ({', '.join(missing)}): `pip install llama-cpp-python sse-starlette "
            f"starlette-context pydantic-settings`. Section {section_for('llama_cpp')} left as it was."
        )
        return
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    features = llama_features(info.decode() if isinstance(info, bytes) else str(info))
    progress(f"batch-1 decode: tokenyard {args.setting} against llama.cpp, {args.threads} threads")
    decode, llama_decode, dtype = decode_figures(args)
    ours, theirs = server_figures(args)
    figures = Figures(
        args.threads, args.setting, dtype, decode, llama_decode, ours, theirs, llama_cpp.__version__, features
    )
    report = render(figures, args)
    write_section(args.out, section_for("llama_cpp"), report)
    print(report)


if __name__ == "__main__":
    main()
