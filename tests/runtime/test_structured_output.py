"""Structured output: a request's constraint (JSON Schema, JSON object, regex, choice, Lark/GBNF grammar) holds for
every answer, on the real SmolLM2 and on tiny random models, through the offline API and both HTTP endpoints, next to
free requests, speculation, preemption, chunked prefill and the prefix cache; bad constraints are refused with the
reason."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from tokenyard.benchmarks.schema_conformance import scan
from tokenyard.runtime import LLM
from tokenyard.runtime.engine.scheduler import Scheduler
from tokenyard.runtime.engine.sequence import Sequence
from tokenyard.runtime.sampling_params import SamplingParams, StructuredOutputsParams
from tokenyard.runtime.structured_output import grammars

from .conftest import CLASSIFIER_SYSTEM
from .in_process import MODEL, serving
from .test_engine import assert_no_leak

LABELS = ["happy", "sad", "angry", "scared", "surprised", "bored", "confused", "proud", "neutral"]
CLASSIFIER_SCHEMA = {
    "type": "object",
    "properties": {"emotion": {"type": "string", "enum": LABELS}, "learn_score": {"type": "boolean"}},
    "required": ["emotion", "learn_score"],
    "additionalProperties": False,
}
TURNS = [
    "Tutor question: What colour is the sky?\nChild's reply: blue!! I love it",
    "Tutor question: Say hello in English.\nChild's reply: Xin chào... hello?",
    "Tutor question: How do you feel today?\nChild's reply: my dog is sick. i cried",
]
# Bounded answers a random model cannot ramble in: what the tiny-model tests constrain with.
TINY_CONSTRAINTS = [
    {"json": CLASSIFIER_SCHEMA},
    {"regex": r"(yes|no), [0-9]{1,3}"},
    {"choice": ["red", "green", "blue"]},
    {"grammar": 'start: "The answer is " ("yes" | "no") "."'},
]


def classifier_chat(turn: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": CLASSIFIER_SYSTEM}, {"role": "user", "content": turn}]


def greedy(constraint: dict | None = None, max_tokens: int = 50) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, structured_outputs=constraint)


def follows(constraint: dict, text: str) -> bool:
    """Whether ``text`` satisfies ``constraint`` (checked independently of the grammar library)."""
    kind, value = next(iter(constraint.items()))
    if kind == "json":
        try:
            jsonschema.validate(json.loads(text), value)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True
    if kind == "json_object":
        try:
            return isinstance(json.loads(text), dict)
        except ValueError:
            return False
    if kind == "regex":
        return re.fullmatch(value, text) is not None
    if kind == "choice":
        return text in value
    return re.fullmatch(r"The answer is (yes|no)\.", text) is not None


def whitespace_outside_strings(text: str) -> list[str]:
    """Every whitespace run outside JSON strings other than the one space after ',' or ':'."""
    return scan(text).stray_whitespace


# --- the real model ------------------------------------------------------------------------------------
def test_the_classifier_answers_one_line_of_schema_json_and_stops_when_it_is_complete(llm_fp32):
    outputs = llm_fp32.chat([classifier_chat(turn) for turn in TURNS], greedy({"json": CLASSIFIER_SCHEMA}))
    for output in outputs:
        completion = output.outputs[0]
        jsonschema.validate(json.loads(completion.text), CLASSIFIER_SCHEMA)
        assert completion.finish_reason == "stop"
        assert completion.text.endswith("}") and len(completion.token_ids) < 20
        assert whitespace_outside_strings(completion.text) == []


@pytest.mark.parametrize(
    "constraint",
    [
        {"json_object": True},
        {"regex": r"(happy|sad|angry), (true|false)"},
        {"choice": LABELS},
        {"grammar": 'start: "Emotion: " LABEL\nLABEL: "happy" | "sad" | "angry" | "neutral"'},
        {"grammar": 'root ::= "Emotion: " label\nlabel ::= "happy" | "sad" | "angry" | "neutral"'},  # GBNF
    ],
    ids=["json_object", "regex", "choice", "lark", "gbnf"],
)
def test_every_kind_of_constraint_holds_on_the_real_model(llm_fp32, constraint):
    chat = classifier_chat(TURNS[2])
    if "json_object" in constraint:  # any object: a question with a short answer, or the 135M model rambles
        chat = [{"role": "user", "content": "Return the user's name and city as JSON. The user is Lan from Hanoi."}]
    [output] = llm_fp32.chat(chat, greedy(constraint, max_tokens=60))
    text = output.outputs[0].text
    if "grammar" in constraint:
        assert re.fullmatch(r"Emotion: (happy|sad|angry|neutral)", text), text
    else:
        assert follows(constraint, text), text
    assert output.outputs[0].finish_reason == "stop"


def test_an_answer_cut_by_max_tokens_before_its_grammar_ends_finishes_with_length(llm_fp32):
    [output] = llm_fp32.chat(classifier_chat(TURNS[0]), greedy({"json": CLASSIFIER_SCHEMA}, max_tokens=4))
    completion = output.outputs[0]
    assert completion.finish_reason == "length" and len(completion.token_ids) == 4
    assert '{"emotion": "'.startswith(completion.text) or completion.text.startswith('{"emotion": "')


def test_json_gets_no_room_for_whitespace_even_when_the_prompt_asks_for_pretty_printing(llm_fp32):
    chat = [{"role": "user", "content": "Give me a JSON object about a cat, pretty-printed with 4-space indents."}]
    [output] = llm_fp32.chat(chat, greedy({"json_object": True}, max_tokens=80))
    assert whitespace_outside_strings(output.outputs[0].text) == []


def test_speculation_changes_nothing_in_a_constrained_answer(smollm2_gguf, llm_fp32):
    """float32, greedy: n-gram drafts (many of which the grammar forbids) are pruned or verified against the
    masked logits, so the answers equal plain decoding's token for token."""
    speculative = LLM(
        str(smollm2_gguf),
        dtype="float32",
        max_model_len=2048,
        kv_cache_memory_bytes=256 << 20,
        speculative_config={"method": "ngram", "num_speculative_tokens": 4},
    )
    chats = [classifier_chat(turn) for turn in TURNS]
    for constraint in ({"json": CLASSIFIER_SCHEMA}, {"json_object": True}):
        params = greedy(constraint)
        expected = [o.outputs[0].token_ids for o in llm_fp32.chat(chats, params)]
        assert [o.outputs[0].token_ids for o in speculative.chat(chats, params)] == expected
    assert speculative.engine.spec_decode_stats.num_accepted_tokens > 0
    assert_no_leak(speculative)


def test_tokens_the_grammar_forces_are_computed_in_one_step_and_change_nothing(llm_fp32, monkeypatch):
    """Jump-forward: the schema's keys and punctuation are drafted as a whole and verified against the masked
    logits, so the classifier's ~16-token answer takes a handful of steps and equals token-by-token decoding."""
    chats = [classifier_chat(turn) for turn in TURNS]
    params = greedy({"json": CLASSIFIER_SCHEMA})
    engine = llm_fp32.engine
    forced_before, steps = engine.structured_outputs.stats.forced_tokens, 0
    step = engine.step

    def counted_step():
        nonlocal steps
        steps += 1
        return step()

    monkeypatch.setattr(engine, "step", counted_step)
    jumped = [o.outputs[0].token_ids for o in llm_fp32.chat(chats, params)]
    assert engine.structured_outputs.stats.forced_tokens - forced_before >= 10 * len(TURNS)
    assert steps <= 6 < min(len(tokens) for tokens in jumped)

    def prune_only(self, scheduler):  # the drafting switched off: one token a step
        self._forced = set()

    monkeypatch.setattr(type(engine.structured_outputs), "draft", prune_only)
    assert [o.outputs[0].token_ids for o in llm_fp32.chat(chats, params)] == jumped


# --- tiny models: batching, preemption, chunking, failures -------------------------------------------------
def test_a_batch_mixing_constrained_and_free_rows_equals_each_request_alone(tiny_llm):
    prompts = ["Once upon a time", "The weather today", "My favourite colour is", "Numbers:", "Hello"]
    params = [greedy(c, max_tokens=24) for c in TINY_CONSTRAINTS] + [greedy(None, max_tokens=24)]
    together = tiny_llm.generate(prompts, params)
    alone = [tiny_llm.generate(prompt, p)[0] for prompt, p in zip(prompts, params, strict=True)]
    assert [o.outputs[0].token_ids for o in together] == [o.outputs[0].token_ids for o in alone]
    for constraint, output in zip(TINY_CONSTRAINTS, together, strict=False):
        assert follows(constraint, output.outputs[0].text), output.outputs[0].text
    assert_no_leak(tiny_llm)


def test_constrained_answers_are_unchanged_by_preemption_chunked_prefill_and_prefix_hits(tiny_llama_dir, tiny_llm):
    """A pool too small for the batch preempts (the matchers keep their state while the sequences recompute, from
    the prefix cache where their blocks survived); prompts are prefilled in chunks of 32 tokens."""
    prompts = [f"Request number {i} asks for a long list of words, one after another, please. " * 3 for i in range(6)]
    long_regex = {"regex": r"([a-z]+ ){40}"}  # longer than max_tokens: the blocks run out while they decode
    params = [greedy(long_regex if i % 2 else {"json": CLASSIFIER_SCHEMA}, max_tokens=100) for i in range(6)]
    expected = [o.outputs[0].token_ids for o in tiny_llm.generate(prompts, params)]
    cramped = LLM(
        str(tiny_llama_dir),
        dtype="float32",
        max_num_seqs=6,
        max_num_batched_tokens=32,
        max_model_len=256,
        kv_cache_memory_bytes=18 * 16 * 512,  # 18 blocks of 16 tokens (512 bytes a token): too few for 6 at once
    )
    outputs = cramped.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert cramped.engine.scheduler.num_preemptions > 0
    assert cramped.engine.kv_cache.prefix_cache_hits > 0
    assert_no_leak(cramped)


def test_draft_tokens_the_grammar_forbids_are_pruned_before_verification(tiny_llm):
    engine = tiny_llm.engine
    seq = Sequence("drafts", [1, 2, 3], greedy({"choice": ["red", "green"]}), max_tokens=10)
    engine.structured_outputs.start(seq)
    tokenizer = engine.tokenizer
    red = tokenizer.encode("red", add_special_tokens=False)
    seq.draft_token_ids = [*red, *tokenizer.encode("xyz", add_special_tokens=False)]
    scheduler = Scheduler(engine.config, engine.kv_cache)  # its own: the engine's queues stay as they are
    scheduler.add(seq)
    engine.structured_outputs.draft(scheduler)
    assert seq.draft_token_ids == red
    masks, failed = engine.structured_outputs.allowed_tokens([seq])
    assert failed == {}
    assert masks[0] is not None and masks[0].shape[0] == 1 + len(red)
    assert bool(masks[0][0, red[0]]) and not bool(masks[0][0, tokenizer.encode("xyz", add_special_tokens=False)[0]])


def test_a_matcher_that_fails_mid_answer_ends_its_request_and_no_other(tiny_llm):
    engine = tiny_llm.engine
    engine.add_request("broken", "Once upon a time", greedy({"choice": ["red", "green"]}))
    engine.add_request("free", "Once upon a time", greedy(None, max_tokens=8))
    engine.add_request("fine", "Once upon a time", greedy({"choice": ["red", "green"]}))
    broken = engine._requests["broken"].seq
    assert broken.grammar is not None
    broken.grammar.consume_token(tiny_llm.engine.tokenizer.encode("xyz", add_special_tokens=False)[0])
    finished = {}
    while engine.has_unfinished_requests():
        finished |= {o.request_id: o for o in engine.step() if o.finished}
    assert finished["broken"].outputs[0].finish_reason == "error"
    assert "could not be followed" in str(finished["broken"].outputs[0].stop_reason)
    assert finished["broken"].outputs[0].token_ids == []
    assert finished["fine"].outputs[0].text in ("red", "green")
    assert len(finished["free"].outputs[0].token_ids) == 8
    assert_no_leak(tiny_llm)


def test_a_token_the_matcher_refuses_after_its_mask_allowed_it_ends_only_its_request(tiny_llm, monkeypatch):
    """No mock: with the refusal of unwritable text turned off, llguidance's own inconsistency shows (its mask
    after "a" allows "b", skipping the byte 0x04 no token holds, and then it refuses "b")."""
    engine = tiny_llm.engine
    monkeypatch.setattr(engine.structured_outputs.compiler, "unwritable_bytes", frozenset())
    engine.add_request("unwritable", "Once upon a time", greedy({"choice": ["a\x04b"]}))
    engine.add_request("free", "Once upon a time", greedy(None, max_tokens=8))
    engine.add_request("fine", "Once upon a time", greedy({"choice": ["red", "green"]}))
    finished = {}
    while engine.has_unfinished_requests():
        finished |= {o.request_id: o for o in engine.step() if o.finished}
    assert finished["unwritable"].outputs[0].finish_reason == "error"
    assert "could not be followed" in str(finished["unwritable"].outputs[0].stop_reason)
    assert finished["fine"].outputs[0].text in ("red", "green")
    assert len(finished["free"].outputs[0].token_ids) == 8
    assert_no_leak(tiny_llm)

    # The same refusal of a sampled token (not a forced draft, as above) ends the answer with the reason
    seq = Sequence("sampled", [1, 2, 3], greedy({"choice": ["a\x04b"]}), max_tokens=10)
    engine.structured_outputs.start(seq)
    a, b = (engine.tokenizer.convert_tokens_to_ids(t) for t in ("a", "b"))
    assert engine.structured_outputs.accept(seq, a) is None
    reason, why = engine.structured_outputs.accept(seq, b) or ("", "")
    assert reason == "error" and "could not be followed" in str(why)


# --- refusals and the compile cache -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ({"json": {"type": "objekt"}}, r"structured_outputs.json=.*a valid JSON Schema \(at type: 'objekt'"),
        ({"json": {"not": {"type": "string"}}}, r"Unimplemented keys: \[\"not\"\]"),
        ({"json": {"type": "string", "format": "shoe-size"}}, r"Unknown format: shoe-size"),
        ({"json": "{not json"}, r"structured_outputs.json=.*a JSON Schema \(Expecting"),
        ({"regex": "(("}, r"(?s)structured_outputs.regex=.*a regular expression .*unclosed group"),
        ({"choice": []}, r"structured_outputs.choice=\[\] is invalid: must be a non-empty list"),
        ({"grammar": "start: undefined_rule"}, r"structured_outputs.grammar=.*unknown name"),
        ({"json": {"type": "string"}, "regex": "a"}, r"exactly one of json, regex, choice, grammar, json_object"),
        ({}, r"exactly one of"),
        ({"jsn": {}}, r"structured_outputs=\['jsn'\] is invalid: must be keys among"),
        ({"json": {"type": "integer", "minimum": 10**400}}, r"structured_outputs.json=.*that llguidance supports"),
        ({"regex": "\ud800"}, r"structured_outputs.regex=.*surrogates not allowed"),
        ({"json": {"$schema": []}}, r"structured_outputs.json=.*whose \$schema is a URI string"),
        # SmolLM2's vocabulary has no token holding the byte 0xf2 (nor 0xf1, 0x04, 0x13, ...)
        ({"choice": ["J\u00c7\u00d0\U000b66b6", "no"]}, r"U\+B66B6\) needs the byte 0xf2, which none of its tokens"),
        ({"regex": "a\x04b"}, r"structured_outputs.regex=.*text this model's vocabulary can write: '\\x04'"),
        ({"json": {"enum": ["ok", "\U00050000"]}}, r"structured_outputs.json=.*\(U\+50000\) needs the byte 0xf1"),
        ({"json": {"properties": {"a\x13": {}}, "required": ["a\x13"]}}, r"'\\x13' \(U\+0013\) needs the byte 0x13"),
    ],
    ids=[
        "invalid-schema",
        "unsupported-keyword",
        "unknown-format",
        "schema-not-json",
        "bad-regex",
        "empty-choice",
        "bad-grammar",
        "two-constraints",
        "none",
        "unknown-key",
        "number-past-64-bits",
        "lone-surrogate",
        "schema-uri-not-a-string",
        "choice-the-vocabulary-cannot-write",
        "regex-the-vocabulary-cannot-write",
        "enum-the-vocabulary-cannot-write",
        "key-the-vocabulary-cannot-write",
    ],
)
def test_bad_constraints_are_refused_naming_the_field_and_the_reason(tiny_llm, constraint, message):
    with pytest.raises(ValueError, match=message):
        tiny_llm.generate("hi", SamplingParams(structured_outputs=constraint))
    assert not tiny_llm.engine.has_unfinished_requests()


@pytest.mark.parametrize("as_text", [False, True], ids=["object", "json-text"])
def test_a_schema_nested_past_the_limit_is_refused_without_recursing(tiny_llm, as_text):
    schema: dict = {"type": "string"}
    for _ in range(5000):
        schema = {"type": "array", "items": schema}
    text = '{"type": "array", "items": ' * 5000 + '{"type": "string"}' + "}" * 5000
    with pytest.raises(ValueError, match=r"nested at most 64 levels"):
        tiny_llm.generate("hi", SamplingParams(structured_outputs={"json": text if as_text else schema}))


def test_one_bad_constraint_in_a_call_runs_none_of_its_prompts(tiny_llm):
    params = [greedy({"choice": ["a"]}), greedy({"regex": "(("})]
    with pytest.raises(ValueError, match=r"prompt 1: structured_outputs\.regex"):
        tiny_llm.generate(["one", "two"], params)
    assert not tiny_llm.engine.has_unfinished_requests()


def test_the_same_constraint_compiles_once_and_reordered_properties_are_another_constraint(tiny_llm):
    """Property order is answer order: {"a", "b"} and {"b", "a"} accept different texts, so they never share."""
    compile_ = tiny_llm.engine.structured_outputs.compile
    a_then_b = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
    b_then_a = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "integer"}}}
    first = compile_(StructuredOutputsParams(json=a_then_b))
    assert compile_(StructuredOutputsParams(json=json.loads(json.dumps(a_then_b)))) is first
    assert compile_(StructuredOutputsParams(json=b_then_a)) is not first


def test_a_constraint_that_compiles_too_slowly_is_refused(tiny_llm, monkeypatch):
    monkeypatch.setattr(grammars, "COMPILE_SECONDS", 0.0)
    with pytest.raises(ValueError, match=r"a constraint that compiles within 0 s \(this one took"):
        tiny_llm.engine.structured_outputs.compile(StructuredOutputsParams(regex="[a-z]{3,9}@never-cached"))


# --- the HTTP endpoints --------------------------------------------------------------------------------
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "label", "schema": CLASSIFIER_SCHEMA, "strict": True}}
REQUEST_FORMS = [  # (body fields, the constraint they mean)
    ({"response_format": SCHEMA_FORMAT}, {"json": CLASSIFIER_SCHEMA}),
    ({"structured_outputs": {"json": CLASSIFIER_SCHEMA}}, {"json": CLASSIFIER_SCHEMA}),
    ({"structured_outputs": {"regex": r"(yes|no), [0-9]{1,3}"}}, {"regex": r"(yes|no), [0-9]{1,3}"}),
    ({"structured_outputs": {"choice": ["red", "blue"]}}, {"choice": ["red", "blue"]}),
    ({"structured_outputs": {"grammar": TINY_CONSTRAINTS[3]["grammar"]}}, TINY_CONSTRAINTS[3]),
    ({"guided_json": json.dumps(CLASSIFIER_SCHEMA)}, {"json": CLASSIFIER_SCHEMA}),
    ({"guided_regex": "[0-9]{4}"}, {"regex": "[0-9]{4}"}),
    ({"guided_choice": ["red", "blue"]}, {"choice": ["red", "blue"]}),
    ({"guided_grammar": 'root ::= "The answer is " ("yes" | "no") "."'}, TINY_CONSTRAINTS[3]),
]


@pytest.fixture(scope="module")
def tiny_server(tiny_llama_dir):
    with serving(tiny_llama_dir, max_model_len=256) as (client, engine):
        yield client, engine


def answer_text(client, endpoint: str, fields: dict, stream: bool) -> tuple[str, str]:
    body = {"model": MODEL, "max_tokens": 40, "temperature": 0, "stream": stream, **fields}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": "Answer, please."}]
        response = client.post("/v1/chat/completions", json=body)
    else:
        body["prompt"] = "Answer, please:"
        response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    if not stream:
        choice = response.json()["choices"][0]
        return (choice["message"]["content"] if endpoint == "chat" else choice["text"]), choice["finish_reason"]
    text, finish = "", None
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                text += choice["delta"].get("content", "") if endpoint == "chat" else choice["text"]
                finish = choice["finish_reason"] or finish
    return text, finish


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize(
    ("fields", "constraint"), REQUEST_FORMS, ids=[next(iter(f)) + f"-{i}" for i, (f, _) in enumerate(REQUEST_FORMS)]
)
def test_every_request_form_constrains_both_endpoints_streaming_or_not(
    tiny_server, endpoint, stream, fields, constraint
):
    client, _ = tiny_server
    text, finish = answer_text(client, endpoint, fields, stream)
    assert follows(constraint, text), text
    assert finish == "stop"


def test_response_format_text_is_no_constraint(tiny_server):
    client, engine = tiny_server
    before = sum(engine.structured_outputs.stats.requests.values())
    answer_text(client, "chat", {"response_format": {"type": "text"}}, False)
    assert sum(engine.structured_outputs.stats.requests.values()) == before


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
            "response_format.json_schema.schema",
            "a valid JSON Schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "not": {"required": ["a"]}}},
                }
            },
            "response_format.json_schema.schema",
            "Unimplemented keys",
        ),
        ({"structured_outputs": {"regex": "(("}}, "structured_outputs.regex", "unclosed group"),
        ({"guided_regex": "(("}, "guided_regex", "unclosed group"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice", "at least 1 item"),
        ({"structured_outputs": {"grammar": "start: nothing_defined"}}, "structured_outputs.grammar", "unknown name"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, None, "one structured-output constraint"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, None, "one structured-output constraint"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema must be given"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "'text', 'json_object' or 'json_schema'"),
        ({"structured_outputs": {"json_schema": {}}}, "structured_outputs.json_schema", "Extra inputs"),
    ],
    ids=[
        "invalid-schema",
        "unsupported-keyword",
        "bad-regex",
        "bad-guided-regex",
        "empty-choice",
        "bad-grammar",
        "two-fields",
        "two-in-one",
        "schema-missing",
        "unknown-type",
        "unknown-key",
    ],
)
def test_bad_constraints_are_answered_400_with_the_reason(tiny_server, fields, param, message):
    client, engine = tiny_server
    response = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"]
    if param is not None:
        assert error["param"] == param
    assert engine.in_flight == 0


def test_constrained_requests_are_counted_by_kind_and_mask_time_is_measured(tiny_server):
    client, _ = tiny_server
    answer_text(client, "chat", {"structured_outputs": {"choice": ["red", "blue"]}}, False)
    metrics = client.get("/metrics").text
    count = re.search(r'tokenyard_structured_output_requests_total\{kind="choice",model_name="tiny"\} (\S+)', metrics)
    assert count is not None and float(count.group(1)) >= 1
    steps = re.search(r'tokenyard_structured_output_mask_seconds_count\{model_name="tiny"\} (\S+)', metrics)
    assert steps is not None and float(steps.group(1)) >= 1
