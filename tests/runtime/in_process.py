"""The runtime's whole HTTP stack (guard, FastAPI app, async engine on its own thread) in this process, driven
through Starlette's TestClient: thousands of requests a minute, with the real engine behind them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from starlette.testclient import TestClient

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.server.app import ServerSettings, build_app
from tokenyard.runtime.server.async_engine import AsyncEngine
from tokenyard.wire.asgi import Guard

MODEL = "tiny"


@contextmanager
def serving(model_dir: Path, max_queue_len: int = 8, **engine_args: object) -> Iterator[tuple[TestClient, AsyncEngine]]:
    settings = dict(dtype="float32", max_model_len=128, max_num_seqs=8, kv_cache_memory_bytes=4 << 20) | engine_args
    engine = AsyncEngine(EngineConfig(model=str(model_dir), **settings), max_queue_len, MODEL)
    engine.load()
    try:
        with TestClient(Guard(build_app(engine, ServerSettings(MODEL))), raise_server_exceptions=False) as client:
            yield client, engine
    finally:
        engine.stop()
