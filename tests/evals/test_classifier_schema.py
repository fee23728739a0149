"""The classifier testset's JSON Schema travels as ``response_format`` (strict json_schema), as the product sends it,
and the committed baseline made that way lets the gate see label accuracy move.

Offline: the requests are read by a stand-in server (`MisbehavingServer`, which answers fixed JSON), and the gate
runs on results files written from the pydantic models; the measured runs are in evals/testsets/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenyard.cli import main
from tokenyard.evals.client import chat_request
from tokenyard.evals.gate import compare
from tokenyard.evals.metrics import TASK_METRICS
from tokenyard.evals.results import Baseline, MetricSummary, Results
from tokenyard.evals.testset import Item, load_testset, schema_name
from tokenyard.wire.openai import ChatCompletionRequest

from .misbehaving_server import MisbehavingServer

ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER = ROOT / "evals" / "testsets" / "classifier" / "classifier.jsonl"
SCHEMA = CLASSIFIER.parent / "schema.json"
RAG = ROOT / "evals" / "testsets" / "rag" / "rag_qa.jsonl"
BASELINE = ROOT / "evals" / "baselines" / "smollm2-135m-classifier.json"


def test_a_classifier_request_carries_the_items_schema_as_strict_response_format():
    item = load_testset(CLASSIFIER, limit=1).items[0]
    body = chat_request("m", item, 50)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "classifier", "schema": json.loads(SCHEMA.read_text()), "strict": True},
    }
    constraint = ChatCompletionRequest.model_validate(body).constraint()  # what the runtime will constrain with
    assert constraint is not None and constraint.kind == "json"
    assert constraint.value == json.loads(SCHEMA.read_text())


def test_no_response_format_when_turned_off_or_when_the_item_has_no_schema():
    classifier = load_testset(CLASSIFIER, limit=1).items[0]
    assert "response_format" not in chat_request("m", classifier, 50, constrained=False)
    rag = load_testset(RAG, limit=1).items[0]
    assert "response_format" not in chat_request("m", rag, 50)
    assert "response_format" not in chat_request("m", Item(id="1", question="q"), 50)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("testsets/classifier/schema.json", "classifier"),
        ("testsets/classifier/label.v2.json", "label_v2"),
        ("schemas/" + "x" * 80 + ".json", "x" * 64),
    ],
)
def test_the_schema_name_comes_from_the_schema_file(path, name):
    assert schema_name(Path(path)) == name


class RecordingServer(MisbehavingServer):
    """The stand-in, keeping every request body it is sent."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bodies: list[dict] = []

    def respond(self, body: bytes) -> tuple[int, bytes]:
        self.bodies.append(json.loads(body))
        return super().respond(body)


@pytest.mark.parametrize("flag", [(), ("--no-response-format",)])
def test_eval_run_sends_the_schema_unless_told_not_to(tmp_path, flag):
    answer = '{"emotion": "neutral", "learn_score": true}'
    out = tmp_path / "results.json"
    with RecordingServer(answer=lambda question: answer) as server:
        args = ["eval", "run", "--base-url", server.url, "--model", "m", "--testset", str(CLASSIFIER)]
        args += ["--out", str(out), "--limit", "3", "--metrics", ",".join(TASK_METRICS), *flag]
        assert main(args) == 0
    assert len(server.bodies) == 3
    formats = [body.get("response_format") for body in server.bodies]
    if flag:
        assert formats == [None] * 3
    else:
        assert all(f["json_schema"]["name"] == "classifier" and f["json_schema"]["strict"] for f in formats)
        assert all(f["json_schema"]["schema"] == json.loads(SCHEMA.read_text()) for f in formats)
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["json_valid"]["mean"] == metrics["schema_valid"]["mean"] == 1.0


def baseline() -> Baseline:
    return Baseline.model_validate_json(BASELINE.read_text())


def run_like(base: Baseline, **changed: float) -> Results:
    """A results file with the baseline's testset and means, some of them changed."""
    means = {**base.metrics, **changed}
    metrics = {name: MetricSummary(mean=mean, std=0.0, n=base.testset.items, nan=0) for name, mean in means.items()}
    return Results(endpoint="http://x", model=base.model, testset=base.testset, judge=None, metrics=metrics, samples=[])


def test_the_committed_baseline_was_made_with_the_schema_on_the_current_testset():
    base = baseline()
    assert base.testset.sha256 == load_testset(CLASSIFIER).sha256 and base.testset.items == 114
    assert base.metrics["json_valid"] == base.metrics["schema_valid"] == 1.0
    assert base.metrics["label_accuracy"] > 0.1  # ten labels: better than chance; unconstrained it was 0.0


def test_the_gate_passes_the_baseline_against_itself_and_fails_when_label_accuracy_drops():
    base = baseline()
    rows, reason = compare(base, run_like(base), max_drop=0.05, floors={})
    assert not reason and all(row.ok for row in rows)

    accuracy = base.metrics["label_accuracy"]
    rows, _ = compare(base, run_like(base, label_accuracy=accuracy - 0.04), max_drop=0.05, floors={})
    assert all(row.ok for row in rows)
    rows, _ = compare(base, run_like(base, label_accuracy=accuracy - 0.06), max_drop=0.05, floors={})
    failed = {row.metric: row.status for row in rows if not row.ok}
    assert list(failed) == ["label_accuracy"] and failed["label_accuracy"].startswith("FAIL: dropped")


def test_an_unconstrained_run_fails_the_gate_on_schema_validity_and_label_accuracy(tmp_path, capsys):
    """The numbers an unconstrained run of the packaged model gets (the baseline before the schema was sent)."""
    base = baseline()
    current = tmp_path / "unconstrained.json"
    before = run_like(base, json_valid=0.0, schema_valid=0.0, label_accuracy=0.0, field_accuracy=0.0)
    current.write_text(before.model_dump_json())
    assert main(["eval", "gate", "--baseline", str(BASELINE), "--current", str(current)]) == 1
    out = capsys.readouterr().out
    for metric in ("json_valid", "schema_valid", "label_accuracy"):
        assert any(line.startswith(metric) and "FAIL: dropped" in line for line in out.splitlines()), out
