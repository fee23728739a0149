"""The eval runner retries what a loaded server fails and never lets a failed item out of the means.

Against `MisbehavingServer`, a real HTTP server that stands in for a loaded `tokenyard serve` (which cannot be
made to time out or drop chosen items on cue); see misbehaving_server.py. Its answers are fixed per question,
and the two "hard" items are answered wrong, so a run that lost them and averaged the rest would look better.
The same retries against the real runtime, behind this server as a proxy, are in test_run.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tokenyard.cli import main
from tokenyard.evals.client import RetryPolicy
from tokenyard.evals.metrics import TASK_METRICS
from tokenyard.evals.testset import Item, load_testset

from .misbehaving_server import MisbehavingServer

CLASSIFIER = Path(__file__).resolve().parents[2] / "evals" / "testsets" / "classifier" / "classifier.jsonl"
ITEMS = load_testset(CLASSIFIER, limit=6).items
HARD = {ITEMS[0].id, ITEMS[2].id}


def answer_of(item: Item) -> str:
    expected = dict(item.expected_output or {})
    if item.id in HARD:
        expected["emotion"] = "bored" if expected["emotion"] != "bored" else "happy"
    return json.dumps(expected)


ANSWERS = {item.question: answer_of(item) for item in ITEMS}


def server(script: dict[int, list[str]] | None = None) -> MisbehavingServer:
    """``script``: item index -> what its successive attempts get."""
    steps = {ITEMS[i].question: behaviours for i, behaviours in (script or {}).items()}
    return MisbehavingServer(ANSWERS.__getitem__, steps)


def eval_run(url: str, out: Path, *extra: str) -> dict:
    args = ["eval", "run", "--base-url", url, "--model", "standin", "--testset", str(CLASSIFIER), "--out", str(out)]
    options = ["--limit", "6", "--metrics", ",".join(TASK_METRICS), "--timeout", "1", "--retry-backoff", "0.01"]
    assert main([*args, *options, *extra]) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("healthy") / "results.json"
    with server() as standin:
        eval_run(standin.url, out)
    return out


@pytest.fixture(scope="module")
def baseline(healthy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("baseline") / "baseline.json"
    assert main(["eval", "baseline", "--results", str(healthy), "--out", str(out)]) == 0
    return out


def gate(baseline: Path, current: Path, *extra: str) -> int:
    return main(["eval", "gate", "--baseline", str(baseline), "--current", str(current), *extra])


# Item 0: one read timeout; 1: two dropped connections; 2: timeout, drop, 503; 3: every retryable status in turn.
FLAKY = {0: ["slow"], 1: ["drop", "drop"], 2: ["slow", "drop", "503"], 3: ["500", "502", "504", "429"]}


def test_the_healthy_run_scores_the_hard_items_wrong(healthy):
    metrics = json.loads(healthy.read_text())["metrics"]
    assert {name: m["mean"] for name, m in metrics.items()} == {
        "json_valid": 1.0,
        "schema_valid": 1.0,
        "label_accuracy": pytest.approx(4 / 6),
        "field_accuracy": pytest.approx(5 / 6),
    }


def test_timeouts_drops_and_overload_are_retried_to_the_metrics_of_a_well_behaved_server(healthy, tmp_path):
    with server(FLAKY) as standin:
        flaky = eval_run(standin.url, tmp_path / "flaky.json")  # the default 4 retries
    clean = json.loads(healthy.read_text())
    assert flaky["metrics"] == clean["metrics"]
    assert [s["answer"] for s in flaky["samples"]] == [s["answer"] for s in clean["samples"]]
    assert flaky["failed_items"] == [] and all(s["error"] is None for s in flaky["samples"])
    assert [s["attempts"] for s in flaky["samples"]] == [2, 3, 4, 5, 1, 1]
    assert [standin.attempts[item.question] for item in ITEMS] == [2, 3, 4, 5, 1, 1]


def test_without_retries_the_same_server_fails_those_items_and_they_score_the_worst(healthy, baseline, tmp_path):
    out = tmp_path / "flaky.json"
    with server(FLAKY) as standin:
        flaky = eval_run(standin.url, out, "--retries", "0")
    assert flaky["failed_items"] == [item.id for item in ITEMS[:4]]
    assert [s["attempts"] for s in flaky["samples"]] == [1] * 6
    errors = [s["error"] for s in flaky["samples"][:4]]
    assert errors[0].startswith("ReadTimeout") and errors[1].startswith("RemoteProtocolError"), errors
    assert errors[3].startswith("HTTP 500") and all(e.endswith("(after 1 attempt)") for e in errors), errors
    # Left out, the failures would make label_accuracy 2/2; counted at 0 it is 2/6, never better than the
    # healthy run's 4/6 (which answered the hard items, wrongly).
    label = flaky["metrics"]["label_accuracy"]
    assert (label["mean"], label["n"], label["failed"], label["nan"]) == (pytest.approx(2 / 6), 6, 4, 0)
    clean = json.loads(healthy.read_text())["metrics"]
    assert all(flaky["metrics"][name]["mean"] <= clean[name]["mean"] for name in clean)
    assert gate(baseline, out) == 1


def test_a_server_that_keeps_failing_items_fails_the_gate_unless_max_errors_allows_them(baseline, tmp_path, capsys):
    out = tmp_path / "failing.json"
    with server({0: ["slow"] * 9, 1: ["drop"] * 9}) as standin:
        failing = eval_run(standin.url, out, "--retries", "2")
    assert [standin.attempts[ITEMS[i].question] for i in (0, 1)] == [3, 3]
    assert failing["failed_items"] == [ITEMS[0].id, ITEMS[1].id]
    err = capsys.readouterr().err
    assert f"2 of 6 items failed: {ITEMS[0].id} [ReadTimeout" in err and "(after 3 attempts)" in err, err
    assert "RemoteProtocolError" in err and "the gate fails unless --max-errors allows them" in err
    assert all(m["n"] == 6 and m["failed"] == 2 for m in failing["metrics"].values())

    assert gate(baseline, out) == 1
    printed = capsys.readouterr().out
    assert f"FAILED: 2 of 6 items failed: {ITEMS[0].id} [ReadTimeout" in printed, printed
    assert ITEMS[1].id in printed and "more than --max-errors 0" in printed
    assert gate(baseline, out, "--max-errors", "1") == 1
    assert "more than --max-errors 1" in capsys.readouterr().out
    # Allowed, the failed items still count: json_valid falls from 1 to 4/6, past the default --max-drop.
    assert gate(baseline, out, "--max-errors", "2") == 1
    printed = capsys.readouterr().out
    assert "FAIL: dropped 0.333" in printed and "allowed by --max-errors 2" in printed, printed
    assert gate(baseline, out, "--max-errors", "2", "--max-drop", "0.5") == 0
    printed = capsys.readouterr().out
    assert "quality gate passed" in printed and f"note: 2 of 6 items failed: {ITEMS[0].id}" in printed


def test_a_baseline_refuses_a_run_with_failed_items(tmp_path, capsys):
    out = tmp_path / "failing.json"
    with server({3: ["drop"] * 9}) as standin:
        eval_run(standin.url, out, "--retries", "1")
    assert main(["eval", "baseline", "--results", str(out), "--out", str(tmp_path / "b.json")]) == 2
    assert f"1 of 6 items failed: {ITEMS[3].id}" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_a_4xx_is_not_retried_and_retry_after_overrides_the_back_off(tmp_path):
    start = time.monotonic()
    with server({0: ["400"] * 9, 1: ["503", "429"]}) as standin:
        run = eval_run(standin.url, tmp_path / "r.json", "--retry-backoff", "30")  # Retry-After: 0 wins
    assert time.monotonic() - start < 20
    assert standin.attempts[ITEMS[0].question] == 1 and standin.attempts[ITEMS[1].question] == 3
    assert run["failed_items"] == [ITEMS[0].id]
    assert run["samples"][0]["error"].startswith("HTTP 400: ") and run["samples"][1]["error"] is None


def test_the_back_off_budget_bounds_the_time_an_item_may_take(tmp_path):
    with server({0: ["500"] * 20}) as standin:  # 500s carry no Retry-After: the back-off decides
        args = ("--retries", "10", "--retry-backoff", "0.1", "--retry-budget", "0.5")
        run = eval_run(standin.url, tmp_path / "r.json", *args)
    assert standin.attempts[ITEMS[0].question] == 3  # waits 0.1 + 0.2; the next 0.4 would pass 0.5
    assert run["samples"][0]["error"].endswith("(after 3 attempts, back-off budget 0.5s spent)")


def test_the_back_off_doubles_and_every_wait_is_capped():
    policy = RetryPolicy(retries=9, backoff=0.5, max_wait=30)
    assert [policy.wait(retry, None) for retry in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.wait(0, 7.0) == 7.0 and policy.wait(0, 3600.0) == 30 and policy.wait(3, -1.0) == 0.0


@pytest.mark.parametrize("flag", ["--retries", "--retry-backoff", "--retry-budget", "--max-errors"])
def test_negative_retry_and_error_settings_exit_2(healthy, baseline, tmp_path, capsys, flag):
    if flag == "--max-errors":
        assert gate(baseline, healthy, flag, "-1") == 2
    else:
        args = ["eval", "run", "--base-url", "http://127.0.0.1:9", "--model", "m", "--testset", str(CLASSIFIER)]
        assert main([*args, "--out", str(tmp_path / "r.json"), flag, "-1"]) == 2
    assert f"{flag} must be >= 0" in capsys.readouterr().err
