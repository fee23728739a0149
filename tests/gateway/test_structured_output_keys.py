"""Structured output and the gateway's caches. A request's constraint (OpenAI's response_format, vLLM's
structured_outputs or its older guided_* fields) is part of what makes two requests the same: an answer generated
under one constraint is never served, exactly or by meaning, to a request under another or under none. Spellings
of one constraint share entries (the key is the constraint as the runtime compiles it: canonical.constraint), and
every constraint field reaches the upstream as the client sent it.

The cache tests run the real gateway process with a real Redis, a real PostgreSQL with pgvector, local
all-MiniLM-L6-v2 embeddings and a real `tokenyard serve` upstream, which compiles and follows each constraint
(an answer is only cached when the runtime accepted it). The pass-through tests put the stand-in replica
(stand_in.py) behind the real gateway, because it records the body it received. The last tests pin the key rule
itself on the functions both caches use."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tokenyard.gateway.canonical import cache_key, canonical_request, constraint
from tokenyard.gateway.semantic import semantic_query

from .client import answer, ask, outcome
from .conftest import TENANTS, GatewayProcess, write_config
from .stand_in import MODEL as STAND_IN_MODEL

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
# Properties are generated in the order a schema lists them, so PERSON and PERSON_NAME_LAST are two constraints.
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
PERSON_NAME_LAST = {
    "type": "object",
    "properties": {"age": {"type": "integer"}, "name": {"type": "string"}},
    "required": ["name", "age"],
}
GRAMMAR = 'start: "yes" | "no"'  # Lark


def json_schema(schema: dict, name: str = "person", **more: object) -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema, **more}}}


# One entry per constraint: each is another constraint than every other.
DISTINCT = {
    "none": {},
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema": json_schema(PERSON),
    "json_schema, properties in another order": json_schema(PERSON_NAME_LAST),
    "regex": {"structured_outputs": {"regex": "[A-Z][a-z]+"}},
    "another regex": {"structured_outputs": {"regex": "[a-z]+"}},
    "choice": {"structured_outputs": {"choice": ["yes", "no"]}},
    "choice, in another order": {"guided_choice": ["no", "yes"]},
    "grammar": {"guided_grammar": GRAMMAR},
}
# Each group: spellings of one constraint.
SPELLINGS = {
    "json schema": [
        {"structured_outputs": {"json": PERSON}},
        {"guided_json": PERSON},
        {"guided_json": json.dumps(PERSON)},
        json_schema(PERSON, name="other_name", strict=True, description="a person"),
    ],
    "json object": [{"response_format": {"type": "json_object"}}, {"structured_outputs": {"json_object": True}}],
    "regex": [{"guided_regex": "[A-Z][a-z]+"}, {"structured_outputs": {"regex": "[A-Z][a-z]+"}}],
    "choice": [{"guided_choice": ["yes", "no"]}, {"structured_outputs": {"choice": ["yes", "no"]}}],
    "grammar": [{"guided_grammar": GRAMMAR}, {"structured_outputs": {"grammar": GRAMMAR}}],
    "none": [{}, {"response_format": {"type": "text"}}, {"response_format": None}],
}


def fresh(topic: str = "a number") -> str:
    return f"Describe {topic} {uuid.uuid4().int % 10**6}."


def complete(gateway, prompt: str, **fields) -> httpx.Response:
    body = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "prompt": prompt, "max_tokens": 8, "temperature": 0}
    return httpx.post(
        f"{gateway.url}{COMPLETIONS}",
        json=body | fields,
        timeout=120,
        headers={"Authorization": f"Bearer {TENANTS['acme']}"},
    )


# The exact cache, in front of a real runtime.


def test_requests_that_differ_only_in_their_constraint_miss_each_others_exact_entries(gateway):
    content = fresh()
    first = {name: ask(gateway, content=content, **fields) for name, fields in DISTINCT.items()}
    assert {name: outcome(r) for name, r in first.items()} == dict.fromkeys(DISTINCT, "miss")
    again = {name: ask(gateway, content=content, **fields) for name, fields in DISTINCT.items()}
    assert {name: outcome(r) for name, r in again.items()} == dict.fromkeys(DISTINCT, "hit-exact")
    assert {name: r.json() for name, r in again.items()} == {name: r.json() for name, r in first.items()}


@pytest.mark.parametrize("constraint_name", list(SPELLINGS))
def test_one_constraint_spelled_any_way_shares_one_exact_entry(gateway, constraint_name):
    content = fresh()
    first, *others = SPELLINGS[constraint_name]
    original = ask(gateway, content=content, **first)
    assert outcome(original) == "miss"
    for fields in others:
        spelled = ask(gateway, content=content, **fields)
        assert outcome(spelled) == "hit-exact", fields
        assert spelled.json() == original.json()


def test_a_completion_under_a_constraint_is_not_the_unconstrained_completion(gateway):
    prompt = fresh("a colour")
    assert outcome(complete(gateway, prompt)) == "miss"
    assert outcome(complete(gateway, prompt, guided_regex="[a-z]+")) == "miss"
    assert outcome(complete(gateway, prompt, structured_outputs={"regex": "[a-z]+"})) == "hit-exact"
    assert outcome(complete(gateway, prompt, response_format={"type": "text"})) == "hit-exact"


def test_a_streamed_request_under_a_constraint_replays_only_for_that_constraint(gateway):
    content = fresh()
    streamed = ask(gateway, stream=True, content=content, **json_schema(PERSON))
    assert outcome(streamed) == "miss"
    assert outcome(ask(gateway, content=content)) == "miss"
    assert outcome(ask(gateway, content=content, guided_json=PERSON)) == "hit-exact"


# The semantic cache, in front of a real runtime.


def system_prompt() -> str:
    return f"You are a helpful assistant. Session {uuid.uuid4().hex[:8]}."


def test_a_near_duplicate_question_under_another_constraint_or_none_is_not_served_the_cached_answer(
    semantic_gateway,
):
    system = system_prompt()
    constrained = ask(semantic_gateway, system=system, content="What is the capital of France?", **json_schema(PERSON))
    assert outcome(constrained) == "miss"
    for content, fields in [
        ("what is the capital of france??", {}),  # none: not served the constrained answer
        ("What is the capital of France??", json_schema(PERSON_NAME_LAST)),
        ("what is the capital of France?", {"response_format": {"type": "json_object"}}),
        ("What is the capital of france?!", {"guided_regex": "[A-Z][a-z]+"}),
    ]:
        assert outcome(ask(semantic_gateway, system=system, content=content, **fields)) == "miss", fields
    # The same constraint, spelled another way, is the same scope: the paraphrase is served the first answer.
    paraphrase = ask(semantic_gateway, system=system, content="what is the capital of france?", guided_json=PERSON)
    assert outcome(paraphrase) == "hit-semantic"
    assert answer(paraphrase) == answer(constrained)


def test_an_unconstrained_answer_serves_a_near_duplicate_with_response_format_text_and_no_constrained_one(
    semantic_gateway,
):
    system = system_prompt()
    plain = ask(semantic_gateway, system=system, content="Name a large ocean.")
    assert outcome(plain) == "miss"
    choice = {"structured_outputs": {"choice": ["Pacific", "Atlantic"]}}
    assert outcome(ask(semantic_gateway, system=system, content="name a large ocean!", **choice)) == "miss"
    text = ask(semantic_gateway, system=system, content="name a large ocean", response_format={"type": "text"})
    assert outcome(text) == "hit-semantic"
    assert answer(text) == answer(plain)


# Pass-through: the constraint fields reach the upstream as they were sent.


@pytest.fixture(scope="module")
def stand_in_gateway(stand_in, redis_server, tmp_path_factory):
    directory = tmp_path_factory.mktemp("structured-output")
    process = GatewayProcess([stand_in.url], redis_server.url, write_config(directory), directory / "gateway.log")
    yield process
    process.stop()


PASSED = {
    "response_format json_object": {"response_format": {"type": "json_object"}},
    "response_format json_schema": json_schema(PERSON_NAME_LAST, name="person", strict=True, description="who"),
    "response_format text": {"response_format": {"type": "text"}},
    "structured_outputs json": {"structured_outputs": {"json": PERSON}},
    "structured_outputs json text": {"structured_outputs": {"json": json.dumps(PERSON)}},
    "structured_outputs json_object": {"structured_outputs": {"json_object": True}},
    "structured_outputs regex": {"structured_outputs": {"regex": "[A-Z][a-z]+"}},
    "structured_outputs choice": {"structured_outputs": {"choice": ["no", "yes"]}},
    "structured_outputs grammar": {"structured_outputs": {"grammar": GRAMMAR}},
    "guided_json": {"guided_json": PERSON_NAME_LAST},
    "guided_json text": {"guided_json": json.dumps(PERSON)},
    "guided_regex": {"guided_regex": "[a-z]+"},
    "guided_choice": {"guided_choice": ["yes", "no"]},
    "guided_grammar": {"guided_grammar": GRAMMAR},
}


@pytest.mark.parametrize(
    ("path", "stream"),
    [(CHAT, False), (COMPLETIONS, False), (CHAT, True)],  # a stream's body is re-encoded (usage is asked for)
    ids=["chat", "completions", "chat-stream"],
)
@pytest.mark.parametrize("name", list(PASSED))
def test_each_constraint_field_reaches_the_upstream_as_it_was_sent(stand_in_gateway, stand_in, name, path, stream):
    fields = PASSED[name]
    text = fresh()
    body = {"model": STAND_IN_MODEL, "max_tokens": 4, "temperature": 0, "stream": stream, **fields}
    body |= {"messages": [{"role": "user", "content": text}]} if path == CHAT else {"prompt": text}
    response = httpx.post(f"{stand_in_gateway.url}{path}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    sent = next(seen.body for seen in reversed(stand_in.posts()) if text in json.dumps(seen.body))
    for field, value in fields.items():
        assert sent[field] == value
        assert json.dumps(sent[field]) == json.dumps(value)  # the order of keys too: it is the order generated


# The key rule itself, on the functions both caches key on.


def exact_key(**fields: object) -> str:
    body = {"messages": [{"role": "user", "content": "Who wrote Hamlet?"}], "temperature": 0, **fields}
    return cache_key("acme", "m", canonical_request(body, CHAT))


def semantic_scope(content: str = "Who wrote Hamlet?", **fields: object) -> str:
    body = {"messages": [{"role": "user", "content": content}], "temperature": 0, **fields}
    query = semantic_query(body, CHAT, "acme", "m", "all-MiniLM-L6-v2")
    assert query is not None
    return query.scope


@pytest.mark.parametrize("key", [exact_key, semantic_scope], ids=["exact", "semantic"])
def test_every_constraint_has_its_own_key_and_every_spelling_of_one_shares_it(key):
    distinct = [key(**fields) for fields in DISTINCT.values()]
    assert len(set(distinct)) == len(DISTINCT)
    for constraint_name, spellings in SPELLINGS.items():
        assert len({key(**fields) for fields in spellings}) == 1, constraint_name
    assert key(**SPELLINGS["json schema"][0]) == key(**DISTINCT["json_schema"])


def test_a_schema_is_keyed_as_sent_and_only_its_spelling_is_normalised():
    """Text or object, one key; anything moved inside the schema, another (conservative: the runtime compiles the
    schema as sent)."""
    assert constraint({"guided_json": json.dumps(PERSON)}) == constraint({"guided_json": PERSON})
    keywords_moved = {"required": PERSON["required"], "properties": PERSON["properties"], "type": "object"}
    assert constraint({"guided_json": PERSON}) != constraint({"guided_json": keywords_moved})
    assert constraint({"guided_json": {"type": "object"}}) == ["json", '{"type":"object"}']
    assert constraint({"response_format": {"type": "json_object"}}) == ["json_object", "true"]
    assert constraint({"response_format": {"type": "text"}}) is None


def test_a_schema_sent_as_text_nested_past_any_limit_is_keyed_as_text_without_recursing():
    deep = '{"not":' * 5000 + "{}" + "}" * 5000
    kind, value = constraint({"guided_json": deep})
    assert kind == "json" and json.loads(value) == deep
