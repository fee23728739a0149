"""Faults through the gateway, every part real: `tokenyard gateway` processes, `tokenyard serve` replicas of a tiny
random llama (its 900-token answers take about a second on one CPU core, long enough to kill something in the
middle), a real Redis and a real PostgreSQL with pgvector. The faults: 10x overload, both stores killed mid-load,
a slow upstream, an upstream SIGKILLed mid-stream, and an upstream SIGTERMed mid-stream.

How each request is counted (each test prints one line of these counts, then asserts the goals). A request ends,
as its client sees it, in exactly one of:

- answered: 200 and a whole answer: a completion with its finish_reason or, streamed, chunks up to the one with
  the finish_reason, then ``data: [DONE]``, and no error event;
- refused: 429 or 503 (a runtime's bound or drain, or the gateway's own line). Neither the runtime nor the
  gateway ran it, and Retry-After tells the client when to come back: ``without_retry_after`` counts the
  refusals that lack it (goal 0);
- cut: a 200 stream that ends with an SSE error event and ``[DONE]``: accepted, then ended with a clear error;
- lost: anything else: another status, a 200 stream without ``[DONE]`` or without its finish_reason and no error
  event, a body that is not a completion, a broken connection (goal 0).

``accepted`` is everything a runtime took: answered + cut + lost (sent minus refused, so a gateway error that
never reached a runtime is counted as accepted and lost too: the count can only err towards failing).
``5xx_for_accepted`` counts responses of status >= 500 other than a refusal (goal 0). A stream that was cut
carries its 502/503/504 in the error event, after its 200: those are reported as ``cut``, apart from lost ones.
Where every runtime lives to the end of the test, the client's count is checked against the runtimes' own:
the sum over replicas of ``vllm:request_success_total`` grew by exactly the answers that did not come from the
cache, and ``tokenyard_requests_aborted_total`` did not grow: no runtime finished (or dropped) a request whose
answer did not reach its client. A SIGKILLed runtime's counters die with it, so there only the client's count and
the survivor's counters are used."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tokenyard.gateway.config import hash_api_key

from ..runtime.server_process import ServerProcess
from .client import metric
from .conftest import GatewayProcess, PostgresServer, RedisServer, write_config

pytestmark = pytest.mark.slow

MODEL = "tiny"
LONG = 900  # output tokens: about a second of the tiny model alone; the prompt still fits --max-model-len 1024
MAX_NUM_SEQS, MAX_QUEUE_LEN = 4, 4
CAPACITY = MAX_NUM_SEQS + MAX_QUEUE_LEN  # what one runtime takes at once; more get 429
# One torch thread per process. Two runtimes, a gateway and this client share two cores here (and, in CI, so may
# other jobs): with torch's default of a thread per core, each process's threads spin waiting for each other while
# other processes hold the cores, and a 900-token answer that takes 0.8 s alone took 31 s (measured).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


# --- one request, as a client sees it -----------------------------------------------------------------------------


@dataclass
class Outcome:
    stream: bool
    status: int | None = None  # None: no HTTP answer at all
    retry_after: str | None = None
    cache: str | None = None
    finish_reason: str | None = None
    error: dict | None = None  # the SSE error event, or the error object of a non-200 body
    done: bool = False  # data: [DONE] arrived
    chunks: int = 0
    broken: str | None = None  # the connection broke (httpx's error)
    seconds: float = 0.0
    ended: float = 0.0  # time.monotonic() when the answer was read

    @property
    def kind(self) -> str:
        if self.status in (429, 503) and self.broken is None:
            return "refused"
        if self.status == 200 and self.broken is None:
            if self.error is None and self.finish_reason and (self.done or not self.stream):
                return "answered"
            if self.stream and self.error is not None and self.done:
                return "cut"
        return "lost"

    def __str__(self) -> str:
        shape = "stream" if self.stream else "whole"
        return f"{shape} {self.status} {self.kind} error={self.error} broken={self.broken} chunks={self.chunks}"


def send(
    client: httpx.Client,
    gateway: GatewayProcess,
    content: str,
    *,
    stream: bool,
    max_tokens: int,
    headers: dict[str, str] | None = None,
    on_first_chunk: Callable[[], None] | None = None,
) -> Outcome:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    outcome = Outcome(stream)
    started = time.monotonic()
    try:
        url = f"{gateway.url}/v1/chat/completions"
        with client.stream("POST", url, json=body, headers=headers) as response:
            outcome.status = response.status_code
            outcome.retry_after = response.headers.get("retry-after")
            outcome.cache = response.headers.get("x-tokenyard-cache")
            if response.status_code == 200 and stream:
                _read_events(response, outcome, on_first_chunk)
            else:
                _read_body(response.read(), outcome)
    except httpx.HTTPError as error:
        outcome.broken = f"{type(error).__name__}: {error}"
    outcome.ended = time.monotonic()
    outcome.seconds = outcome.ended - started
    return outcome


def _read_events(response: httpx.Response, outcome: Outcome, on_first_chunk: Callable[[], None] | None) -> None:
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        if outcome.done:  # nothing may follow [DONE]
            outcome.broken = f"data after [DONE]: {line[:80]}"
            continue
        if line == "data: [DONE]":
            outcome.done = True
            continue
        event = json.loads(line[6:])
        if "error" in event:
            outcome.error = event["error"]
            continue
        outcome.chunks += 1
        if outcome.chunks == 1 and on_first_chunk is not None:
            on_first_chunk()
        for choice in event.get("choices", []):
            outcome.finish_reason = choice.get("finish_reason") or outcome.finish_reason


def _read_body(raw: bytes, outcome: Outcome) -> None:
    try:
        body = json.loads(raw)
    except ValueError:
        outcome.error = {"message": f"not JSON: {raw[:120]!r}"}
        return
    if "error" in body:
        outcome.error = body["error"]
    elif outcome.status == 200:
        outcome.finish_reason = body["choices"][0]["finish_reason"]


# --- counting -----------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    scenario: str
    outcomes: list[Outcome] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)  # what else the line reports

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)

    @property
    def accepted(self) -> int:
        return len(self.outcomes) - self.count("refused")

    @property
    def five_xx_for_accepted(self) -> int:
        return sum(1 for o in self.outcomes if o.kind != "refused" and o.status is not None and o.status >= 500)

    @property
    def without_retry_after(self) -> int:
        return sum(1 for o in self.outcomes if o.kind == "refused" and not o.retry_after)

    @property
    def from_cache(self) -> int:
        return sum(1 for o in self.outcomes if o.kind == "answered" and (o.cache or "").startswith("hit"))

    def line(self) -> str:
        refusals = Counter(o.status for o in self.outcomes if o.kind == "refused")
        notes = "".join(f" {k}={v}" for k, v in self.notes.items())
        return (
            f"FAULTS {self.scenario}: sent={len(self.outcomes)} accepted={self.accepted} "
            f"answered={self.count('answered')} refused={self.count('refused')} "
            f"(429={refusals[429]}, 503={refusals[503]}) cut_with_error_event={self.count('cut')} "
            f"lost={self.count('lost')} 5xx_for_accepted={self.five_xx_for_accepted} "
            f"429/503_without_Retry-After={self.without_retry_after}{notes}"
        )

    def report(self, cut_allowed: bool = False) -> None:
        print(f"\n{self.line()}")
        lost = [str(o) for o in self.outcomes if o.kind == "lost"]
        assert not lost, lost
        assert self.five_xx_for_accepted == 0
        assert self.without_retry_after == 0
        if not cut_allowed:
            assert self.count("cut") == 0, [str(o) for o in self.outcomes if o.kind == "cut"]


def runtime_counts(replicas: list[ServerProcess]) -> tuple[float, float]:
    """The replicas' finished and aborted requests, summed (0 before a counter's first sample)."""
    finished = aborted = 0.0
    for replica in replicas:
        for line in httpx.get(f"{replica.url}/metrics", timeout=10).text.splitlines():
            if line.startswith("vllm:request_success_total{"):
                finished += float(line.rsplit(" ", 1)[1])
            elif line.startswith("tokenyard_requests_aborted_total{"):
                aborted += float(line.rsplit(" ", 1)[1])
    return finished, aborted


def running(replica: ServerProcess) -> float:
    text = httpx.get(f"{replica.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:num_requests_running{")
    )


def check_runtime_counts(tally: Tally, before: tuple[float, float], after: tuple[float, float]) -> None:
    finished, aborted = after[0] - before[0], after[1] - before[1]
    tally.notes["runtimes_finished"] = int(finished)
    tally.notes["runtimes_aborted"] = int(aborted)
    assert finished == tally.count("answered") - tally.from_cache, "a runtime finished a request its client lacks"
    assert aborted == 0


# --- the parts ----------------------------------------------------------------------------------------------------


def start_replicas(model_dir: Path, directory: Path, count: int, *flags: str) -> list[ServerProcess]:
    def start(i: int) -> ServerProcess:
        return ServerProcess(
            "--model",
            str(model_dir),
            "--served-model-name",
            MODEL,
            "--kv-cache-memory-bytes",
            str(16 << 20),
            "--max-model-len",
            "1024",
            *flags,
            log=directory / f"replica-{i}.log",
        )

    with pytest.MonkeyPatch.context() as env, ThreadPoolExecutor(count) as pool:
        for name, value in ONE_THREAD.items():
            env.setenv(name, value)  # ServerProcess passes its environment on
        futures = [pool.submit(start, i) for i in range(count)]
    failures = [f.exception() for f in futures if f.exception() is not None]
    if failures:
        for future in futures:
            if future.exception() is None:
                future.result().terminate()
        raise failures[0]
    return [f.result() for f in futures]


@pytest.fixture(scope="module")
def replica(tiny_model_dir, tmp_path_factory):
    """One runtime that takes CAPACITY requests at once: MAX_NUM_SEQS running, MAX_QUEUE_LEN waiting."""
    directory = tmp_path_factory.mktemp("faults-replica")
    flags = ("--max-num-seqs", str(MAX_NUM_SEQS), "--max-queue-len", str(MAX_QUEUE_LEN))
    (process,) = start_replicas(tiny_model_dir, directory, 1, *flags)
    yield process
    process.terminate()


@pytest.fixture()
def client():
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=256, max_keepalive_connections=64)) as c:
        yield c


def prompt(tag: str, i: int) -> str:
    """Distinct for every request (a cache miss), and apart in number, so the semantic cache never matches two."""
    return f"Fault drill {tag}, request number {i}: describe item {i} in detail."


def concurrently(work: list[Callable[[], Outcome]], workers: int | None = None) -> list[Outcome]:
    with ThreadPoolExecutor(workers or len(work)) as pool:
        return list(pool.map(lambda job: job(), work))


class Started:
    """Counts streams that have received their first chunk; a test waits for enough of them before its fault."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1

    def wait(self, at_least: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.count < at_least:
            assert time.monotonic() < deadline, f"only {self.count} streams started"
            time.sleep(0.02)


# --- 1. 10x overload ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("admission", ["matched", "defaults"])
def test_ten_times_overload_is_answered_or_refused_with_retry_after(replica, redis_server, client, tmp_path, admission):
    """10 x CAPACITY requests at once, half of them streamed. ``matched``: the gateway sends the runtime at most
    CAPACITY requests and keeps 2 x CAPACITY more in its line for up to 5 s, shedding the rest; ``defaults``: the
    gateway's own bounds (128) are far above the runtime's, so the runtime refuses the excess itself."""
    settings = (
        {"max_outstanding_per_replica": CAPACITY, "max_queued_requests": 2 * CAPACITY, "max_queue_wait_seconds": 5.0}
        if admission == "matched"
        else {}
    )
    gateway = GatewayProcess(
        [replica.url], redis_server.url, write_config(tmp_path, **settings), tmp_path / "gw.log", env=ONE_THREAD
    )
    tag = uuid.uuid4().hex[:8]
    try:
        before = runtime_counts([replica])
        jobs = [
            lambda i=i: send(client, gateway, prompt(tag, i), stream=i % 2 == 0, max_tokens=256)
            for i in range(10 * CAPACITY)
        ]
        outcomes = concurrently(jobs)
        after = runtime_counts([replica])
    finally:
        gateway.stop()
    tally = Tally(f"10x overload, gateway admission {admission}", outcomes)
    check_runtime_counts(tally, before, after)
    tally.report()
    assert tally.count("answered") >= CAPACITY and tally.count("refused") > 0  # it was an overload
    statuses = Counter(o.status for o in outcomes)
    assert set(statuses) <= {200, 429}, statuses  # the runtime's bound and the gateway's line both answer 429


# --- 2. both stores killed mid-load -------------------------------------------------------------------------------

LOAD_KEY = "key-load"
LOAD_TOKENS = 128  # the seeds' too: max_tokens is part of both caches' keys


def test_both_stores_killed_mid_load_cost_no_request(replica, client, tmp_path):
    """Redis (exact cache, tenant limits) and PostgreSQL (semantic cache) are both SIGKILLed while 80 requests
    run, 16 at a time; half of them repeat earlier prompts, exactly or with their surface changed, so that both
    caches answer until the kill. Afterwards the gateway is healthy, and once both stores are back it uses them
    again without a restart."""
    (tmp_path / "redis").mkdir()
    redis_server, postgres = RedisServer(tmp_path / "redis"), PostgresServer(tmp_path)
    tenant = {"name": "load", "api_key_sha256": [hash_api_key(LOAD_KEY)], "requests_per_minute": 100_000}
    config = write_config(
        tmp_path,
        tenants=[tenant | {"tokens_per_minute": 10**9}],
        max_outstanding_per_replica=CAPACITY,
        max_queued_requests=100,
        max_queue_wait_seconds=30.0,
    )
    auth = {"Authorization": f"Bearer {LOAD_KEY}"}
    tag = uuid.uuid4().hex[:8]
    seeds = [f"Fault drill {tag}: what is the capital of country number {k}?" for k in range(8)]

    def content(i: int) -> str:
        seed = seeds[(i // 4) % len(seeds)]
        if i % 4 == 3:
            return seed  # the same prompt again: an exact hit while Redis lives
        if i % 4 == 1:  # the same question, its surface changed (each time anew): a semantic hit while PostgreSQL lives
            return seed.lower().replace("?", "?" * (2 + i // 4))
        return prompt(tag, i)

    gateway = GatewayProcess(
        [replica.url], redis_server.url, config, tmp_path / "gw.log", "--database-url", postgres.url, env=ONE_THREAD
    )
    try:
        assert both_caches_answer(client, gateway, f"Fault drill {tag}: is the gateway caching?", auth)
        for seed in seeds:  # stored in both caches before the load
            assert send(client, gateway, seed, stream=False, max_tokens=LOAD_TOKENS, headers=auth).kind == "answered"
        done = Started()

        def job(i: int) -> Outcome:
            outcome = send(client, gateway, content(i), stream=i % 3 == 0, max_tokens=LOAD_TOKENS, headers=auth)
            done()
            return outcome

        before = runtime_counts([replica])
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(job, i) for i in range(80)]
            done.wait(30)
            redis_server.kill()
            postgres.kill()
            killed_at, killed_after = time.monotonic(), done.count
            outcomes = [f.result() for f in futures]
        after = runtime_counts([replica])
        hits = Counter(
            ("before_kill" if o.ended < killed_at else "after_kill", o.cache)
            for o in outcomes
            if (o.cache or "").startswith("hit")
        )
        health = (httpx.get(f"{gateway.url}/health").status_code, httpx.get(f"{gateway.url}/ready").status_code)
        down = [
            send(client, gateway, prompt(tag, 100 + i), stream=i % 2 == 0, max_tokens=16, headers=auth)
            for i in range(4)
        ]
        store_errors = {
            s: metric(gateway, "tokenyard_gateway_store_errors_total", store=s) for s in ("redis", "postgres")
        }

        redis_server.start()
        postgres.start()
        recovered = stores_in_use_again(client, gateway, tag, auth)
    finally:
        gateway.stop()
        redis_server.stop()
        postgres.cleanup()
    tally = Tally("both stores SIGKILLed mid-load", outcomes + down)
    tally.notes |= {
        "killed_after": killed_after,
        "cache_hits": {f"{when}:{kind}": n for (when, kind), n in sorted(hits.items())},
        "health_ready_after_kill": health,
        "store_errors": {k: int(v) for k, v in store_errors.items()},
        "stores_used_again": recovered,
    }
    check_runtime_counts(Tally("load", outcomes), before, after)
    tally.notes |= {"runtimes_finished": int(after[0] - before[0]), "runtimes_aborted": int(after[1] - before[1])}
    tally.report()
    assert health == (200, 200)
    assert store_errors["redis"] > 0 and store_errors["postgres"] > 0  # and both were then found dead
    assert tally.count("refused") == 0  # the gateway's line held every request: none needed to be shed
    assert recovered == "yes"


def both_caches_answer(client: httpx.Client, gateway: GatewayProcess, question: str, auth: dict[str, str]) -> bool:
    """A new question, then the same again (an exact hit: Redis), then reworded on the surface (a semantic hit:
    PostgreSQL)."""
    first, again, variant = (
        send(client, gateway, text, stream=False, max_tokens=16, headers=auth)
        for text in (question, question, question.upper())
    )
    assert {first.kind, again.kind, variant.kind} == {"answered"}
    return (first.cache, again.cache, variant.cache) == ("miss", "hit-exact", "hit-semantic")


def stores_in_use_again(client: httpx.Client, gateway: GatewayProcess, tag: str, auth: dict[str, str]) -> str:
    """Whether both caches answer again within 20 s of the stores' return, without a gateway restart."""
    deadline = time.monotonic() + 20
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        question = f"Fault drill {tag}, after the outage, attempt {attempt}: how many moons has planet {attempt}?"
        if both_caches_answer(client, gateway, question, auth):
            return "yes"
        time.sleep(0.5)
    return "no"


# --- 3. a slow upstream -------------------------------------------------------------------------------------------

FIRST_BYTE = 1.0
PER_TOKEN = 0.02


def test_a_slow_upstream_is_waited_for_within_the_token_scaled_limit_and_stays_in(
    replica, redis_server, client, tmp_path
):
    """first_byte_timeout_seconds is 1 s, but a whole 900-token answer may take 1 + 900 x 0.02 = 19 s. CAPACITY
    of them at once, on a runtime that runs four and queues four: the queued ones wait for the others' 900 tokens
    and then make their own, past 1 s even on a fast machine. None is cut off, the replica is never ejected, and
    the next requests go straight through."""
    config = write_config(tmp_path, first_byte_timeout_seconds=FIRST_BYTE, seconds_per_output_token=PER_TOKEN)
    gateway = GatewayProcess([replica.url], redis_server.url, config, tmp_path / "gw.log", env=ONE_THREAD)
    tag = uuid.uuid4().hex[:8]
    try:
        before = runtime_counts([replica])
        slow = concurrently(
            [lambda i=i: send(client, gateway, prompt(tag, i), stream=False, max_tokens=LONG) for i in range(CAPACITY)]
        )
        healthy = metric(gateway, "tokenyard_gateway_upstream_healthy", upstream=replica.url)
        retries = metric(gateway, "tokenyard_gateway_upstream_retries_total")
        time.sleep(2.5)  # a health check round has run since
        still_healthy = metric(gateway, "tokenyard_gateway_upstream_healthy", upstream=replica.url)
        after_slow = time.monotonic()
        following = [send(client, gateway, prompt(tag, 10 + i), stream=i % 2 == 0, max_tokens=16) for i in range(4)]
        following_seconds = time.monotonic() - after_slow
        after = runtime_counts([replica])
    finally:
        gateway.stop()
    tally = Tally("slow upstream", slow + following)
    seconds = sorted(o.seconds for o in slow)
    tally.notes |= {
        "slow_answer_seconds": f"{seconds[0]:.1f}..{seconds[-1]:.1f}",
        "limit_seconds": FIRST_BYTE + LONG * PER_TOKEN,
        "replica_healthy": int(healthy and still_healthy),
        "retries": int(retries),
    }
    check_runtime_counts(tally, before, after)
    tally.report()
    assert seconds[-1] > FIRST_BYTE  # slow indeed: past the first-byte timeout alone
    assert healthy == still_healthy == 1 and retries == 0  # never ejected, never retried elsewhere
    assert following_seconds < 4  # the next requests went straight through


# --- 4. an upstream killed mid-stream -----------------------------------------------------------------------------


def in_flight_on_both(
    pool: ThreadPoolExecutor,
    client: httpx.Client,
    gateway: GatewayProcess,
    replicas: list[ServerProcess],
    tag: str,
    streams: int,
    wholes: int,
) -> list:
    """Long streams, then long whole answers, through the gateway, until every one of them is running on a replica.
    Each is sent to the replica with the fewest outstanding, so each kind is spread evenly over the two."""
    started = Started()
    futures = [
        pool.submit(send, client, gateway, prompt(tag, i), stream=True, max_tokens=LONG, on_first_chunk=started)
        for i in range(streams)
    ]
    started.wait(streams)
    futures += [
        pool.submit(send, client, gateway, prompt(tag, streams + i), stream=False, max_tokens=LONG)
        for i in range(wholes)
    ]
    deadline = time.monotonic() + 30
    while sum(running(r) for r in replicas) < streams + wholes:
        assert time.monotonic() < deadline, "the requests did not all start"
        time.sleep(0.05)
    return futures


def test_an_upstream_killed_mid_stream(tiny_model_dir, redis_server, client, tmp_path):
    """Two replicas; 8 streams and 8 whole answers of 900 tokens running, half on each; SIGKILL one replica. Its
    whole answers had sent the client nothing yet: they are tried again on the survivor (200). Its streams had
    begun: they end with an error event and [DONE] (``cut``: reported apart from ``lost``). Requests sent at the
    moment of the kill, and after it, are all answered by the survivor."""
    replicas = start_replicas(tiny_model_dir, tmp_path, 2)
    gateway = GatewayProcess(
        [r.url for r in replicas], redis_server.url, write_config(tmp_path), tmp_path / "gw.log", env=ONE_THREAD
    )
    victim, survivor = replicas
    tag = uuid.uuid4().hex[:8]
    try:
        with ThreadPoolExecutor(24) as pool:
            futures = in_flight_on_both(pool, client, gateway, replicas, tag, streams=8, wholes=8)
            load = [int(running(r)) for r in replicas]
            victim.process.kill()
            victim.process.wait()
            at_kill = [  # before the health check has noticed
                pool.submit(send, client, gateway, prompt(tag, 50 + i), stream=i % 2 == 0, max_tokens=64)
                for i in range(4)
            ]
            in_flight = [f.result() for f in futures]
            sent_at_kill = [f.result() for f in at_kill]
        before = runtime_counts([survivor])
        later = concurrently(
            [
                lambda i=i: send(client, gateway, prompt(tag, 100 + i), stream=i % 2 == 0, max_tokens=64)
                for i in range(10)
            ],
            workers=5,
        )
        after = runtime_counts([survivor])
        retried = metric(gateway, "tokenyard_gateway_upstream_retries_total", upstream=victim.url)
    finally:
        gateway.stop()
        for r in replicas:
            r.terminate()
    tally = Tally("upstream SIGKILLed mid-stream", in_flight + sent_at_kill + later)
    whole_answered = sum(1 for o in in_flight if not o.stream and o.kind == "answered")
    tally.notes |= {
        "running_at_kill": load,
        "cut_streams": f"{tally.count('cut')}/8",
        "whole_answers_answered": f"{whole_answered}/8",
        "retried_off_the_dead_replica": int(retried),
        "later_on_survivor": f"{int(after[0] - before[0])}/10",
    }
    tally.report(cut_allowed=True)
    assert 1 <= tally.count("cut") <= 4 + 1  # the kill landed mid-stream, on (about) half the streams
    assert whole_answered == 8  # the dead replica's were tried again on the survivor
    assert all(o.kind == "answered" for o in sent_at_kill + later) and after[0] - before[0] == 10


# --- 5. SIGTERM mid-stream ----------------------------------------------------------------------------------------


def test_an_upstream_sigtermed_mid_stream_finishes_its_streams_and_exits_0(
    tiny_model_dir, redis_server, client, tmp_path
):
    """Two replicas; 8 streams and 4 whole answers of 900 tokens running, half on each; SIGTERM one replica, and
    keep sending new requests while it drains. Its own requests finish within the grace period (30 s); the new
    ones it refuses with 503 go to the other replica; it exits 0."""
    replicas = start_replicas(tiny_model_dir, tmp_path, 2, "--shutdown-grace-seconds", "30")
    gateway = GatewayProcess(
        [r.url for r in replicas], redis_server.url, write_config(tmp_path), tmp_path / "gw.log", env=ONE_THREAD
    )
    victim = replicas[0]  # on a tie the router picks the first replica: the first new request goes to the victim
    tag = uuid.uuid4().hex[:8]
    try:
        with ThreadPoolExecutor(24) as pool:
            futures = in_flight_on_both(pool, client, gateway, replicas, tag, streams=8, wholes=4)
            load = [int(running(r)) for r in replicas]
            victim.process.send_signal(signal.SIGTERM)
            terminated_at = time.monotonic()
            during = []
            for wave in range(4):  # spread over the drain, four at a time
                batch = [
                    pool.submit(
                        send, client, gateway, prompt(tag, 100 + 4 * wave + i), stream=i % 2 == 0, max_tokens=64
                    )
                    for i in range(4)
                ]
                during += batch
                for future in batch:
                    future.result()
                time.sleep(0.5)
            outcomes = [f.result() for f in futures + during]
        exit_code = victim.process.wait(timeout=60)
        exited_after = time.monotonic() - terminated_at
        retried = metric(gateway, "tokenyard_gateway_upstream_retries_total", upstream=victim.url)
    finally:
        gateway.stop()
        for r in replicas:
            r.terminate()
    log = victim.log.read_text()
    tally = Tally("upstream SIGTERMed mid-stream", outcomes)
    tally.notes |= {
        "running_at_sigterm": load,
        "refused_by_the_draining_replica_and_retried": int(retried),
        "503s_in_its_log": log.count('POST /v1/chat/completions HTTP/1.1" 503'),
        "exit_code": exit_code,
        "exited_after_seconds": round(exited_after, 1),
    }
    tally.report()
    assert exit_code == 0
    assert "grace period over" not in log  # every request it had finished in time
