"""The structured-output conformance corpus (benchmarks/data/json_schemas/): every schema is valid Draft 2020-12 JSON
Schema that the server compiles, and a varied subset of it, sent through the whole HTTP stack with the real
SmolLM2-135M, comes back as JSON that validates and has no whitespace outside strings but the fixed separators.
The full run over every schema is `python -m tokenyard.benchmarks.schema_conformance`."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tokenyard.benchmarks import schema_conformance as conformance
from tokenyard.runtime.sampling_params import StructuredOutputsParams
from tokenyard.runtime.structured_output.grammars import GrammarCompiler
from tokenyard.wire.openai import ChatCompletionRequest

from .in_process import serving

CORPUS = conformance.load_corpus()
# Varied shapes whose answers finish well within max_tokens on the packaged model: enums, nested arrays of objects,
# optional and nullable fields, bounded numbers, patterns, string formats (uuid, date-time, date, email, hostname,
# ipv4, ipv6), $defs/$ref, oneOf/anyOf/allOf, const and prefixItems, an enum mixing types, a top-level integer.
SUBSET = [
    "sensor_reading",
    "vital_signs",
    "payment_card",
    "student_grade",
    "geojson_point",
    "family_tree",
    "shape",
    "allof_employee",
    "network_interface",
    "dns_record",
    "contact_preference",
    "library_loan",
    "rating_only",
    "mixed_enum",
]


def test_the_corpus_has_at_least_100_distinct_valid_schemas_that_all_compile(smollm2_tokenizer):
    assert len(CORPUS) >= 100
    assert len({case.name for case in CORPUS}) == len(CORPUS)
    assert len({json.dumps(case.schema, sort_keys=True) for case in CORPUS}) == len(CORPUS)
    compiler = GrammarCompiler(smollm2_tokenizer, len(smollm2_tokenizer))
    for case in CORPUS:
        jsonschema.Draft202012Validator.check_schema(case.schema)
        assert case.prompt.strip()
        ChatCompletionRequest.model_validate_json(json.dumps(conformance.request_body(case)))  # the name's rules
        compiler.compile(StructuredOutputsParams(json=case.schema))  # raises InvalidValue (the server's 400)


def test_the_subset_is_in_the_corpus():
    assert set(SUBSET) <= {case.name for case in CORPUS}


@pytest.mark.slow
def test_a_varied_subset_answers_valid_json_with_only_the_fixed_separators(smollm2_gguf):
    checker, _ = conformance.format_checker()
    cases = [case for case in CORPUS if case.name in SUBSET]
    with serving(smollm2_gguf, dtype="auto", max_model_len=2048, kv_cache_memory_bytes=128 << 20) as (client, _):
        results = [conformance.send(client, case, checker) for case in cases]
    for result in results:
        assert result.status == 200, result.error
        assert result.finish_reason == "stop", (result.name, result.cut, result.text[-200:])
        assert result.parsed and result.valid, (result.name, result.error, result.text)
        assert result.stray_whitespace == [], (result.name, result.text)


@pytest.mark.parametrize(
    ("text", "stray", "in_string", "path"),
    [
        ('{"a": [1, 2], "b": {"c": "x y"}}', [], False, []),
        ('{"a":  1', ["  "], False, ["a"]),
        ('{"a": 1,\n"b": 2', ["\n"], False, ["b"]),
        ('{"a": [1, 2 ', [" "], False, ["a", 1]),
        ('{"a": {"b": "long text, with: spaces', [], True, ["a", "b"]),
        ('["x", {"k": "v\\" still', [], True, [1, "k"]),
    ],
)
def test_the_scan_finds_stray_whitespace_and_where_a_cut_answer_ends(text, stray, in_string, path):
    scanned = conformance.scan(text)
    assert (scanned.stray_whitespace, scanned.ends_in_string, scanned.path) == (stray, in_string, path)


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("date-time", "2024-02-29T23:59:60.5+05:30", "2023-02-29T10:00:00Z"),
        ("date-time", "2024-01-01t00:00:00z", "2024-01-01 00:00:00Z"),
        ("time", "08:30:00Z", "08:30:00"),
        ("duration", "P1DT2H30M", "PT"),
        ("hostname", "db-1.example.com", "-bad.example.com"),
        ("uri", "https://example.com/a?b=c#d", "/relative/path"),
    ],
)
def test_the_formats_jsonschema_leaves_unchecked_here_are_checked(fmt, good, bad):
    checker, _ = conformance.format_checker()
    assert checker.conforms(good, fmt) and not checker.conforms(bad, fmt)
