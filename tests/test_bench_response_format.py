"""`tokenyard bench serve --response-format PATH`: the file read as a bare JSON Schema or a whole response_format,
sent with every request on both endpoints, and recorded in the summary and the result file. A small fake
OpenAI-compatible server records what the client sends; no model runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from aiohttp import web

from tokenyard.benchmarks import serve_client

SCHEMA = json.loads((resources.files("tokenyard.evals") / "testsets" / "classifier" / "schema.json").read_text())


class FakeServer:
    """Answers every completion with one streamed chunk and a usage chunk; keeps each request's body and path."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append((request.path, body))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        text = '{"emotion": "happy", "learn_score": true}'
        chunk = {"choices": [{"delta": {"content": text}} if "messages" in body else {"text": text}]}
        usage = {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 15}}
        for event in (chunk, usage):
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> FakeServer:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as fake:
        yield fake


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_client.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_a_bare_schema_is_wrapped_strictly_and_named_after_its_file(tmp_path: Path) -> None:
    path = tmp_path / "classifier schema.v2.json"  # its "type" is "object": a JSON type, not a response_format's
    path.write_text(json.dumps(SCHEMA))
    assert serve_client.load_response_format(path) == {
        "type": "json_schema",
        "json_schema": {"name": "classifier_schema_v2", "schema": SCHEMA, "strict": True},
    }


@pytest.mark.parametrize(
    "form",
    [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "mine", "schema": SCHEMA, "strict": False}},
    ],
)
def test_a_whole_response_format_is_sent_as_it_is(tmp_path: Path, form: dict) -> None:
    path = tmp_path / "format.json"
    path.write_text(json.dumps(form))
    assert serve_client.load_response_format(path) == form


@pytest.mark.parametrize("content", ["[1, 2]", "{not json"])
def test_a_file_that_is_no_json_object_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SystemExit, match="--response-format"):
        serve_client.load_response_format(path)


@pytest.mark.parametrize(("endpoint", "path"), [("chat", "/v1/chat/completions"), ("completions", "/v1/completions")])
def test_every_request_carries_it_and_the_result_file_records_it(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], endpoint: str, path: str
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    result = tmp_path / "result.json"
    args = parse(
        *("--base-url", server.url, "--endpoint", endpoint, "--dataset", "prefix", "--num-prompts", "3"),
        *("--response-format", str(schema), "--result-file", str(result), "--quiet"),
    )
    assert serve_client.run(args) == 0
    sent = {"type": "json_schema", "json_schema": {"name": "schema", "schema": SCHEMA, "strict": True}}
    assert [p for p, _ in server.bodies] == [path] * 3
    assert all(body["response_format"] == sent for _, body in server.bodies)
    written = json.loads(result.read_text())
    assert written["summary"]["response_format"] == sent
    assert written["settings"]["response_format"] == str(schema)
    assert "json_schema schema" in capsys.readouterr().out


def test_without_it_no_response_format_is_sent(server: FakeServer, tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    args = parse("--base-url", server.url, "--num-prompts", "2", "--result-file", str(result), "--quiet")
    assert serve_client.run(args) == 0
    assert all("response_format" not in body for _, body in server.bodies)
    assert json.loads(result.read_text())["summary"]["response_format"] is None


def test_callers_namespaces_without_the_option_still_build_requests() -> None:
    """benchmarks/serve.py builds its own Namespace, without response_format."""
    args = argparse.Namespace(endpoint="chat", dataset="prefix", num_prompts=2, seed=0, output_len=50)
    assert all(r.response_format is None for r in serve_client.build_requests(args))
