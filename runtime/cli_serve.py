"""``tokenyard serve``: the OpenAI-compatible server, with vLLM's flags."""

from __future__ import annotations

import argparse
import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from tokenyard.runtime.engine_args import add_engine_arguments, engine_config_from_args

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="0.0.0.0")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--served-model-name", default=None, help="the name clients send as `model` (default: --model)")
    server.add_argument("--chat-template", type=Path, default=None, help="a Jinja file replacing the model's template")
    server.add_argument("--api-key", default=None, help="require `Authorization: Bearer <key>` on /v1")
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
        help="on SIGTERM, how long in-flight requests may take to finish",
    )
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from tokenyard.runtime.server.app import ServerSettings, build_app
    from tokenyard.runtime.server.async_engine import AsyncEngine

    config = engine_config_from_args(args)  # refuses unsupported flags before anything loads
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
        log.info("serving %s on http://%s:%d", settings.served_model_name, args.host, args.port)
        yield
        engine.stop()

    app = build_app(engine, settings)
    app.router.lifespan_context = lifespan
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=args.shutdown_grace_seconds
    )
    return 0
