"""Speed that survives sharing the CPU: the classifier workload on the offline engine alone, then with one
competing busy process on the same cores, for the engine's defaults and for the behaviour before them (libgomp's
default waits, which spin, and as many threads as the host has cores), in one run.

    python -m tokenyard.benchmarks.shared_cpu --out docs/benchmarks.md

Each engine runs in its own process: libgomp reads its wait policy from the environment only when torch loads.
The competitor is a second torch process doing 1024x1024 float32 matmuls with torch's default threads (one per
core it sees) and libgomp's default waits, pinned to the engine's cores: what the issue's neighbours were (another
server, a test suite), one process that wants every core all the time. It asks for as much CPU as the engine, so a
fair share is half the solo figure. (A one-thread busy loop would leave the engine a whole core here; a loop per
core needs a process per core.)"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tokenyard.benchmarks.report import cpu_description, write_section
from tokenyard.runtime.threads import WAIT_POLICY, WAIT_POLICY_ENV, set_wait_policy

OUTPUT_TOKENS = 50
TARGET = 0.40  # the goal: shared / solo; a fair half-share is 0.50
BUSY_SIZE = 1024
MODULE = "tokenyard.benchmarks.shared_cpu"


@dataclass
class Settings:
    name: str
    wait: str  # for the table
    new: bool  # the engine's defaults; otherwise the behaviour before them


SETTINGS = [
    Settings("before: threads = host cores", "libgomp's default: spin 300,000 times, then sleep", new=False),
    Settings(
        "tokenyard's defaults: threads = usable cores", " ".join(f"{k}={v}" for k, v in WAIT_POLICY.items()), new=True
    ),
]


def clean_environment() -> dict[str, str]:
    """This environment without the settings that would decide the comparison (a user's own OpenMP choices)."""
    return {k: v for k, v in os.environ.items() if k not in (*WAIT_POLICY_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")}


# --- the competitor ---


def busy() -> None:
    """Matmuls forever, on every core torch sees; says "busy" once it runs."""
    import torch

    a, b = torch.randn(BUSY_SIZE, BUSY_SIZE), torch.randn(BUSY_SIZE, BUSY_SIZE)
    a @ b
    print("busy", flush=True)
    while True:
        a @ b


def start_busy() -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", MODULE, "--busy"], env=clean_environment(), stdout=subprocess.PIPE, text=True
    )
    os.sched_setaffinity(process.pid, os.sched_getaffinity(0))  # the engine's cores, whatever it inherited
    assert process.stdout is not None and process.stdout.readline().strip() == "busy", "the busy process failed"
    return process


# --- one engine, in its own process ---


def engine_main(settings: Settings, concurrency: int) -> None:
    """Load the engine, say "ready <threads>", then answer each line (seconds) with the tok/s measured over it."""
    import torch

    from tokenyard.benchmarks.workloads import classifier_conversations
    from tokenyard.runtime import LLM, SamplingParams

    threads = None if settings.new else os.cpu_count()
    llm = LLM(max_model_len=2048, max_num_seqs=16, kv_cache_memory_bytes=256 << 20, num_threads=threads)
    # Warm-up: the system prompt is now cached, as in serving (one token: the old settings are slow on a busy machine)
    llm.chat(classifier_conversations(2, seed=99), SamplingParams(temperature=0, max_tokens=1))
    prompts = [llm.engine.inputs.chat(c).token_ids for c in classifier_conversations(64, seed=1)]
    params = SamplingParams(temperature=0, max_tokens=OUTPUT_TOKENS, ignore_eos=True)
    print("ready", torch.get_num_threads(), flush=True)
    for line in sys.stdin:
        print(throughput(llm, prompts, params, float(line), concurrency), flush=True)


def throughput(llm, prompts: list[list[int]], params, seconds: float, concurrency: int) -> float:
    """Output tokens/s over ``seconds``, ``concurrency`` requests in flight (a finished one is replaced at once).
    Counted per step, so that a slow run still ends on time."""
    engine = llm.engine
    tokens: dict[str, int] = {}
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        while engine.num_requests < concurrency:
            request_id = f"{start}-{len(tokens)}"
            engine.add_request(request_id, {"prompt_token_ids": prompts[len(tokens) % len(prompts)]}, params)
            tokens[request_id] = 0
        for output in engine.step():
            tokens[output.request_id] = len(output.outputs[0].token_ids)
    elapsed = time.perf_counter() - start
    for request_id in tokens:
        engine.abort_request(request_id)
    return sum(tokens.values()) / elapsed


class EngineProcess:
    def __init__(self, index: int, concurrency: int) -> None:
        env = clean_environment()
        if SETTINGS[index].new:
            set_wait_policy(env)
        command = [sys.executable, "-m", MODULE, "--engine", str(index), "--concurrency", str(concurrency)]
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.threads = 0

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        word, threads = self.process.stdout.readline().split()
        assert word == "ready", "the engine failed to start"
        self.threads = int(threads)

    def measure(self, seconds: float) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{seconds}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())


def measure_all(args: argparse.Namespace) -> list[dict[str, float]]:
    """Both engines loaded side by side, then measured in turns (each idle while the other runs, the order
    rotating), alone, with the busy process, alone again: load from elsewhere on a shared machine drifts, and
    turns let it hit both alike. Medians of each engine's turns."""
    engines = [EngineProcess(index, args.concurrency) for index in range(len(SETTINGS))]
    try:
        for engine in engines:
            engine.wait_ready()
        solo: list[list[float]] = [[] for _ in engines]
        shared: list[list[float]] = [[] for _ in engines]

        def turns(into: list[list[float]]) -> None:
            for turn in range(args.rounds):
                for index in range(len(engines)) if turn % 2 == 0 else reversed(range(len(engines))):
                    into[index].append(engines[index].measure(args.seconds))

        for engine in engines:
            engine.measure(1)  # warm
        turns(solo)
        competitor = start_busy()
        try:
            turns(shared)
        finally:
            competitor.kill()
            competitor.wait()
        turns(solo)
        return [
            {"threads": e.threads, "solo": statistics.median(a), "shared": statistics.median(b)}
            for e, a, b in zip(engines, solo, shared, strict=True)
        ]
    finally:
        for engine in engines:
            engine.process.kill()
            engine.process.wait()


# --- the report ---


def render(results: list[dict[str, float]], args: argparse.Namespace, load: str) -> str:
    lines = [
        "## Sharing the CPU: the engine beside a busy process (`python -m tokenyard.benchmarks.shared_cpu`)",
        "",
        f"Classifier workload on the offline engine (SmolLM2-135M, bfloat16): a {OUTPUT_TOKENS}-token answer (EOS "
        f"ignored) to a ~460-token chat prompt whose system prompt is cached, {args.concurrency} request(s) in "
        f"flight; output tokens/s, the median of {args.seconds:g}-second turns alone ({2 * args.rounds}: half "
        f"before, half after) and beside one competing busy process on the same cores ({args.rounds}): a second "
        f"torch process doing {BUSY_SIZE}x{BUSY_SIZE} float32 matmuls with its default threads (one per core) and "
        "waits. It wants the cores as much as the engine does: a fair share is 0.50 of the solo figure. Each engine "
        "runs in its own process (libgomp reads its wait policy when torch loads); the two take turns, so that load "
        "from elsewhere hits both alike.",
        "",
        f"Machine: {cpu_description()}; load average before the run: {load}.",
        "",
        "| engine settings | torch threads | OpenMP waits | alone, tok/s | with the busy process, tok/s | ratio | "
        "target | met |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for settings, r in zip(SETTINGS, results, strict=True):
        ratio = r["shared"] / r["solo"]
        target, met = (f">= {TARGET:.2f}", "yes" if ratio >= TARGET else "NO") if settings.new else ("-", "-")
        lines.append(
            f"| {settings.name} | {r['threads']:.0f} | {settings.wait} | {r['solo']:.1f} | {r['shared']:.1f} | "
            f"{ratio:.2f} | {target} | {met} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="write the section into this markdown file")
    parser.add_argument("--seconds", type=float, default=3.0, help="each turn's length")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each engine in each phase")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("--engine", type=int, default=None, help=argparse.SUPPRESS)  # a child: one engine
    parser.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)  # a child: the competitor
    args = parser.parse_args()
    if args.busy:
        busy()
    elif args.engine is not None:
        engine_main(SETTINGS[args.engine], args.concurrency)
    else:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        report = render(measure_all(args), args, load)
        if args.out is not None:
            write_section(args.out, "shared-cpu", report)
        print(report)


if __name__ == "__main__":
    main()
