"""`tokenyard eval gate` and `tokenyard eval baseline` on results files: the gate fails closed.

Offline: the results files are written here from the pydantic models (a run's output is data, not a mock);
the run against a real server is in test_run.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenyard.cli import main
from tokenyard.evals.results import Baseline, MetricSummary, Results, TestsetInfo

TESTSET = TestsetInfo(path="evals/testsets/rag/rag_qa.jsonl", sha256="a" * 64, items=3)


def results(tmp_path: Path, name: str = "current.json", testset: TestsetInfo = TESTSET, **means) -> Path:
    metrics = {
        metric: MetricSummary(mean=mean, std=0.0 if mean is not None else None, n=3, nan=0 if mean is not None else 3)
        for metric, mean in means.items()
    }
    run = Results(endpoint="http://x", model="m", testset=testset, judge=None, metrics=metrics, samples=[])
    path = tmp_path / name
    path.write_text(run.model_dump_json())
    return path


@pytest.fixture
def baseline(tmp_path) -> Path:
    source = results(tmp_path, "healthy.json", bleu_score=0.5, semantic_similarity=0.8)
    out = tmp_path / "baseline.json"
    assert main(["eval", "baseline", "--results", str(source), "--out", str(out)]) == 0
    return out


def gate(baseline: Path, current: Path, *extra: str) -> int:
    return main(["eval", "gate", "--baseline", str(baseline), "--current", str(current), *extra])


def test_a_baseline_keeps_the_model_testset_and_means(baseline):
    written = Baseline.model_validate_json(baseline.read_text())
    assert written.model == "m"
    assert written.testset.sha256 == TESTSET.sha256
    assert written.metrics == {"bleu_score": 0.5, "semantic_similarity": 0.8}


def test_a_baseline_can_keep_only_some_metrics_and_refuses_nan(tmp_path, capsys):
    source = results(tmp_path, bleu_score=0.5, faithfulness=None)
    out = tmp_path / "b.json"
    assert main(["eval", "baseline", "--results", str(source), "--out", str(out), "--metrics", "bleu_score"]) == 0
    assert json.loads(out.read_text())["metrics"] == {"bleu_score": 0.5}
    assert main(["eval", "baseline", "--results", str(source), "--out", str(out)]) == 2
    assert "NaN in faithfulness" in capsys.readouterr().err


def test_an_equal_run_passes(tmp_path, baseline, capsys):
    assert gate(baseline, results(tmp_path, bleu_score=0.5, semantic_similarity=0.8)) == 0
    out = capsys.readouterr().out
    assert "metric" in out and "delta" in out and "quality gate passed" in out


def test_a_drop_within_max_drop_passes_and_beyond_it_fails(tmp_path, baseline, capsys):
    assert gate(baseline, results(tmp_path, bleu_score=0.46, semantic_similarity=0.8)) == 0
    assert gate(baseline, results(tmp_path, bleu_score=0.44, semantic_similarity=0.8)) == 1
    assert "FAIL: dropped 0.060" in capsys.readouterr().out
    assert gate(baseline, results(tmp_path, bleu_score=0.44, semantic_similarity=0.8), "--max-drop", "0.1") == 0


def test_a_nan_metric_fails(tmp_path, baseline, capsys):
    assert gate(baseline, results(tmp_path, bleu_score=0.5, semantic_similarity=None)) == 1
    assert "FAIL: NaN for 3 of 3 items" in capsys.readouterr().out


def test_a_metric_with_some_nan_items_fails_even_with_a_good_mean(tmp_path, baseline):
    path = results(tmp_path, bleu_score=0.5, semantic_similarity=0.9)
    run = Results.model_validate_json(path.read_text())
    run.metrics["semantic_similarity"].nan = 1
    path.write_text(run.model_dump_json())
    assert gate(baseline, path) == 1


def test_a_missing_metric_fails(tmp_path, baseline, capsys):
    assert gate(baseline, results(tmp_path, bleu_score=0.5)) == 1
    assert "semantic_similarity" in (out := capsys.readouterr().out) and "missing from the current run" in out


def test_a_floor_fails_a_run_that_matches_its_baseline(tmp_path, baseline, capsys):
    current = results(tmp_path, bleu_score=0.5, semantic_similarity=0.8)
    assert gate(baseline, current, "--min", "semantic_similarity=0.9") == 1
    assert "below the floor 0.9" in capsys.readouterr().out
    assert gate(baseline, current, "--min", "semantic_similarity=0.7") == 0


def test_a_different_testset_fails_whatever_the_scores(tmp_path, baseline, capsys):
    other = TESTSET.model_copy(update={"sha256": "b" * 64})
    assert gate(baseline, results(tmp_path, testset=other, bleu_score=0.9, semantic_similarity=0.9)) == 1
    assert "the testsets differ" in capsys.readouterr().out


def test_a_run_on_part_of_the_testset_fails_against_a_full_baseline(tmp_path, baseline, capsys):
    part = TESTSET.model_copy(update={"items": 2})
    assert gate(baseline, results(tmp_path, testset=part, bleu_score=0.5, semantic_similarity=0.8)) == 1
    assert "run the same items as the baseline" in capsys.readouterr().out


def test_the_step_summary_gets_a_markdown_table(tmp_path, baseline, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert gate(baseline, results(tmp_path, bleu_score=0.1, semantic_similarity=0.8)) == 1
    text = summary.read_text()
    assert "FAILED" in text
    assert "| metric | baseline | current | delta | status |" in text
    assert "| bleu_score | 0.5000 | 0.1000 | -0.4000 | FAIL: dropped 0.400 (> 0.05) |" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min", "semantic_similarity"], "expected METRIC=NUMBER"),
        (["--min", "bleu_score=high"], "expected METRIC=NUMBER"),
        (["--max-drop", "-1"], "--max-drop must be >= 0"),
    ],
)
def test_bad_arguments_exit_2_saying_what_is_allowed(tmp_path, baseline, capsys, args, message):
    assert gate(baseline, results(tmp_path, bleu_score=0.5, semantic_similarity=0.8), *args) == 2
    assert message in capsys.readouterr().err


def test_missing_files_exit_2_naming_them(tmp_path, baseline, capsys):
    assert gate(baseline, tmp_path / "nope.json") == 2
    assert "nope.json" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{}")
    assert gate(tmp_path / "junk.json", results(tmp_path, bleu_score=0.5)) == 2
    assert "junk.json is not a baseline file" in capsys.readouterr().err
