"""Tensor parallelism on CPU (gloo), in float32: sharded models give the greedy tokens of the unsharded one,
bad sizes are refused with the sizes that would work, and a dead worker takes the engine and the server
down at once with a non-zero exit. Every rank runs one torch thread: the machine's cores are few."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tokenyard.runtime import LLM, SamplingParams

from .conftest import CLASSIFIER_SYSTEM
from .server_process import ServerProcess
from .tiny_models import write_hf_model

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time, in a land far away, there lived"]


def engine(model: str | Path, tensor_parallel_size: int, **args: object) -> LLM:
    """For ``with engine(...) as llm:``, which shuts it down on the way out: one tensor-parallel engine per process
    at a time, so each test's start shows the last one's shutdown released the group."""
    return LLM(str(model), dtype="float32", tensor_parallel_size=tensor_parallel_size, num_threads=1, **args)


def greedy_tokens(llm: LLM, prompts: list, params: SamplingParams = GREEDY) -> list[list[int]]:
    return [output.outputs[0].token_ids for output in llm.generate(prompts, params)]


TINY = dict(max_num_batched_tokens=256, kv_cache_memory_bytes=8 << 20)


@pytest.mark.parametrize(
    ("family", "tp", "overrides"),
    [
        pytest.param("llama", 2, {}, id="llama-tp2-kv-heads-split"),
        # 1 KV head for 2 ranks (replicated), a vocabulary that does not divide by 2 (padded), tied embeddings
        pytest.param(
            "llama",
            2,
            {"num_key_value_heads": 1, "vocab_size": 49153, "tie_word_embeddings": True},
            id="llama-tp2-one-kv-head-padded-tied-vocab",
        ),
        # q/k/v biases sharded part by part; 2 KV heads shared by 4 ranks
        pytest.param("qwen2", 4, {}, id="qwen2-tp4-kv-replicated"),
    ],
)
def test_sharded_tiny_models_give_the_unsharded_greedy_tokens(family, tp, overrides, tmp_path, smollm2_tokenizer):
    model = write_hf_model(family, tmp_path / family, smollm2_tokenizer, **overrides)
    with engine(model, 1, **TINY) as single:
        expected = greedy_tokens(single, PROMPTS)
    with engine(model, tp, **TINY) as sharded:
        assert greedy_tokens(sharded, PROMPTS) == expected
        vocab_rows = sharded.engine.executor.runner.model.embed_tokens.weight.shape[0]
        assert vocab_rows == -(-overrides.get("vocab_size", 49152) // tp)  # rank 0 holds its shard only


def test_weights_quantized_after_loading_are_quantized_per_shard_exactly_as_unsharded(tmp_path, smollm2_tokenizer):
    """int4 groups run along the input features: with each rank's slice of the row-parallel inputs a multiple
    of the group size (128 here), every rank's groups are groups of the unsharded model too."""
    model = write_hf_model("llama", tmp_path / "llama", smollm2_tokenizer, hidden_size=256, intermediate_size=512)
    with engine(model, 1, quantization="int4", **TINY) as single:
        expected = greedy_tokens(single, PROMPTS)
    with engine(model, 2, quantization="int4", **TINY) as sharded:
        assert greedy_tokens(sharded, PROMPTS) == expected


@pytest.mark.slow
def test_smollm2_tp3_gives_the_unsharded_greedy_tokens(smollm2_gguf, llm_fp32):
    """SmolLM2: 9 heads and 3 KV heads, one KV head per rank; its vocabulary (49152) splits in three."""
    conversations = [
        [{"role": "system", "content": CLASSIFIER_SYSTEM}, {"role": "user", "content": "I got a gold star today!"}],
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Write a haiku about rain."}],
    ]
    params = SamplingParams(max_tokens=24, temperature=0)
    expected = [output.outputs[0].token_ids for output in llm_fp32.chat(conversations, params)]
    with engine(smollm2_gguf, 3, max_model_len=2048, kv_cache_memory_bytes=64 << 20) as sharded:
        assert [output.outputs[0].token_ids for output in sharded.chat(conversations, params)] == expected


def test_prefix_caching_and_chunked_prefill_stay_exact_under_tp(tmp_path, smollm2_tokenizer):
    model = write_hf_model("llama", tmp_path / "llama", smollm2_tokenizer)
    shared = "You are a careful assistant who answers in one short sentence. " * 4
    prompts = [shared + question for question in ("Why is the sky blue?", "What is two plus two?", "Name a fruit.")]
    args = dict(max_num_batched_tokens=32, kv_cache_memory_bytes=8 << 20)  # 32 tokens a step: prompts chunk
    with engine(model, 1, **args) as single:
        expected = greedy_tokens(single, prompts)
    with engine(model, 2, **args) as sharded:
        assert greedy_tokens(sharded, prompts) == expected
        again = sharded.generate(prompts, GREEDY)  # the prompts' blocks now come from the prefix cache
        assert [output.outputs[0].token_ids for output in again] == expected
        assert all(output.num_cached_tokens > 0 for output in again)


def test_sizes_that_do_not_split_the_heads_are_refused_with_the_sizes_that_do(smollm2_gguf):
    with pytest.raises(ValueError, match=r"tensor_parallel_size=2 .*one of 1, 3, 9 .*9 attention heads and 3 KV heads"):
        LLM(str(smollm2_gguf), tensor_parallel_size=2, num_threads=1, max_model_len=512)
    assert multiprocessing.active_children() == []  # the workers started alongside are gone too
    with pytest.raises(ValueError, match="tensor_parallel_size=0 is invalid: must be >= 1"):
        LLM(str(smollm2_gguf), tensor_parallel_size=0)


def test_a_failed_start_leaves_no_worker_behind(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        LLM(str(tmp_path / "missing.gguf"), tensor_parallel_size=2, num_threads=1)
    assert multiprocessing.active_children() == []


KILLED_WORKER_SCRIPT = """
import multiprocessing, sys
from tokenyard.runtime import LLM, SamplingParams
llm = LLM(sys.argv[1], dtype="float32", tensor_parallel_size=2, num_threads=1, kv_cache_memory_bytes=8 << 20)
print(multiprocessing.active_children()[0].pid, flush=True)
sys.stdin.readline()
while True:
    llm.generate(["The capital of France is"], SamplingParams(max_tokens=64, ignore_eos=True))
"""


def test_an_engine_whose_worker_is_killed_exits_non_zero_promptly(tmp_path, smollm2_tokenizer):
    model = write_hf_model("llama", tmp_path / "llama", smollm2_tokenizer)
    script = textwrap.dedent(KILLED_WORKER_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(model)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        worker = int(process.stdout.readline())
        process.stdin.write("go\n")
        process.stdin.flush()
        time.sleep(0.5)  # mid-generation
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        code = process.wait(timeout=30)
        assert code != 0
        assert time.monotonic() - killed < 5
    finally:
        process.kill()


def worker_pids(server_pid: int) -> list[int]:
    """The server's spawned workers (not multiprocessing's resource tracker, its other child)."""
    workers = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue  # exited while we looked
        if parent == server_pid and b"spawn_main" in command:
            workers.append(int(proc.name))
    return workers


@pytest.mark.slow
def test_serve_with_tp_exits_non_zero_when_a_worker_dies_and_leaves_no_orphans_on_shutdown(tmp_path, smollm2_tokenizer):
    model = write_hf_model("llama", tmp_path / "llama", smollm2_tokenizer, max_position_embeddings=2048)
    flags = ("--model", str(model), "--dtype", "float32", "--tensor-parallel-size", "2")

    server = ServerProcess(*flags, log=tmp_path / "killed.log")
    (worker,) = worker_pids(server.process.pid)
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    assert server.process.wait(timeout=30) != 0
    assert time.monotonic() - killed < 5
    assert "died" in (tmp_path / "killed.log").read_text()

    server = ServerProcess(*flags, log=tmp_path / "stopped.log")
    (worker,) = worker_pids(server.process.pid)
    assert server.terminate()
    assert not Path(f"/proc/{worker}").exists()
