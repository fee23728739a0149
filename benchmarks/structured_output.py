"""Structured output benchmark on the packaged SmolLM2-135M: the classifier request with its JSON Schema
(evals/testsets/classifier/schema.json, enforced by llguidance) against the same request without it, both measured
in the same run, reported side by side in docs/benchmarks.md.

    python -m tokenyard.benchmarks.structured_output --out docs/benchmarks.md

1. End to end through `tokenyard serve` (`tokenyard bench serve`'s client, `response_format` json_schema), one
   request at a time: latency p50/p95, TTFT p50, output tokens. The two sides take the same user turns in pairs,
   and which goes first alternates from pair to pair (the second of a pair finds the user turn in the prefix cache:
   each side gets as many such turns as the other, and drifting load on the machine hits both alike).
2. Mask cost at batch 1, on the offline engine: the seconds llguidance spends on each step's allowed-token mask
   (``engine.structured_outputs.stats.mask_seconds``), median and p99, as a share of the median decode step
   without a constraint; and the whole decode step with the schema beside it (the mask applied in the sampler too).
3. Throughput at 16 concurrent requests through the server: with the schema, without it, and without it but each
   request generating exactly as many tokens as its constrained answer had (equal work: the per-token cost of the
   constraint alone). Constrained answers are shorter, so they do less work per request: tokens/s and requests/s
   are both reported, and the goal is on tokens/s (per token).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import aiohttp
import jsonschema
import torch

from tokenyard.benchmarks import serve_client as bench
from tokenyard.benchmarks.report import cpu_description, percentile, write_section
from tokenyard.benchmarks.serve import ENGINE_FLAGS, start_server
from tokenyard.benchmarks.workloads import classifier_conversations
from tokenyard.runtime import LLM, SamplingParams

SCHEMA_PATH = Path(str(resources.files("tokenyard.evals") / "testsets" / "classifier" / "schema.json"))
MAX_TOKENS = 50  # the classifier workload's request: temperature 0, max_tokens 50
CONCURRENCY = 16
SIDES = ("schema", "free", "equal work")


def load_args(url: str, requests: int, seed: int, schema: bool, ignore_eos: bool = False) -> argparse.Namespace:
    """The classifier workload at CONCURRENCY, with the classifier's schema as response_format or without."""
    return bench.classifier_load(
        url, requests, CONCURRENCY, seed, ignore_eos=ignore_eos, response_format=SCHEMA_PATH if schema else None
    )


# --- 1. end to end, one request at a time -----------------------------------------------------------------------
async def paired_latency(url: str, pairs: int) -> dict[str, list[bench.RequestResult]]:
    free_args = load_args(url, pairs, seed=1, schema=False)
    sides = {"free": bench.build_requests(free_args), "schema": bench.build_requests(load_args(url, pairs, 1, True))}
    results: dict[str, list[bench.RequestResult]] = {"schema": [], "free": []}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as client:
        for index in range(pairs):
            order = ("schema", "free") if index % 2 == 0 else ("free", "schema")
            for side in order:
                result = await bench.send(client, free_args, sides[side][index])
                if not result.ok:
                    raise RuntimeError(f"a {side} request failed: {result.error}")
                results[side].append(result)
    return results


# --- 3. throughput at 16 concurrent requests --------------------------------------------------------------------
def throughput(url: str, rounds: int, requests: int) -> dict[str, dict[str, float]]:
    """Per side: output tokens, requests and seconds, summed over the rounds. Each round takes its own user turns:
    first sent once with the schema, untimed (every prompt is then in the prefix cache for all three sides alike,
    and each request's constrained length is known), then timed on each side, the order rotating by round."""
    totals = {side: {"tokens": 0.0, "requests": 0.0, "seconds": 0.0} for side in SIDES}
    for round_ in range(rounds):
        seed = 100 + round_
        schema_args = load_args(url, requests, seed, schema=True)
        free_args = load_args(url, requests, seed, schema=False)
        equal_args = load_args(url, requests, seed, schema=False, ignore_eos=True)
        schema_requests = bench.build_requests(schema_args)
        free_requests = bench.build_requests(free_args)
        first, _ = asyncio.run(bench.run_load(schema_args, schema_requests))
        lengths = [max(1, r.output_tokens) for r in first]
        runs = {
            "schema": (schema_args, schema_requests),
            "free": (free_args, free_requests),
            "equal work": (equal_args, [replace(r, max_tokens=n) for r, n in zip(free_requests, lengths, strict=True)]),
        }
        for side in SIDES[round_ % 3 :] + SIDES[: round_ % 3]:
            results, seconds = asyncio.run(bench.run_load(*runs[side]))
            failed = [r.error for r in results if not r.ok]
            if failed:
                raise RuntimeError(f"{len(failed)} {side} requests failed: {failed[0]}")
            totals[side]["tokens"] += sum(r.output_tokens for r in results)
            totals[side]["requests"] += len(results)
            totals[side]["seconds"] += seconds
    return totals


def server_run(args: argparse.Namespace) -> tuple[dict[str, list[bench.RequestResult]], dict[str, dict[str, float]]]:
    process, url = start_server(Path(tempfile.mkdtemp()) / "server.log")
    try:
        for schema in (True, False):  # the system prompt cached and the schema compiled, as on a warm server
            warm = load_args(url, 2, seed=99, schema=schema)
            asyncio.run(bench.run_load(warm, bench.build_requests(warm)))
        latency = asyncio.run(paired_latency(url, args.pairs))
        rates = throughput(url, args.rounds, args.requests)
        return latency, rates
    finally:
        process.terminate()
        process.wait(timeout=60)


# --- 2. mask cost at batch 1 ------------------------------------------------------------------------------------
@dataclass
class MaskCost:
    free_steps: list[float]  # decode steps (after the prefill step) of the requests without a constraint
    schema_steps: list[float]  # the same with the schema
    mask_seconds: list[float]  # per step of the constrained requests, prefill step included
    follows_schema: dict[str, int]  # answers that parse and follow the schema, per side
    requests: int
    compile_seconds: float
    dtype: str  # what the default dtype resolved to on this machine (the server's too)


def one_request(llm: LLM, request_id: str, conversation: list[dict], params: SamplingParams) -> tuple[list[float], str]:
    """Seconds of each engine step serving this request alone, and its answer."""
    engine = llm.engine
    engine.add_request(request_id, engine.inputs.chat(conversation), params)
    seconds, text = [], ""
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        outputs = engine.step()
        seconds.append(time.perf_counter() - start)
        text = next((o.outputs[0].text for o in outputs if o.request_id == request_id), text)
    return seconds, text


def mask_cost(args: argparse.Namespace, schema: dict) -> MaskCost:
    torch.set_num_threads(args.threads)
    llm = LLM(max_model_len=2048, max_num_seqs=CONCURRENCY, kv_cache_memory_bytes=512 << 20, num_threads=args.threads)
    params = {
        "free": SamplingParams(temperature=0, max_tokens=MAX_TOKENS),
        "schema": SamplingParams(temperature=0, max_tokens=MAX_TOKENS, structured_outputs={"json": schema}),
    }
    for warm in params.values():  # the system prompt cached, the schema compiled
        llm.chat(classifier_conversations(2, seed=99), warm)
    structured = llm.engine.structured_outputs
    constraint = params["schema"].structured_outputs
    assert constraint is not None
    compile_seconds = structured.compile(constraint).compile_seconds  # cached: the warm-up's compile
    dtype = str(llm.engine.executor.runner.loaded.dtype).removeprefix("torch.")
    cost = MaskCost([], [], [], {"free": 0, "schema": 0}, args.mask_requests, compile_seconds, dtype)
    for index, conversation in enumerate(classifier_conversations(args.mask_requests, seed=2)):
        for side in ("schema", "free") if index % 2 == 0 else ("free", "schema"):
            structured.stats.mask_seconds.clear()
            steps, text = one_request(llm, f"{side}-{index}", conversation, params[side])
            (cost.schema_steps if side == "schema" else cost.free_steps).extend(steps[1:])
            if side == "schema":
                cost.mask_seconds.extend(structured.stats.mask_seconds)
            cost.follows_schema[side] += follows(text, schema)
    llm.shutdown()
    return cost


def follows(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


# --- the report ---------------------------------------------------------------------------------------------------
def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def render(
    latency: dict[str, list[bench.RequestResult]],
    cost: MaskCost,
    rates: dict[str, dict[str, float]],
    args: argparse.Namespace,
) -> str:
    def e2e(side: str, q: float) -> float:
        return percentile([r.latency for r in latency[side]], q) * 1e3

    def ttft(side: str) -> float:
        return percentile([r.ttft for r in latency[side]], 50) * 1e3

    def tokens(side: str) -> float:
        return statistics.fmean(r.output_tokens for r in latency[side])

    lines = [
        "## Structured output: the classifier schema through llguidance, SmolLM2-135M-Instruct, CPU "
        "(`python -m tokenyard.benchmarks.structured_output`)",
        "",
        f"Machine: {cpu_description()}; run on {datetime.date.today().isoformat()}, torch {torch.__version__}, default "
        f"dtype ({cost.dtype} here). The classifier request (its ~450-token system prompt, a short user turn, "
        f"temperature 0, max_tokens {MAX_TOKENS}, EOS ends it) with `response_format` json_schema = "
        "`evals/testsets/classifier/schema.json` (strict) against the same request without it, in the same run. "
        "A constrained answer ends as soon as its JSON is complete, and the tokens its grammar forces (the keys and "
        "punctuation) are computed in the step of the token before them (jump-forward).",
        "",
        f"End to end through `tokenyard serve` ({' '.join(ENGINE_FLAGS)}), one request at a time: {args.pairs} user "
        "turns, each sent once per side in pairs whose order alternates (the second of a pair finds the user turn "
        "cached; each side is second as often as the other).",
        "",
        "| measure | with the schema | without | ratio | goal | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for name, schema_value, free_value, goal in (
        ("end to end p50 (ms)", e2e("schema", 50), e2e("free", 50), "< 1x"),
        ("end to end p95 (ms)", e2e("schema", 95), e2e("free", 95), "-"),
        ("TTFT p50 (ms)", ttft("schema"), ttft("free"), "-"),
        ("output tokens, mean", tokens("schema"), tokens("free"), "< 1x"),
    ):
        ratio = schema_value / free_value
        met = _met(ratio < 1) if goal != "-" else "-"
        lines.append(f"| {name} | {schema_value:.1f} | {free_value:.1f} | {ratio:.2f}x | {goal} | {met} |")

    free_step = statistics.median(cost.free_steps)
    mask_p50, mask_p99 = percentile(cost.mask_seconds, 50), percentile(cost.mask_seconds, 99)
    schema_step = statistics.median(cost.schema_steps)
    lines += [
        "",
        f"Mask cost at batch 1, offline engine (`LLM`, {_count(args.threads, 'torch thread')}): "
        f"{_count(cost.requests, 'request')} per "
        f"side, one at a time, alternating; {len(cost.free_steps)} decode steps without the schema, "
        f"{len(cost.schema_steps)} with it, {len(cost.mask_seconds)} masks (one per constrained step, the prefill "
        "step's included). Share: of the median decode step without a constraint.",
        "",
        "| measure | ms | share of the unconstrained step | goal | met |",
        "| --- | ---: | ---: | --- | --- |",
        f"| decode step without a constraint, median | {free_step * 1e3:.2f} | 100% | - | - |",
        f"| mask per step, median | {mask_p50 * 1e3:.3f} | {mask_p50 / free_step:.1%} | <= 5% | "
        f"{_met(mask_p50 <= 0.05 * free_step)} |",
        f"| mask per step, p99 | {mask_p99 * 1e3:.3f} | {mask_p99 / free_step:.1%} | - | - |",
        f"| decode step with the schema, median (mask and its use in the sampler) | {schema_step * 1e3:.2f} | "
        f"{schema_step / free_step:.1%} | - | - |",
        "",
        f"The schema compiled once, in {cost.compile_seconds * 1e3:.0f} ms (then cached). Answers that parse as JSON "
        f"and follow the schema: {cost.follows_schema['schema']}/{cost.requests} with it, "
        f"{cost.follows_schema['free']}/{cost.requests} without.",
    ]

    def rate(side: str, key: str) -> float:
        return rates[side][key] / rates[side]["seconds"]

    lines += [
        "",
        f"Throughput through the server, {CONCURRENCY} concurrent requests, {_count(args.rounds, 'round')} of "
        f"{args.requests} requests per side. Each round's prompts are sent once with the schema first, untimed: all "
        "three sides then find every prompt in the prefix cache, and each request's constrained length is known. "
        "Equal work: without the schema, each request generating exactly its constrained answer's token count (EOS "
        "ignored). The order of the sides rotates by round. The goal is on output tokens/s (per token), constrained "
        "over free; requests/s favours the side with the shorter answers. A round ends with its longest answers "
        "running at a lower batch, so a side whose answers vary in length (free answers that run to max_tokens) "
        "loses tokens/s to that tail.",
        "",
        "| side | output tokens/s | requests/s | output tokens per request | tokens/s ratio | requests/s ratio "
        "| goal | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    base = {key: rate("free", key) for key in ("tokens", "requests")}
    for side, title in (("free", "without the schema"), ("schema", "with the schema"), ("equal work", "equal work")):
        tok, req = rate(side, "tokens"), rate(side, "requests")
        goal, met = ("-", "-")
        if side == "schema":
            goal, met = ">= 0.9x", _met(tok / base["tokens"] >= 0.9)
        lines.append(
            f"| {title} | {tok:.1f} | {req:.2f} | {rates[side]['tokens'] / rates[side]['requests']:.1f} | "
            f"{tok / base['tokens']:.2f}x | {req / base['requests']:.2f}x | {goal} | {met} |"
        )
    equal = rate("equal work", "tokens")
    lines += [
        "",
        f"With the schema against equal work without it: {rate('schema', 'tokens') / equal:.2f}x the output tokens/s "
        "(the constraint's own per-token cost at this load).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the offline engine (part 2)")
    parser.add_argument("--pairs", type=int, default=32, help="user turns of part 1, each sent once per side")
    parser.add_argument("--mask-requests", type=int, default=16, help="requests per side in part 2")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of part 3 (the side order rotates by round)")
    parser.add_argument("--requests", type=int, default=48, help="requests per side and round in part 3")
    parser.add_argument("--quick", action="store_true", help="a short check run: small counts, noisy figures")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.mask_requests, args.rounds, args.requests = 6, 4, 1, CONCURRENCY
    schema = json.loads(SCHEMA_PATH.read_text())
    latency, rates = server_run(args)
    cost = mask_cost(args, schema)
    report = render(latency, cost, rates, args)
    write_section(args.out, "structured_output", report)
    print(report)


if __name__ == "__main__":
    main()
