"""``tokenyard gateway``: the OpenAI-compatible front door."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tokenyard.wire.asgi import DEFAULT_MAX_BODY_BYTES

if TYPE_CHECKING:
    from tokenyard.gateway.config import GatewayConfig

UPSTREAM_API_KEY_ENV = "TOKENYARD_UPSTREAM_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--upstream", action="append", default=[], help="a runtime replica's base URL (repeatable)")
    parser.add_argument(
        "--discovery",
        choices=["static", "kubernetes"],
        default=None,
        help="static: the --upstream replicas; kubernetes: the EndpointSlices labelled tokenyard.dev/deployment, "
        "watched through the in-cluster config or the current kubeconfig (default: static)",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="with --discovery kubernetes: a namespace to watch (repeatable; default: all namespaces)",
    )
    parser.add_argument("--redis-url", default=None, help="exact cache and shared tenant limits")
    parser.add_argument("--database-url", default=None, help="PostgreSQL with pgvector: the semantic cache")
    parser.add_argument(
        "--embeddings-url",
        default=None,
        help="an OpenAI-compatible /v1/embeddings base URL for the semantic cache (default: all-MiniLM-L6-v2 here)",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML: tenants, limits, cache policy")
    parser.add_argument(
        "--upstream-api-key",
        default=None,
        help="sent to the replicas as `Authorization: Bearer <key>` (their --api-key); default: "
        f"${UPSTREAM_API_KEY_ENV} (prefer it: a flag shows in the process list)",
    )
    parser.add_argument(
        "--shutdown-grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight requests may take to finish (new ones get 503 meanwhile)",
    )
    parser.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies are refused with 413",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log every request (off by default: the metrics count them, and a log line costs more "
        "than the gateway's own work on a cache hit)",
    )


def run(args: argparse.Namespace) -> int:
    from tokenyard.gateway.app import build_app
    from tokenyard.wire.asgi import run_server

    config = _config(args)
    if args.max_request_body_bytes < 1 or args.shutdown_grace_seconds < 0:
        raise SystemExit("error: --max-request-body-bytes must be >= 1 and --shutdown-grace-seconds >= 0")
    app = build_app(config)
    return run_server(
        app,
        args.host,
        args.port,
        args.shutdown_grace_seconds,
        args.max_request_body_bytes,
        access_log=args.access_log,
        on_draining=app.state.gateway.drain,
    )


def _config(args: argparse.Namespace) -> GatewayConfig:
    from pydantic import ValidationError

    from tokenyard.gateway.config import load_config

    try:
        config = load_config(
            args.config,
            upstreams=args.upstream,
            redis_url=args.redis_url,
            database_url=args.database_url,
            discovery=args.discovery,
            namespaces=args.namespace,
            upstream_api_key=args.upstream_api_key or os.environ.get(UPSTREAM_API_KEY_ENV) or None,
        )
        if args.embeddings_url:
            config.embeddings.url = args.embeddings_url
    except (ValidationError, OSError) as error:
        raise SystemExit(f"error: invalid gateway configuration: {error}") from None
    if config.discovery == "static" and not config.upstreams:
        raise SystemExit(
            "error: no upstream: pass --upstream URL (repeatable), list `upstreams` in --config, "
            "or use --discovery kubernetes"
        )
    if config.discovery == "kubernetes" and config.upstreams:
        raise SystemExit("error: --upstream and --discovery kubernetes exclude each other: pick one")
    return config
