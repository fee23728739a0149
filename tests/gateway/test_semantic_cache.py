"""The semantic cache in a real gateway: PostgreSQL with pgvector, Redis, all-MiniLM-L6-v2 and a real
`tokenyard serve` upstream. Each test uses its own system prompt, so its entries live in a scope of their own."""

from __future__ import annotations

import threading
import time
import uuid

from .client import answer, ask, metric, outcome, sse_text_and_usage


def system_prompt() -> str:
    return f"You are a helpful assistant. Session {uuid.uuid4().hex[:8]}."


def test_a_paraphrase_is_served_the_cached_answer_and_says_how_similar_it_was(semantic_gateway):
    system = system_prompt()
    first = ask(semantic_gateway, system=system, content="What is the capital of France?")
    again = ask(semantic_gateway, system=system, content="what is the capital of france??")
    assert (outcome(first), outcome(again)) == ("miss", "hit-semantic")
    assert answer(again) == answer(first)
    assert 0.95 <= float(again.headers["x-tokenyard-similarity"]) <= 1.0001


def test_a_negated_question_is_not_served_the_cached_answer(semantic_gateway):
    system = system_prompt()
    assert outcome(ask(semantic_gateway, system=system, content="Which vitamins are water-soluble?")) == "miss"
    assert outcome(ask(semantic_gateway, system=system, content="Which vitamins are not water-soluble?")) == "miss"


def test_two_tenants_asking_the_same_thing_never_receive_each_others_answers(semantic_gateway):
    system = system_prompt()
    assert outcome(ask(semantic_gateway, "acme", system=system, content="How tall is Mount Everest?")) == "miss"
    for content in ("How tall is Mount Everest?", "how tall is mount everest"):
        assert outcome(ask(semantic_gateway, "globex", system=system, content=content)) in ("miss", "hit-exact")
    assert outcome(ask(semantic_gateway, "globex", system=system, content="How tall is Mount Everest??")) == (
        "hit-semantic"  # globex's own entry, from its own first request
    )


def test_another_system_prompt_or_parameter_is_another_scope(semantic_gateway):
    system = system_prompt()
    assert outcome(ask(semantic_gateway, system=system, content="Name three primary colours.")) == "miss"
    assert outcome(ask(semantic_gateway, system=system + " Be brief.", content="Name three primary colours!")) == "miss"
    assert outcome(ask(semantic_gateway, system=system, max_tokens=9, content="Name three primary colours!")) == "miss"
    assert outcome(ask(semantic_gateway, system=system, content="Name three primary colours!")) == "hit-semantic"


def test_time_sensitive_personal_and_sampled_requests_are_not_matched_by_meaning(semantic_gateway):
    system = system_prompt()
    for first, second in [
        ("What is the weather like today?", "what is the weather like today??"),
        ("What is my account balance?", "what is my account balance??"),
    ]:
        assert outcome(ask(semantic_gateway, system=system, content=first)) == "miss"
        assert outcome(ask(semantic_gateway, system=system, content=second)) == "miss"
    sampled = ask(semantic_gateway, system=system, content="Write a haiku about rain.", temperature=0.8)
    assert outcome(sampled) == "bypass"


def test_a_semantic_hit_for_a_streaming_client_replays_the_original_stream(semantic_gateway):
    system = system_prompt()
    original = ask(semantic_gateway, stream=True, system=system, content="Give me a synonym for happy.")
    replayed = ask(semantic_gateway, stream=True, system=system, content="give me a synonym for happy")
    assert (outcome(original), outcome(replayed)) == ("miss", "hit-semantic")
    assert replayed.headers["content-type"].startswith("text/event-stream")
    text, usage, done = sse_text_and_usage(original)
    assert done and usage["completion_tokens"] > 0
    assert sse_text_and_usage(replayed) == (text, usage, True)
    whole = ask(semantic_gateway, system=system, content="Give me a synonym for happy!")
    assert outcome(whole) == "hit-semantic" and answer(whole) == text


def test_redis_then_postgres_stopping_mid_traffic_fails_no_request_and_caching_resumes(
    semantic_gateway, redis_server, postgres_server
):
    """Each stage (Redis down, then both stores down, then both back) lasts until requests have gone through in
    it from start to finish, however long one takes on this CPU."""
    system = system_prompt()
    served: list[tuple[float, int]] = []  # (when it was sent, its status), appended once answered
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            status = ask(semantic_gateway, system=system, content=f"Spell the word {uuid.uuid4().hex[:4]}").status_code
            served.append((sent, status))

    def until_served(count: int = 3, timeout: float = 120) -> None:
        """Until ``count`` requests sent from now on have been answered."""
        since = time.monotonic()
        while sum(1 for sent, _ in list(served) if sent >= since) < count:
            assert time.monotonic() - since < timeout, f"fewer than {count} requests answered in {timeout}s"
            time.sleep(0.05)

    errors_before = {
        s: metric(semantic_gateway, "tokenyard_gateway_store_errors_total", store=s) for s in ("redis", "postgres")
    }
    clients = [threading.Thread(target=traffic) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        until_served()
        redis_server.stop()
        until_served()
        postgres_server.stop()
        until_served()
        redis_server.start()
        postgres_server.start()
        until_served()
    finally:
        stop.set()
        for client in clients:
            client.join()
        redis_server.start()
        postgres_server.start()
    assert len(served) >= 12 and {status for _, status in served} == {200}
    for store, before in errors_before.items():
        assert metric(semantic_gateway, "tokenyard_gateway_store_errors_total", store=store) > before, store

    deadline = time.monotonic() + 30
    while True:  # both stores are back: a new entry is stored and then served, from each cache
        content = f"What rhymes with {uuid.uuid4().hex[:6]}?"
        first = ask(semantic_gateway, system=system, content=content)
        exact = ask(semantic_gateway, system=system, content=content)
        semantic = ask(semantic_gateway, system=system, content=content.lower() + "?")
        if (outcome(first), outcome(exact), outcome(semantic)) == ("miss", "hit-exact", "hit-semantic"):
            break
        assert time.monotonic() < deadline, "caching did not resume"
        time.sleep(1)


def test_a_semantic_hit_is_written_back_so_the_same_request_is_then_an_exact_hit(semantic_gateway):
    system = system_prompt()
    first = ask(semantic_gateway, system=system, content="What is the boiling point of water?")
    paraphrase = [ask(semantic_gateway, system=system, content="what is the boiling point of water??") for _ in "ab"]
    assert [outcome(r) for r in (first, *paraphrase)] == ["miss", "hit-semantic", "hit-exact"]
    assert answer(paraphrase[1]) == answer(paraphrase[0]) == answer(first)
    assert "x-tokenyard-similarity" not in paraphrase[1].headers
