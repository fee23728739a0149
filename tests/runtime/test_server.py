"""`tokenyard serve` as its users meet it: a real server process with the real model, driven through the
official `openai` client (and raw HTTP where the client would hide what is on the wire)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest

from tokenyard.benchmarks.workloads import CLASSIFIER_SYSTEM_PROMPT, classifier_user_turns

from .server_process import ServerProcess

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
VLLM_METRICS = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:request_time_per_output_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:request_queue_time_seconds_bucket",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
    "vllm:spec_decode_num_drafts_total",
    "vllm:spec_decode_num_draft_tokens_total",
    "vllm:spec_decode_num_accepted_tokens_total",
    "tokenyard_model_weights_bytes",
    "tokenyard_cache_config_info",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(log=tmp_path_factory.mktemp("serve") / "server.log")
    yield process
    assert process.terminate()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def classifier_request(turn: str) -> dict:
    """What the classifier workload's users send, verbatim."""
    return {
        "model": MODEL,
        "temperature": 0,
        "max_tokens": 50,
        "messages": [{"role": "system", "content": CLASSIFIER_SYSTEM_PROMPT}, {"role": "user", "content": turn}],
    }


def test_the_classifier_request_works_verbatim(client):
    reply = client.chat.completions.create(**classifier_request(classifier_user_turns(1)[0]))
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.model == MODEL and reply.id.startswith("chatcmpl-")
    assert reply.usage.prompt_tokens > 400 and 0 < reply.usage.completion_tokens <= 50
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_text_and_usage_equal_the_non_streamed(client):
    request = classifier_request("Tutor question: What color is the sky?\nChild's reply: blue!! I love it")
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices]
    assert all(deltas[:-1]), "an empty delta was streamed"
    assert "".join(d or "" for d in deltas) == whole.choices[0].message.content
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [getattr(chunks[-1].usage, c) for c in counts] == [getattr(whole.usage, c) for c in counts]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_completions_streamed_and_not(client):
    whole = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0)
    streamed = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 8


def test_stop_sequences_end_the_text_before_them(client):
    free = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    text = free.choices[0].text
    stop = text[4:6]
    stopped = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[stop])
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_logprobs_come_back_for_each_token(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)


def test_errors_are_openai_error_objects_with_the_right_status(client, server):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], top_p=2)
    assert bad.value.body["param"] == "top_p"
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model=MODEL, prompt="word " * 3000, max_tokens=5)
    assert "shorter than max_model_len=2048" in long.value.message and "300" in long.value.message
    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model=MODEL, prompt="hello", max_tokens=4000)
    assert "maximum context length is 2048" in too_many.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2)
    raw = httpx.post(
        f"{server.url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    assert client.models.list().data[0].id == MODEL


def test_metrics_export_vllm_names_with_the_model_label(server, client):
    client.completions.create(model=MODEL, prompt="hello", max_tokens=2)
    text = httpx.get(f"{server.url}/metrics").text
    for name in VLLM_METRICS:
        assert (
            f'{name}{{model_name="{MODEL}"' in text
            or f"{name}{{finished_reason" in text
            or (name in text and f'model_name="{MODEL}"' in text)
        ), f"{name} missing"
    assert server.metric("vllm:generation_tokens_total") > 0


def test_64_streaming_clients_with_10_leaving_midway(server):
    async def one(i: int, client: httpx.AsyncClient) -> str:
        body = classifier_request(classifier_user_turns(64, seed=5)[i]) | {
            "stream": True,
            "max_tokens": 40,
            "ignore_eos": True,
        }
        async with client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            chunks = 0
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    return "done"
                chunks += line.startswith("data: ")
                if i < 10 and chunks == 3:
                    return "left"  # closing the stream mid-way: the server must abort and free it
        return "cut"

    async def all_of_them() -> list[str]:
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=100)) as client:
            return await asyncio.gather(*(one(i, client) for i in range(64)))

    results = asyncio.run(all_of_them())
    assert results.count("left") == 10 and results.count("done") == 54
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.metric("vllm:num_requests_running") > 0:
        time.sleep(0.2)
    assert server.metric("vllm:num_requests_running") == 0
    assert server.metric("vllm:num_requests_waiting") == 0
    assert server.metric("vllm:kv_cache_usage_perc") == 0  # only the prefix cache holds blocks, and it frees them
    assert server.metric("vllm:request_success_total") >= 54


def test_overload_is_refused_at_once_and_every_accepted_request_completes(tmp_path):
    server = ServerProcess(
        "--max-num-seqs", "4", "--max-queue-len", "4", "--api-key", "sekret", log=tmp_path / "overload.log"
    )
    try:
        assert httpx.post(f"{server.url}/v1/completions", json={"prompt": "x"}).status_code == 401

        def send(_: int) -> httpx.Response:
            return httpx.post(
                f"{server.url}/v1/completions",
                timeout=300,
                headers={"Authorization": "Bearer sekret"},
                json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 32, "ignore_eos": True},
            )

        responses: list[httpx.Response] = [None] * 40
        threads = [threading.Thread(target=lambda i=i: responses.__setitem__(i, send(i))) for i in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accepted = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        assert 0 < len(accepted) <= 8 and len(accepted) + len(refused) == 40
        assert all(r.status_code == 429 and r.headers["Retry-After"] for r in refused)
        assert all(r.elapsed.total_seconds() < 2 for r in refused), "refusals must not wait"
        assert all(r.json()["usage"]["completion_tokens"] == 32 for r in accepted)

        # SIGTERM: the request in flight still completes, then the process exits cleanly
        result = {}
        worker = threading.Thread(target=lambda: result.setdefault("response", send(0)))
        worker.start()
        time.sleep(1.0)
        assert server.terminate()
        worker.join()
        assert result["response"].status_code == 200
    finally:
        server.terminate()


@pytest.mark.parametrize(
    ("flags", "environment", "message"),
    [
        (["--quantization", "int3"], {}, "quantization='int3' is invalid: must be int8, int4"),
        (["--speculative-config", '{"method": "ngram"}'], {}, "speculative_config.num_speculative_tokens=None"),
        (["--max-num-seqs", "0"], {}, "max_num_seqs=0 is invalid"),
        (["--dtype", "float16", "--device", "cpu"], {}, "dtype='float16' is not served on CPU"),
        ([], {"TOKENYARD_CPU_ISA": "avx3"}, "TOKENYARD_CPU_ISA='avx3' is invalid: must be one of native, avx2"),
    ],
)
def test_flags_that_cannot_be_honoured_stop_the_server_with_the_reason(flags, environment, message):
    """Before anything loads, with the reason alone (no traceback)."""
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tokenyard.cli", "serve", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | environment,
    )
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("dataset", ["prefix", "random", "sharegpt"])
def test_bench_serve_measures_a_real_server(server, tmp_path, dataset):
    import json
    import subprocess
    import sys

    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(
        json.dumps(
            [
                {
                    "conversations": [
                        {"from": "human", "value": "Tell me about rivers."},
                        {"from": "gpt", "value": "Rivers flow to the sea."},
                    ]
                }
            ]
        )
    )
    result = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tokenyard.cli",
            "bench",
            "serve",
            "--base-url",
            server.url,
            "--dataset",
            dataset,
            "--dataset-path",
            str(sharegpt),
            "--num-prompts",
            "4",
            "--max-concurrency",
            "2",
            "--output-len",
            "6",
            "--input-len",
            "20",
            "--request-rate",
            "20",
            "--result-file",
            str(result),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Output token throughput" in done.stdout
    summary = json.loads(result.read_text())["summary"]
    assert summary["completed"] == 4 and summary["failed"] == 0
    assert summary["total_output_tokens"] == 24  # 6 each: EOS is ignored so the work is fixed
    assert 0 < summary["ttft"]["median_ms"] <= summary["e2e"]["median_ms"]
    assert summary["itl"]["mean_ms"] > 0 and summary["tpot"]["mean_ms"] > 0
