"""The evals testsets under evals/testsets/ are well-formed, balanced, and agree with the workload.

Fast and offline: reads the JSONL files only, never a model or a server.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from tokenyard.benchmarks.workloads import CLASSIFIER_SYSTEM_PROMPT

TESTSETS = Path(__file__).resolve().parents[2] / "evals" / "testsets"
CLASSIFIER_DIR = TESTSETS / "classifier"
CLASSIFIER_SET = CLASSIFIER_DIR / "classifier.jsonl"
RAG_SET = TESTSETS / "rag" / "rag_qa.jsonl"

LABELS = ("happy", "proud", "sad", "angry", "scared", "surprised", "bored", "confused", "tired", "neutral")
CLASSIFIER_FIELDS = {
    "id",
    "question",
    "system_prompt_file",
    "expected_label",
    "expected_output",
    "reference",
    "json_schema",
}
RAG_FIELDS = {"id", "question", "contexts", "reference_contexts", "reference"}


def read_jsonl(path: Path) -> list[dict]:
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        assert line.strip(), f"{path.name}:{number} is blank"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            pytest.fail(f"{path.name}:{number} is not JSON: {error}")
        assert isinstance(item, dict), f"{path.name}:{number} is not a JSON object"
        items.append(item)
    return items


@pytest.fixture(scope="module")
def classifier_items() -> list[dict]:
    return read_jsonl(CLASSIFIER_SET)


@pytest.fixture(scope="module")
def rag_items() -> list[dict]:
    return read_jsonl(RAG_SET)


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((CLASSIFIER_DIR / "schema.json").read_text(encoding="utf-8"))


# --- classifier set ---------------------------------------------------------------------------


def test_the_classifier_set_has_at_least_100_items_with_unique_ids(classifier_items):
    assert len(classifier_items) >= 100
    ids = [item["id"] for item in classifier_items]
    assert len(ids) == len(set(ids)), "duplicate ids"
    questions = [item["question"] for item in classifier_items]
    assert len(questions) == len(set(questions)), "duplicate user turns"


def test_every_classifier_item_has_exactly_the_documented_fields(classifier_items):
    for item in classifier_items:
        assert set(item) == CLASSIFIER_FIELDS, item["id"]
        assert item["system_prompt_file"] == "system_prompt.txt", item["id"]
        assert item["json_schema"] == "schema.json", item["id"]
        assert (CLASSIFIER_DIR / item["system_prompt_file"]).is_file()
        assert (CLASSIFIER_DIR / item["json_schema"]).is_file()


def test_every_user_turn_follows_the_workload_format(classifier_items):
    for item in classifier_items:
        lines = item["question"].split("\n")
        assert len(lines) == 3, item["id"]
        prefixes = ("Tutor question: ", "Expected answer: ", "Child's reply: ")
        for line, prefix in zip(lines, prefixes, strict=True):
            assert line.startswith(prefix) and line[len(prefix) :].strip(), (item["id"], line)
        assert "(#" not in lines[2], f"{item['id']}: the benchmark's '(#n)' suffix does not belong in the testset"


def test_the_schema_is_draft_2020_12_and_closed(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert set(schema["required"]) == {"emotion", "learn_score"}
    assert schema["additionalProperties"] is False
    assert tuple(schema["properties"]["emotion"]["enum"]) == LABELS
    assert schema["properties"]["learn_score"]["type"] == "boolean"


def test_every_expected_output_conforms_to_the_schema(classifier_items, schema):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for item in classifier_items:
        errors = [error.message for error in validator.iter_errors(item["expected_output"])]
        assert not errors, (item["id"], errors)


def test_the_expected_output_is_consistent_with_the_label_and_the_reference(classifier_items):
    for item in classifier_items:
        expected = item["expected_output"]
        assert set(expected) == {"emotion", "learn_score"}, item["id"]
        assert expected["emotion"] in LABELS, item["id"]
        assert isinstance(expected["learn_score"], bool), item["id"]
        assert item["expected_label"] == expected["emotion"], item["id"]
        assert json.loads(item["reference"]) == expected, item["id"]


def test_every_label_appears_at_least_seven_times(classifier_items):
    counts = collections.Counter(item["expected_label"] for item in classifier_items)
    assert {label: counts[label] for label in LABELS if counts[label] < 7} == {}


def test_learn_score_is_roughly_balanced(classifier_items):
    true_fraction = sum(item["expected_output"]["learn_score"] for item in classifier_items) / len(classifier_items)
    assert 0.4 <= true_fraction <= 0.6


def test_the_system_prompt_file_is_the_workloads_prompt_byte_for_byte():
    """Drift check: the testset is served with the very prompt the benchmarks use."""
    assert (CLASSIFIER_DIR / "system_prompt.txt").read_bytes() == CLASSIFIER_SYSTEM_PROMPT.encode("utf-8")


# --- RAG set ----------------------------------------------------------------------------------


def test_the_rag_set_has_at_least_50_items_with_unique_ids(rag_items):
    assert len(rag_items) >= 50
    ids = [item["id"] for item in rag_items]
    assert len(ids) == len(set(ids)), "duplicate ids"


def test_every_rag_item_has_exactly_the_documented_fields(rag_items):
    for item in rag_items:
        assert set(item) == RAG_FIELDS, item["id"]
        assert isinstance(item["question"], str) and item["question"].strip(), item["id"]
        assert isinstance(item["reference"], str) and item["reference"].strip(), item["id"]


def test_contexts_are_non_empty_strings(rag_items):
    for item in rag_items:
        contexts = item["contexts"]
        assert isinstance(contexts, list) and 1 <= len(contexts) <= 4, item["id"]
        assert all(isinstance(context, str) and context.strip() for context in contexts), item["id"]
        assert len(contexts) == len(set(contexts)), f"{item['id']}: a passage is retrieved twice"


def test_every_reference_context_is_one_of_the_items_contexts(rag_items):
    for item in rag_items:
        references = item["reference_contexts"]
        assert isinstance(references, list) and references, item["id"]
        assert all(reference in item["contexts"] for reference in references), item["id"]


def test_the_rag_set_has_distractors_and_multi_hop_items(rag_items):
    assert all(len(item["contexts"]) > len(item["reference_contexts"]) for item in rag_items)
    assert sum(len(item["reference_contexts"]) > 1 for item in rag_items) >= 3
