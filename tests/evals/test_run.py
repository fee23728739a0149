"""`tokenyard eval run` against a real `tokenyard serve` with the packaged SmolLM2 (started once for this module).

Runs are cut to a few items with --limit; the full testsets are what the committed baselines were made from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tokenyard.cli import main
from tokenyard.evals.metrics import OFFLINE_METRICS, TASK_METRICS
from tokenyard.evals.testset import load_testset

from ..runtime.server_process import ServerProcess, free_port
from .misbehaving_server import MisbehavingServer

ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER = ROOT / "evals" / "testsets" / "classifier" / "classifier.jsonl"
RAG = ROOT / "evals" / "testsets" / "rag" / "rag_qa.jsonl"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = ServerProcess(log=tmp_path_factory.mktemp("serve") / "server.log")
    yield process
    process.terminate()


def eval_run(server_url: str, testset: Path, out: Path, *extra: str) -> int:
    return main(
        [
            *("eval", "run", "--base-url", server_url, "--model", MODEL, "--testset", str(testset)),
            *("--out", str(out), "--limit", "2", "--max-tokens", "32", *extra),
        ]
    )


@pytest.fixture(scope="module")
def rag_run(server, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("rag") / "results.json"
    assert eval_run(server.url, RAG, out) == 0
    return json.loads(out.read_text())


def test_help_imports_neither_torch_nor_ragas():
    code = "import sys; from tokenyard.cli import main; main(['--help'])"
    check = "; print(sorted(m for m in ('torch', 'ragas', 'sentence_transformers') if m in sys.modules))"
    wrapped = f"import contextlib, io, sys\nwith contextlib.suppress(SystemExit): {code}\n" + check.lstrip("; ")
    result = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_rag_run_records_every_applicable_offline_metric_the_hash_and_the_version(rag_run):
    from tokenyard import __version__

    assert rag_run["tokenyard_version"] == __version__
    assert rag_run["created"].endswith("+00:00")
    assert rag_run["model"] == MODEL and rag_run["judge"] is None
    assert rag_run["testset"] == {"path": str(RAG), "sha256": load_testset(RAG).sha256, "items": 2}
    expected = set(OFFLINE_METRICS) - set(TASK_METRICS)
    assert set(rag_run["metrics"]) == expected
    for name, summary in rag_run["metrics"].items():
        assert summary["n"] == 2 and summary["nan"] == 0, name
        assert 0.0 <= summary["mean"] <= 1.0 + 1e-6, name
    for sample in rag_run["samples"]:
        assert sample["error"] is None and sample["answer"] and sample["latency_ms"] > 0
        assert set(sample["scores"]) == expected


def test_two_runs_of_the_same_model_give_identical_offline_metrics(server, rag_run, tmp_path):
    """Two runs that reach the server the same way: one request at a time, prompts already in its prefix cache (a
    cold and a warm prefill, or requests batched differently, may round differently in bfloat16)."""
    runs = []
    for name in ("first.json", "second.json"):
        assert eval_run(server.url, RAG, tmp_path / name, "--concurrency", "1") == 0
        runs.append(json.loads((tmp_path / name).read_text()))
    assert runs[0]["metrics"] == runs[1]["metrics"]
    assert [s["answer"] for s in runs[0]["samples"]] == [s["answer"] for s in runs[1]["samples"]]


def test_a_classifier_run_has_the_json_task_checks(server, tmp_path):
    out = tmp_path / "classifier.json"
    assert eval_run(server.url, CLASSIFIER, out, "--metrics", ",".join(TASK_METRICS)) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == set(TASK_METRICS)
    assert all(m["n"] == 2 and m["nan"] == 0 and m["mean"] is not None for m in metrics.values())
    assert metrics["schema_valid"]["mean"] == 1.0  # the schema went as response_format: the runtime kept to it


def test_an_unreachable_endpoint_fails_the_run_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert eval_run(f"http://127.0.0.1:{free_port()}", RAG, out, "--retry-backoff", "0.01") == 1
    err = capsys.readouterr().err
    assert "answered none of the 2 items" in err and "ConnectError" in err and "(after 5 attempts)" in err, err
    assert not out.exists()


def test_a_run_through_a_proxy_that_loses_answers_retries_to_the_direct_runs_metrics(server, tmp_path):
    """The real runtime behind `MisbehavingServer` as a proxy (a loaded server cannot lose chosen answers on cue):
    each item's first answer is computed and lost (the connection closes unanswered), then it gets a 503 or a 500.
    The retried run must score exactly what a direct run does. One request at a time, and every answer that counts
    comes from a warm prefix cache (see the identical-metrics test above)."""
    items = load_testset(CLASSIFIER, limit=2).items
    script = {items[0].question: ["drop", "503"], items[1].question: ["drop", "500"]}
    options = ("--concurrency", "1", "--metrics", ",".join(TASK_METRICS), "--retry-backoff", "0.01")
    with MisbehavingServer(upstream=server.url, script=script) as proxy:
        assert eval_run(proxy.url, CLASSIFIER, tmp_path / "proxied.json", *options) == 0
    assert eval_run(server.url, CLASSIFIER, tmp_path / "direct.json", *options) == 0
    proxied, direct = (json.loads((tmp_path / name).read_text()) for name in ("proxied.json", "direct.json"))
    assert [proxy.attempts[item.question] for item in items] == [3, 3]
    assert [s["attempts"] for s in proxied["samples"]] == [3, 3] and proxied["failed_items"] == []
    assert proxied["metrics"] == direct["metrics"]
    assert [s["answer"] for s in proxied["samples"]] == [s["answer"] for s in direct["samples"]]


def test_unknown_metrics_exit_2_listing_the_allowed_ones(server, tmp_path, capsys):
    assert eval_run(server.url, RAG, tmp_path / "r.json", "--metrics", "bleu_score,vibes") == 2
    err = capsys.readouterr().err
    assert "unknown vibes" in err and "semantic_similarity" in err


def test_a_smollm2_judge_gives_nan_the_gate_fails_closed_and_a_rerun_is_served_from_the_cache(server, tmp_path, capsys):
    """The judge is the same local server: a 135M judge is plumbing, not a verdict. Judge calls are counted
    on the server itself (vllm:request_success): a re-run may add only the one answer request."""
    cache = tmp_path / "judge-cache"
    judge = ["--judge-base-url", server.url, "--judge-model", MODEL, "--judge-cache", str(cache)]
    args = [*judge, "--repeats", "2", "--judge-max-tokens", "48", "--metrics", "faithfulness,context_recall"]
    out = tmp_path / "judged.json"

    before = server.metric("vllm:request_success_total")
    assert eval_run(server.url, RAG, out, "--limit", "1", *args) == 0
    first_calls = server.metric("vllm:request_success_total") - before - 1
    results = json.loads(out.read_text())
    assert results["judge"] == {"base_url": server.url, "model": MODEL, "repeats": 2}
    assert first_calls > 0 and any(cache.iterdir())
    assert any(m["nan"] > 0 for m in results["metrics"].values()), results["metrics"]

    before = server.metric("vllm:request_success_total")
    assert eval_run(server.url, RAG, tmp_path / "again.json", "--limit", "1", *args) == 0
    assert server.metric("vllm:request_success_total") - before == 1  # the answer; no judge call
    assert json.loads((tmp_path / "again.json").read_text())["metrics"] == results["metrics"]

    baseline = tmp_path / "baseline.json"
    means = {"faithfulness": 0.5, "context_recall": 0.5}
    baseline.write_text(json.dumps({"model": MODEL, "testset": results["testset"], "metrics": means}))
    capsys.readouterr()
    assert main(["eval", "gate", "--baseline", str(baseline), "--current", str(out)]) == 1
    assert "FAIL: NaN" in capsys.readouterr().out
