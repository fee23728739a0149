"""Speculative decoding benchmark on the packaged SmolLM2-135M: n-gram prompt lookup against plain
decoding, both measured in the same run, reported as ratios in docs/benchmarks.md.

    python -m tokenyard.benchmarks.spec_decode --out docs/benchmarks.md

1. A small sweep of num_speculative_tokens (k) and lookup sizes on batch-1 latency, looking up in the
   prompt only; the best setting is used for the rest.
2. Batch-1 latency on input-grounded prompts (extraction, summarisation that quotes its input, the
   classifier workload), with and without n-gram speculation, and the acceptance rate. The classifier
   workload is measured twice: looking up in the prompt only (vLLM's ngram), and in the outputs of recent
   requests too (the default), after 32 other classifier requests.
3. Output throughput with and without speculation at rising concurrency: where speculation stops paying
   (num_speculative_tokens drafted at every step, vLLM's way; ``disable_by_batch_size`` turns it off above a load).

Lookups in recent outputs would find a repeated request's own earlier answer, so every classifier request
measured is one this run has not sent before, and the repeated extraction and summarisation prompts are
measured with prompt-only lookup.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenyard.benchmarks.report import write_section
from tokenyard.benchmarks.workloads import classifier_conversations
from tokenyard.runtime import LLM, SamplingParams
from tokenyard.runtime.spec_decode.config import DEFAULT_RECENT_OUTPUTS

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
CONCURRENCY = (1, 4, 16, 32, 64)
MIN_THROUGHPUT_REQUESTS = 16  # at low concurrency a few requests would leave the rate to chance
CLASSIFIER = SamplingParams(temperature=0, max_tokens=50)


class FreshTurns:
    """Classifier conversations this run has not sent yet."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.seed = 1000

    def take(self, count: int) -> list:
        fresh = []
        while len(fresh) < count:
            self.seed += 1
            for conversation in classifier_conversations(count, seed=self.seed):
                if conversation[1]["content"] not in self.seen and len(fresh) < count:
                    self.seen.add(conversation[1]["content"])
                    fresh.append(conversation)
        return fresh


@dataclass
class Latency:
    name: str
    lookup: str
    plain_s: list[float]  # each request's latency, in order; spec_s: the same requests, speculating
    spec_s: list[float]
    acceptance: float
    same_tokens: int

    @property
    def requests(self) -> int:
        return len(self.plain_s)

    @property
    def speedup(self) -> float:
        """Mean latency without speculation over mean latency with it (the same requests on both sides)."""
        return sum(self.plain_s) / sum(self.spec_s)

    @property
    def median_request_speedup(self) -> float:
        return statistics.median(p / s for p, s in zip(self.plain_s, self.spec_s, strict=True))


def engine(spec: dict | None, args: argparse.Namespace) -> LLM:
    return LLM(
        dtype=args.dtype,
        max_model_len=2048,
        max_num_seqs=64,
        kv_cache_memory_bytes=1 << 30,
        speculative_config=spec,
        num_threads=args.threads,
    )


def ngram(k: int, lookup_min: int, lookup_max: int, recent_outputs: int = 0) -> dict:
    return {
        "method": "ngram",
        "num_speculative_tokens": k,
        "prompt_lookup_min": lookup_min,
        "prompt_lookup_max": lookup_max,
        "lookup_recent_outputs": recent_outputs,
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


def latency_row(name: str, lookup: str, plain: LLM, spec: LLM, batches: list[list], params: SamplingParams) -> Latency:
    """Each batch's requests one at a time, on the plain engine and then the speculating one (alternating,
    so drifting load on this shared machine hits both sides alike)."""
    stats = spec.engine.spec_decode_stats
    drafted, accepted = stats.num_draft_tokens, stats.num_accepted_tokens
    plain_s, spec_s, same = [], [], 0
    for conversations in batches:
        s, plain_tokens = one_by_one(plain, conversations, params)
        plain_s += s
        s, spec_tokens = one_by_one(spec, conversations, params)
        spec_s += s
        same += sum(a == b for a, b in zip(plain_tokens, spec_tokens, strict=True))
    acceptance = (stats.num_accepted_tokens - accepted) / max(stats.num_draft_tokens - drafted, 1)
    return Latency(name, lookup, plain_s, spec_s, acceptance, same)


def sweep(
    plain: LLM,
    args: argparse.Namespace,
    workloads: Callable[[], list[list[list]]],
    params: SamplingParams,
    warm_up: list | None = None,
) -> tuple[list[tuple[str, float, float]], dict]:
    """Batch-1 speedup of each setting on each workload ``workloads()`` returns (its batches, as
    ``latency_row`` takes them; fresh requests for every setting where they must be), scored by its slowest
    workload: one setting serves them all, and each must gain. Returns (setting, score, acceptance) rows and
    the best setting. With ``warm_up`` (classifier requests), lookups search recent outputs too, after those."""
    recent = DEFAULT_RECENT_OUTPUTS if warm_up else 0
    results, best, best_speedup = [], None, 0.0
    for k in args.sweep_k:
        for lookup_min, lookup_max in args.sweep_lookup:
            spec = ngram(k, lookup_min, lookup_max, recent)
            llm = engine(spec, args)
            llm.chat(warm_up or [CHAT[:1]], SamplingParams(temperature=0, max_tokens=50 if warm_up else 4))
            stats = llm.engine.spec_decode_stats
            accepted, drafted = stats.num_accepted_tokens, stats.num_draft_tokens  # the warm-up's are not counted
            speedup = min(latency_row("", "", plain, llm, batches, params).speedup for batches in workloads())
            acceptance = (stats.num_accepted_tokens - accepted) / max(stats.num_draft_tokens - drafted, 1)
            results.append((f"k={k}, lookup {lookup_min}..{lookup_max}", speedup, acceptance))
            if speedup > best_speedup:
                best, best_speedup = spec, speedup
            del llm
    return results, best


def throughput(llm: LLM, conversations: list, concurrency: int) -> float:
    """Output tokens/s of classifier requests submitted ``concurrency`` at a time."""
    params = CLASSIFIER
    start = time.perf_counter()
    tokens = 0
    for first in range(0, len(conversations), concurrency):
        outs = llm.chat(conversations[first : first + concurrency], params)
        tokens += sum(len(o.outputs[0].token_ids) for o in outs)
    return tokens / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    fresh = FreshTurns()
    warm_up = fresh.take(32)  # served first by every engine: the system prompt cached, outputs to look up in
    plain = engine(None, args)
    plain.chat(warm_up, CLASSIFIER)
    long_answer = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    grounded = [[[[chat]]] * args.sweep_repeats for chat in CHAT]  # per prompt, its requests one at a time
    swept, best = sweep(plain, args, lambda: grounded, long_answer)

    def classifier_batches() -> list[list]:
        return [fresh.take(args.classifier_requests) for _ in range(args.repeats)]

    swept_recent, best_recent = sweep(plain, args, lambda: [classifier_batches()], CLASSIFIER, warm_up)
    prompt_only, with_recent = engine(best, args), engine(best_recent, args)
    for llm in (prompt_only, with_recent):
        llm.chat(warm_up, CLASSIFIER)
    latencies = [
        latency_row(name, "prompt", plain, prompt_only, [[[chat]]] * args.grounded_repeats, long_answer)
        for name, chat in zip(GROUNDED, CHAT, strict=True)
    ]
    for lookup, spec in (("prompt", prompt_only), ("prompt + recent outputs", with_recent)):
        latencies.append(latency_row("classifier workload", lookup, plain, spec, classifier_batches(), CLASSIFIER))
    rates = []
    for concurrency in CONCURRENCY:
        conversations = fresh.take(max(concurrency * args.waves, MIN_THROUGHPUT_REQUESTS))
        rates.append((concurrency, *(throughput(llm, conversations, concurrency) for llm in (plain, with_recent))))
    return {
        "sweep": swept,
        "best": best,
        "sweep_recent": swept_recent,
        "best_recent": best_recent,
        "latency": latencies,
        "throughput": rates,
    }


def render(result: dict, args: argparse.Namespace) -> str:
    lines = [
        "## Speculative decoding: n-gram lookup, SmolLM2-135M-Instruct, CPU "
        "(`python -m tokenyard.benchmarks.spec_decode`)",
        "",
        f"Machine: {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}, dtype {args.dtype}. "
        "Baseline: the same engine without speculation, measured in the same run (requests alternate between the two).",
        "",
        f"Batch-1 latency, greedy, {args.max_tokens} tokens at most for extraction and summarisation (a made-up "
        "harbour report to quote), 50 for the classifier workload (its ~450-token system prompt cached). "
        f"Settings: {_setting(result['best'])} looking up in the prompt only, {_setting(result['best_recent'])} "
        "with recent outputs too (each the best of its sweep below). Classifier requests: "
        f"{args.repeats} x {args.classifier_requests} that this run had not sent before (after 32 others); the "
        f"extraction and summarisation prompts {args.grounded_repeats} times each. "
        "Speedup: the mean latency of the same requests without speculation over that with it; the median "
        "request's own speedup beside it.",
        "",
        "| prompt | n-gram lookup in | requests | plain (ms, mean) | n-gram (ms, mean) | speedup | target | met "
        "| median request's speedup | acceptance rate | same tokens |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for row in result["latency"]:
        lines.append(
            f"| {row.name} | {row.lookup} | {row.requests} | {statistics.mean(row.plain_s) * 1e3:.0f} | "
            f"{statistics.mean(row.spec_s) * 1e3:.0f} | {row.speedup:.2f}x | >= 1.5x | "
            f"{'yes' if row.speedup >= 1.5 else 'NO'} | {row.median_request_speedup:.2f}x | {row.acceptance:.2f} | "
            f"{row.same_tokens}/{row.requests} |"
        )
    lines += [
        "",
        "Throughput, classifier workload (50 tokens at most, EOS ends a request), requests submitted `concurrency` "
        f"at a time, {args.waves} waves or {MIN_THROUGHPUT_REQUESTS} requests, whichever is more; "
        "n-gram lookup in the prompt and recent outputs (the default), num_speculative_tokens drafted at every "
        "step (vLLM's behaviour). The two engines take the same requests in turn.",
        "",
        "| concurrency | plain (tok/s) | n-gram (tok/s) | ratio |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for concurrency, plain, speculative in result["throughput"]:
        lines.append(f"| {concurrency} | {plain:.1f} | {speculative:.1f} | {speculative / plain:.2f}x |")
    lines += [
        "",
        "Sweeps (batch-1 speedup, acceptance = accepted / drafted): the extraction and summarisation prompts "
        f"({args.sweep_repeats} requests each) looking up in the prompt only, each setting scored by the slower "
        "of the two (one setting serves both, and each must gain); fresh classifier requests looking up in "
        "recent outputs too.",
        "",
        "| setting | extraction, summarisation: the slower | acceptance | classifier workload | acceptance |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {name} | {speedup:.2f}x | {acceptance:.2f} | {recent_speedup:.2f}x | {recent_acceptance:.2f} |"
        for (name, speedup, acceptance), (_, recent_speedup, recent_acceptance) in zip(
            result["sweep"], result["sweep_recent"], strict=True
        )
    ]
    lines += [
        "",
        "`same tokens`: requests whose output equals plain decoding token for token. In bfloat16 a k+1-row verify "
        "may round differently from a 1-row decode (see LESSONS.md); in float32 they are equal (tests/runtime/"
        "test_spec_decode.py).",
        '`"disable_by_batch_size"` in `--speculative-config` still stops all proposals while more requests than '
        "that are running or waiting, whatever the budget says.",
        "",
    ]
    return "\n".join(lines)


def _setting(spec: dict) -> str:
    return f"k={spec['num_speculative_tokens']}, lookup {spec['prompt_lookup_min']}..{spec['prompt_lookup_max']}"


def _lookup(text: str) -> tuple[int, int]:
    low, _, high = text.partition("..")
    return int(low), int(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--threads", type=int, default=2)
    # float32: a verify step then computes exactly what one-row decodes compute, so both sides write the same text
    # and the latency ratio compares like with like (in bfloat16 the texts diverge and the ratio swings with them)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--classifier-requests", type=int, default=16, help="per repeat")
    parser.add_argument("--repeats", type=int, default=2)
    # each a few seconds: enough of them that one slow spell on this shared machine cannot decide the ratio
    parser.add_argument("--grounded-repeats", type=int, default=8, help="extraction and summarisation requests")
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--sweep-k", type=int, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--sweep-repeats", type=int, default=3, help="requests per grounded prompt and setting")
    parser.add_argument("--sweep-lookup", type=_lookup, nargs="+", default=[(1, 3), (2, 4)], help="MIN..MAX, e.g. 2..4")
    args = parser.parse_args()
    report = render(run(args), args)
    write_section(args.out, "spec_decode", report)
    print(report)


if __name__ == "__main__":
    main()
