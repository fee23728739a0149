"""A real `tokenyard serve` subprocess on a free port, for the server tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tokenyard.up import serve_command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until ``url``/health answers 200; fails with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"not ready in {timeout}s:\n{log.read_text()[-3000:]}")


class ServerProcess:
    def __init__(self, *flags: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = serve_command(self.port, "--max-model-len", "2048", "--kv-cache-memory-bytes", str(256 << 20), *flags)
        self.process = subprocess.Popen(
            command,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        try:
            wait_healthy(self.url, self.process, self.log)
        except BaseException:  # the caller never gets this object to stop: do not leave the server running
            self.process.kill()
            self.process.wait()
            raise

    def metric(self, name: str, labels: str = "") -> float:
        """The sum of a metric's samples (all label values, or those whose labels contain ``labels``)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and line[len(name)] in "{ " and labels in line
        ]
        assert values, f"{name} is not exported"
        return sum(values)

    def terminate(self, timeout: float = 60) -> bool:
        """SIGTERM, then wait. True if it drained and exited 0."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout) == 0
