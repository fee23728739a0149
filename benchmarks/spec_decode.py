"""Speculative decoding benchmark on the packaged SmolLM2-135M: n-gram prompt lookup against plain
decoding, both measured in the same run, reported as ratios in docs/benchmarks.md.

    python -m benchmarks.spec_decode --out docs/benchmarks.md

1. A small sweep of num_speculative_tokens (k) and lookup sizes on batch-1 latency; the best setting
   is used for the rest.
2. Batch-1 latency on input-grounded prompts (extraction, summarisation that quotes its input, the
   classifier workload), with and without n-gram speculation, and the acceptance rate.
3. Output throughput with and without speculation at rising concurrency: where speculation stops paying.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.bench.workloads import classifier_conversations

from benchmarks.report import write_section

# Written for this benchmark: a made-up report, so the prompts are grounded in text the model must quote.
PASSAGE = (
    "The harbour council of Port Ellery met on Tuesday 4 March to review the winter storm season. "
    "Harbour master Ines Calloway reported that the north breakwater lost 120 metres of stone in the "
    "January gale, and that repairs will cost 2.4 million euros. Fisheries officer Tomas Reyna said the "
    "cod landings fell by a third compared with last year, while mussel farms in the east bay were not "
    "damaged. Councillor Mae Okafor proposed a new early-warning siren on the lighthouse at Gull Point, "
    "to be tested every first Monday of the month. The ferry company, Blue Tern Lines, agreed to move its "
    "winter timetable back by two weeks. The council voted seven to two to start the breakwater repairs "
    "in April and to ask the regional fund for half of the cost."
)
GROUNDED = {
    "extraction": f"Extract the names of the people in this text, with their jobs.\n\nText: {PASSAGE}",
    "summarisation": f"Summarize this text:\n\n{PASSAGE}",
}
CHAT = [{"role": "user", "content": text} for text in GROUNDED.values()]
CONCURRENCY = (1, 4, 16, 32)


@dataclass
class Latency:
    name: str
    requests: int
    plain_ms: float
    spec_ms: float
    acceptance: float
    same_tokens: int

    @property
    def speedup(self) -> float:
        return self.plain_ms / self.spec_ms


def engine(spec: dict | None, args: argparse.Namespace) -> LLM:
    return LLM(
        dtype=args.dtype,
        max_model_len=2048,
        max_num_seqs=64,
        kv_cache_memory_bytes=1 << 30,
        speculative_config=spec,
    )


def ngram(k: int, lookup_min: int, lookup_max: int) -> dict:
    return {
        "method": "ngram",
        "num_speculative_tokens": k,
        "prompt_lookup_min": lookup_min,
        "prompt_lookup_max": lookup_max,
    }


def one_by_one(llm: LLM, conversations: list, params: SamplingParams) -> tuple[list[float], list[list[int]]]:
    """Seconds of each request alone (batch 1), and its tokens."""
    seconds, tokens = [], []
    for conversation in conversations:
        start = time.perf_counter()
        [out] = llm.chat(conversation, params)
        seconds.append(time.perf_counter() - start)
        tokens.append(out.outputs[0].token_ids)
    return seconds, tokens


def grounded_sets(args: argparse.Namespace) -> dict[str, tuple[list, SamplingParams]]:
    long_answer = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    return {
        "extraction": ([[CHAT[0]]], long_answer),
        "summarisation": ([[CHAT[1]]], long_answer),
        "classifier workload": (
            classifier_conversations(args.classifier_requests, seed=3),
            SamplingParams(temperature=0, max_tokens=50),
        ),
    }


def latency_row(name: str, plain: LLM, spec: LLM, conversations: list, params: SamplingParams, repeats: int) -> Latency:
    stats = spec.engine.spec_decode_stats
    drafted, accepted = stats.num_draft_tokens, stats.num_accepted_tokens
    plain_s, spec_s, same = [], [], 0
    for _ in range(repeats):  # alternate, so drifting load on this shared machine hits both sides alike
        s, plain_tokens = one_by_one(plain, conversations, params)
        plain_s += s
        s, spec_tokens = one_by_one(spec, conversations, params)
        spec_s += s
        same = sum(a == b for a, b in zip(plain_tokens, spec_tokens, strict=True))
    acceptance = (stats.num_accepted_tokens - accepted) / max(stats.num_draft_tokens - drafted, 1)
    return Latency(
        name,
        len(conversations),
        statistics.median(plain_s) * 1e3,
        statistics.median(spec_s) * 1e3,
        acceptance,
        same,
    )


def sweep(plain: LLM, args: argparse.Namespace) -> tuple[list[tuple[str, float, float]], dict]:
    """Batch-1 speedup of a few settings on the extraction and summarisation prompts."""
    conversations = [[c] for c in CHAT]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    base = statistics.median(one_by_one(plain, conversations, params)[0] + one_by_one(plain, conversations, params)[0])
    results, best, best_speedup = [], None, 0.0
    for k in args.sweep_k:
        for lookup_min, lookup_max in args.sweep_lookup:
            spec = ngram(k, lookup_min, lookup_max)
            llm = engine(spec, args)
            one_by_one(llm, conversations[:1], SamplingParams(temperature=0, max_tokens=4))  # warm-up
            seconds = one_by_one(llm, conversations, params)[0] + one_by_one(llm, conversations, params)[0]
            speedup = base / statistics.median(seconds)
            results.append(
                (f"k={k}, lookup {lookup_min}..{lookup_max}", speedup, llm.engine.spec_decode_stats.acceptance_rate)
            )
            if speedup > best_speedup:
                best, best_speedup = spec, speedup
            del llm
    return results, best


def throughput(llm: LLM, concurrency: int, args: argparse.Namespace) -> float:
    """Output tokens/s of ``concurrency`` classifier requests submitted together."""
    conversations = classifier_conversations(concurrency * args.waves, seed=11)
    params = SamplingParams(temperature=0, max_tokens=50)
    start = time.perf_counter()
    tokens = 0
    for wave in range(args.waves):
        outs = llm.chat(conversations[wave * concurrency : (wave + 1) * concurrency], params)
        tokens += sum(len(o.outputs[0].token_ids) for o in outs)
    return tokens / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    plain = engine(None, args)
    one_by_one(plain, [[CHAT[0]]], SamplingParams(temperature=0, max_tokens=4))  # warm-up
    swept, best = sweep(plain, args)
    spec = engine(best, args)
    plain.chat(
        classifier_conversations(2, seed=99), SamplingParams(temperature=0, max_tokens=1)
    )  # system prompt cached
    spec.chat(classifier_conversations(2, seed=99), SamplingParams(temperature=0, max_tokens=1))
    latencies = [
        latency_row(name, plain, spec, conversations, params, args.repeats)
        for name, (conversations, params) in grounded_sets(args).items()
    ]
    rates = [(c, throughput(plain, c, args), throughput(spec, c, args)) for c in CONCURRENCY]
    return {"sweep": swept, "best": best, "latency": latencies, "throughput": rates}


def render(result: dict, args: argparse.Namespace) -> str:
    best = result["best"]
    setting = (
        f"k={best['num_speculative_tokens']}, prompt_lookup_min={best['prompt_lookup_min']}, "
        f"prompt_lookup_max={best['prompt_lookup_max']}"
    )
    lines = [
        "## Speculative decoding: n-gram prompt lookup, SmolLM2-135M-Instruct, CPU "
        "(`python -m benchmarks.spec_decode`)",
        "",
        f"Machine: {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}, dtype {args.dtype}. "
        "Baseline: the same engine without speculation, measured in the same run (requests alternate between the two).",
        "",
        f"Batch-1 latency, greedy, {args.max_tokens} tokens at most for extraction and summarisation (a made-up "
        "harbour report to quote), 50 for the classifier workload (its ~450-token system prompt cached). "
        f"Setting: {setting} (best of the sweep below).",
        "",
        "| prompt | requests | plain (ms, median) | n-gram (ms, median) | speedup | target | met "
        "| acceptance rate | same tokens |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for row in result["latency"]:
        lines.append(
            f"| {row.name} | {row.requests} | {row.plain_ms:.0f} | {row.spec_ms:.0f} | {row.speedup:.2f}x | >= 1.5x | "
            f"{'yes' if row.speedup >= 1.5 else 'NO'} | {row.acceptance:.2f} | {row.same_tokens}/{row.requests} |"
        )
    lines += [
        "",
        "Throughput, classifier workload (50 tokens at most, EOS ends a request), requests submitted together:",
        "",
        "| concurrency | plain (tok/s) | n-gram (tok/s) | ratio |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for concurrency, plain, spec in result["throughput"]:
        lines.append(f"| {concurrency} | {plain:.1f} | {spec:.1f} | {spec / plain:.2f}x |")
    lines += [
        "",
        "Sweep (batch-1 speedup on the extraction and summarisation prompts; acceptance = accepted / drafted):",
        "",
        "| setting | speedup | acceptance rate |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {speedup:.2f}x | {acceptance:.2f} |" for name, speedup, acceptance in result["sweep"]]
    lines += [
        "",
        "`same tokens`: requests whose output equals plain decoding token for token. In bfloat16 a k+1-row verify "
        "may round differently from a 1-row decode (see LESSONS.md); in float32 they are equal (tests/runtime/"
        "test_spec_decode.py).",
        'Where the ratio falls below 1, set `"disable_by_batch_size"` in `--speculative-config` to the last '
        "concurrency that still gains: the engine then stops proposing while more sequences are running.",
        "",
    ]
    return "\n".join(lines)


def _lookup(text: str) -> tuple[int, int]:
    low, _, high = text.partition("..")
    return int(low), int(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--classifier-requests", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--sweep-k", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument(
        "--sweep-lookup", type=_lookup, nargs="+", default=[(1, 3), (2, 4), (3, 5)], help="MIN..MAX, e.g. 2..4"
    )
    args = parser.parse_args()
    report = render(run(args), args)
    write_section(args.out, "spec_decode", report)
    print(report)


if __name__ == "__main__":
    main()
