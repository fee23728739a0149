"""An OpenAI-style endpoint that misbehaves on cue, for the eval runner's retry tests.

It is a real HTTP server (the standard library's, on a socket, in a thread of the test process), so the eval
client meets real read timeouts, real closed connections and real status codes. It stands in for a loaded
`tokenyard serve` because no real server can be made to time out or drop chosen items, on chosen attempts, on
cue. Its answers are fixed per question (a model at temperature 0); given ``upstream`` it forwards the requests
it lets through to a real server instead, and a dropped request is forwarded first (the answer is computed and
then lost, as when a loaded server's reply never arrives).
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

# What the server does with one attempt: answer, answer too late, close the connection unanswered, or a status.
BEHAVIOURS = ("ok", "slow", "drop", "400", "429", "500", "502", "503", "504")


class MisbehavingServer:
    """``script[question]``: what each successive attempt at that question gets; attempts past the script are
    answered. ``attempts`` counts the requests that arrived per question."""

    def __init__(
        self,
        answer: Callable[[str], str] | None = None,
        script: dict[str, list[str]] | None = None,
        upstream: str | None = None,
        slow_s: float = 3.0,
    ) -> None:
        assert (answer is None) != (upstream is None), "answer from a function or from an upstream server"
        self.answer = answer
        self.script = script or {}
        assert all(b in BEHAVIOURS for steps in self.script.values() for b in steps), self.script
        self.upstream = upstream
        self.slow_s = slow_s
        self.attempts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self._http.standin = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"

    def __enter__(self) -> MisbehavingServer:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    def behaviour(self, question: str) -> str:
        with self._lock:
            attempt = self.attempts[question]
            self.attempts[question] += 1
        steps = self.script.get(question, [])
        return steps[attempt] if attempt < len(steps) else "ok"

    def respond(self, body: bytes) -> tuple[int, bytes]:
        if self.upstream is not None:
            headers = {"content-type": "application/json"}
            reply = httpx.post(f"{self.upstream}/v1/chat/completions", content=body, headers=headers, timeout=300)
            return reply.status_code, reply.content
        request = json.loads(body)
        text = self.answer(request["messages"][-1]["content"])
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        completion = {"id": "standin", "object": "chat.completion", "model": request["model"], "choices": [choice]}
        return 200, json.dumps(completion).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server: a drop breaks a reused connection

    def do_POST(self) -> None:
        standin: MisbehavingServer = self.server.standin  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers["content-length"]))
        behaviour = standin.behaviour(json.loads(body)["messages"][-1]["content"])
        if behaviour == "drop":
            if standin.upstream is not None:
                standin.respond(body)
            self.close_connection = True  # no status line: the client sees the connection close unanswered
            return
        if behaviour.isdigit():
            error = {"error": {"message": f"stand-in {behaviour}", "type": "server_error", "param": None, "code": None}}
            overload = {"Retry-After": "0"} if behaviour in ("429", "503") else {}  # come back at once
            self._send(int(behaviour), json.dumps(error).encode(), overload)
            return
        if behaviour == "slow":
            time.sleep(standin.slow_s)  # past the client's timeout: it has given up before the answer comes
        self._send(*standin.respond(body))

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client timed out and closed the connection
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass
