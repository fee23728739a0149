"""``tokenyard serve``: the OpenAI-compatible server, with vLLM's flags."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from contextlib import asynccontextmanager
from pathlib import Path

from tokenyard.runtime.engine_args import add_engine_arguments, engine_config_from_args
from tokenyard.wire.asgi import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger(__name__)
API_KEY_ENV = "TOKENYARD_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="0.0.0.0")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--served-model-name", default=None, help="the name clients send as `model` (default: --model)")
    server.add_argument("--chat-template", type=Path, default=None, help="a Jinja file replacing the model's template")
    server.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require `Authorization: Bearer <key>` on /v1 (default: ${API_KEY_ENV}, so a Secret can set it)",
    )
    server.add_argument(
        "--max-queue-len",
        type=int,
        default=256,
        help="requests that may wait beyond --max-num-seqs running ones; more get 429",
    )
    server.add_argument(
        "--shutdown-grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight requests may take to finish (new ones get 503 meanwhile)",
    )
    server.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies are refused with 413",
    )
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tokenyard.runtime.server.app import ServerSettings, build_app, start_input_threads, watch_event_loop
    from tokenyard.runtime.server.async_engine import AsyncEngine
    from tokenyard.wire.asgi import GracefulServer, run_server

    config = engine_config_from_args(args)  # refuses unsupported flags before anything loads
    # The event loop shares the GIL with the engine's and the tokenisers' threads: with Python's default 5 ms
    # switch interval, a probe waits ~5 ms at each of its hand-offs; 1 ms keeps /health well under 50 ms.
    sys.setswitchinterval(0.001)
    if args.max_queue_len < 0:
        raise SystemExit(f"--max-queue-len={args.max_queue_len} is invalid: must be >= 0")
    chat_template = args.chat_template.read_text() if args.chat_template else None
    engine = AsyncEngine(config, args.max_queue_len, args.served_model_name or args.model)
    settings = ServerSettings(engine.served_model_name, args.api_key, chat_template)
    if args.api_key is None:
        log.warning("no --api-key: the API is open to anyone who can reach port %d", args.port)

    @asynccontextmanager
    async def lifespan(_):
        await asyncio.to_thread(engine.load)
        # The model, tokenizer and libraries are millions of long-lived objects: a full collection walking them
        # held the GIL (and so the event loop) for ~100 ms. Frozen, collections walk only what requests made.
        gc.collect()
        gc.freeze()
        log.info("serving %s on http://%s:%d", settings.served_model_name, args.host, args.port)
        await start_input_threads()
        watcher = asyncio.create_task(watch_event_loop(engine))
        yield
        watcher.cancel()
        engine.stop()

    def on_start(server: GracefulServer) -> None:
        engine.on_dead = server.fail  # a dead engine exits the process: Kubernetes restarts it at once

    def on_draining() -> None:
        engine.draining = True

    app = build_app(engine, settings)
    app.router.lifespan_context = lifespan
    return run_server(
        app,
        args.host,
        args.port,
        args.shutdown_grace_seconds,
        args.max_request_body_bytes,
        on_start=on_start,
        on_draining=on_draining,
    )
