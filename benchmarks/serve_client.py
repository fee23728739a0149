"""``tokenyard bench serve``: a load generator shaped like ``vllm bench serve``, for any OpenAI-compatible
server. Definitions follow vLLM's: TTFT to the first streamed content; TPOT = (latency - TTFT) /
(output tokens - 1) per request; ITL pools every gap between streamed chunks."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
from tqdm import tqdm

from tokenyard.benchmarks.workloads import CLASSIFIER_SYSTEM_PROMPT, classifier_user_turns

_WORDS = [
    "time",
    "person",
    "year",
    "way",
    "day",
    "thing",
    "man",
    "world",
    "life",
    "hand",
    "part",
    "child",
    "eye",
    "woman",
    "place",
    "work",
    "week",
    "case",
    "point",
    "government",
    "company",
    "number",
    "group",
    "problem",
    "fact",
    "river",
    "mountain",
    "music",
    "garden",
    "window",
    "question",
    "answer",
]


@dataclass
class BenchRequest:
    messages: list[dict] | None  # chat endpoint
    prompt: str | None  # completions endpoint
    max_tokens: int
    response_format: dict | None = None  # OpenAI's response_format, sent as is


# What OpenAI's response_format.type can be; a JSON Schema's own "type" is a JSON type ("object", "array", ...).
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


def load_response_format(path: Path) -> dict:
    """The response_format a --response-format file asks for: the file itself when it is a response_format object
    (its "type" is text, json_object or json_schema), else a bare JSON Schema, sent strictly and named after the
    file: {"type": "json_schema", "json_schema": {"name": <file stem>, "schema": <the file>, "strict": true}}."""
    try:
        loaded = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"--response-format {path}: {error}") from None
    if not isinstance(loaded, dict):
        raise SystemExit(f"--response-format {path}: a JSON object (a JSON Schema or a response_format), not this")
    if loaded.get("type") in RESPONSE_FORMAT_TYPES:
        return loaded
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", Path(path).stem)[:64] or "schema"  # OpenAI's pattern for the name
    return {"type": "json_schema", "json_schema": {"name": name, "schema": loaded, "strict": True}}


def describe_response_format(form: dict | None) -> str:
    """One line for the summary: "none", "json_object", or "json_schema <name>"."""
    if form is None:
        return "none"
    name = (form.get("json_schema") or {}).get("name")
    return f"{form['type']} {name}" if name else str(form["type"])


@dataclass
class RequestResult:
    ok: bool
    latency: float = 0.0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""


def classifier_load(
    url: str,
    requests: int,
    concurrency: int | None,
    seed: int,
    *,
    ignore_eos: bool = False,
    response_format: Path | None = None,
) -> argparse.Namespace:
    """The settings ``tokenyard bench serve --dataset prefix`` would be given: the classifier workload (a shared
    ~450-token system prompt, short user turns, max_tokens 50) on the chat endpoint, all requests at once up to
    ``concurrency``."""
    return argparse.Namespace(
        base_url=url,
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        api_key=None,
        endpoint="chat",
        dataset="prefix",
        output_len=50,
        ignore_eos=ignore_eos,
        num_prompts=requests,
        request_rate=float("inf"),
        max_concurrency=concurrency,
        seed=seed,
        quiet=True,
        dataset_path=None,
        input_len=0,
        response_format=response_format,
    )


def build_requests(args: argparse.Namespace) -> list[BenchRequest]:
    """The requests to send; each carries the --response-format (when given) for ``send`` to pass on."""
    requests = _build_requests(args)
    path = getattr(args, "response_format", None)  # absent from callers' own namespaces (benchmarks/serve.py)
    if path is not None:
        form = load_response_format(path)
        for request in requests:
            request.response_format = form
    return requests


def _build_requests(args: argparse.Namespace) -> list[BenchRequest]:
    rng = random.Random(args.seed)
    chat = args.endpoint == "chat"
    if args.dataset == "prefix":
        turns = classifier_user_turns(args.num_prompts, args.seed)
        return (
            [
                BenchRequest(
                    [{"role": "system", "content": CLASSIFIER_SYSTEM_PROMPT}, {"role": "user", "content": t}],
                    None,
                    args.output_len,
                )
                for t in turns
            ]
            if chat
            else [BenchRequest(None, f"{CLASSIFIER_SYSTEM_PROMPT}\n{t}\n", args.output_len) for t in turns]
        )
    if args.dataset == "random":
        texts = [" ".join(rng.choice(_WORDS) for _ in range(args.input_len)) for _ in range(args.num_prompts)]
        lengths = [args.output_len] * args.num_prompts
    else:
        texts, lengths = _sharegpt(Path(args.dataset_path), args.num_prompts, args.output_len, rng)
    if chat:
        return [BenchRequest([{"role": "user", "content": t}], None, n) for t, n in zip(texts, lengths, strict=True)]
    return [BenchRequest(None, t, n) for t, n in zip(texts, lengths, strict=True)]


def _sharegpt(path: Path, count: int, output_len: int | None, rng: random.Random) -> tuple[list[str], list[int]]:
    conversations = [c["conversations"] for c in json.loads(path.read_text()) if len(c.get("conversations", [])) >= 2]
    if not conversations:
        raise SystemExit(f"{path}: no ShareGPT conversations with a human turn and a reply")
    rng.shuffle(conversations)
    picked = [conversations[i % len(conversations)] for i in range(count)]
    # without --output-len, each request asks for about as many tokens as the recorded reply had words
    lengths = [output_len or max(4, int(len(c[1]["value"].split()) * 1.3)) for c in picked]
    return [c[0]["value"] for c in picked], lengths


async def send(client: aiohttp.ClientSession, args: argparse.Namespace, request: BenchRequest) -> RequestResult:
    body: dict = {
        "model": args.model,
        "max_tokens": request.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": args.ignore_eos,
    }
    if request.messages is not None:
        url, body["messages"] = f"{args.base_url}/v1/chat/completions", request.messages
    else:
        url, body["prompt"] = f"{args.base_url}/v1/completions", request.prompt
    if request.response_format is not None:
        body["response_format"] = request.response_format
    result = RequestResult(ok=False)
    start = last = time.perf_counter()
    chunks = 0
    try:
        async with client.post(url, json=body) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.read())[:200]!r}"
                return result
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    result.prompt_tokens = event["usage"]["prompt_tokens"]
                    result.output_tokens = event["usage"]["completion_tokens"]
                choices = event.get("choices") or []
                if not choices or not (choices[0].get("text") or (choices[0].get("delta") or {}).get("content")):
                    continue
                now = time.perf_counter()
                if chunks == 0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last, chunks = now, chunks + 1
    except (aiohttp.ClientError, TimeoutError) as error:
        result.error = f"{type(error).__name__}: {error}"
        return result
    result.latency = time.perf_counter() - start
    result.output_tokens = result.output_tokens or chunks
    result.ok = True
    return result


async def run_load(args: argparse.Namespace, requests: list[BenchRequest]) -> tuple[list[RequestResult], float]:
    rng = random.Random(args.seed)
    limit = asyncio.Semaphore(args.max_concurrency or len(requests))
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    progress = tqdm(total=len(requests), desc="requests", disable=args.quiet)

    async def limited(request: BenchRequest) -> RequestResult:
        async with limit:
            result = await send(client, args, request)
        progress.update(1)
        return result

    # aiohttp, as vllm bench uses: httpx's async client costs ~2.5 ms of CPU per request (measured here),
    # which would show up in the latencies this tool reports
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=600, sock_connect=10),
        headers=headers,
        connector=aiohttp.TCPConnector(limit=0),
    ) as client:
        start = time.perf_counter()
        tasks = []
        for request in requests:
            tasks.append(asyncio.create_task(limited(request)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(args.request_rate))  # Poisson arrivals
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    progress.close()
    return results, duration


def summarize(results: list[RequestResult], duration: float) -> dict:
    done = [r for r in results if r.ok]
    output = sum(r.output_tokens for r in done)

    def stats(values: list[float]) -> dict[str, float]:
        if not values:
            return {"mean_ms": float("nan"), "median_ms": float("nan"), "p99_ms": float("nan")}
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        return {
            "mean_ms": statistics.fmean(values) * 1e3,
            "median_ms": statistics.median(values) * 1e3,
            "p99_ms": p99 * 1e3,
        }

    return {
        "completed": len(done),
        "failed": len(results) - len(done),
        "duration_s": duration,
        "request_throughput": len(done) / duration,
        "output_throughput": output / duration,
        "total_token_throughput": (output + sum(r.prompt_tokens for r in done)) / duration,
        "total_output_tokens": output,
        "ttft": stats([r.ttft for r in done]),
        "tpot": stats([(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]),
        "itl": stats([gap for r in done for gap in r.itl]),
        "e2e": stats([r.latency for r in done]),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }


def print_summary(summary: dict) -> None:
    if "response_format" in summary:
        print(f"{'Response format':<34}{describe_response_format(summary['response_format']):>12}")
    print(f"{'Successful requests':<34}{summary['completed']:>12}")
    print(f"{'Failed requests':<34}{summary['failed']:>12}")
    print(f"{'Duration (s)':<34}{summary['duration_s']:>12.2f}")
    print(f"{'Request throughput (req/s)':<34}{summary['request_throughput']:>12.2f}")
    print(f"{'Output token throughput (tok/s)':<34}{summary['output_throughput']:>12.2f}")
    print(f"{'Total token throughput (tok/s)':<34}{summary['total_token_throughput']:>12.2f}")
    for key, title in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E latency")):
        s = summary[key]
        print(
            f"{title + ' mean / median / p99 (ms)':<34}{s['mean_ms']:>8.1f} {s['median_ms']:>8.1f} {s['p99_ms']:>8.1f}"
        )
    for error in summary["errors"]:
        print("error:", error)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    parser.add_argument(
        "--dataset",
        choices=("random", "sharegpt", "prefix"),
        default="prefix",
        help="prefix: the classifier workload (one long shared system prompt, short user turns)",
    )
    parser.add_argument("--dataset-path", default=None, help="the ShareGPT JSON file for --dataset sharegpt")
    parser.add_argument("--input-len", type=int, default=256, help="words per prompt for --dataset random")
    parser.add_argument(
        "--output-len",
        type=int,
        default=None,
        help="max_tokens per request (default: 50; for sharegpt, the recorded reply's length)",
    )
    parser.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generate exactly --output-len tokens (vLLM's and llama.cpp's extension)",
    )
    parser.add_argument(
        "--response-format",
        type=Path,
        default=None,
        metavar="PATH",
        help="send this response_format with every request (chat and completions). The JSON file is either a bare "
        'JSON Schema, sent as {"type": "json_schema", "json_schema": {"name": <file stem>, "schema": <file>, '
        '"strict": true}}, or a whole response_format object, sent as it is: one whose "type" is "text", '
        '"json_object" or "json_schema" (a schema\'s own "type" is a JSON type, such as "object"). A constrained '
        "answer ends when its JSON is complete, even with --ignore-eos.",
    )
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s, Poisson; inf: all now")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result-file", type=Path, default=None, help="write the summary and settings as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.dataset == "sharegpt" and not args.dataset_path:
        raise SystemExit("--dataset sharegpt needs --dataset-path FILE")
    if args.output_len is None and args.dataset != "sharegpt":
        args.output_len = 50
    requests = build_requests(args)
    results, duration = asyncio.run(run_load(args, requests))
    summary = summarize(results, duration)
    summary["response_format"] = requests[0].response_format if requests else None  # what was sent, or None
    print_summary(summary)
    if args.result_file:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.result_file.write_text(
            json.dumps({"settings": settings, "summary": summary, "requests": [asdict(r) for r in results]}, indent=1)
        )
    return 0 if summary["failed"] == 0 else 1
