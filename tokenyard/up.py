"""``tokenyard up``: the local stack. Starts ``tokenyard serve`` and puts the gateway in front of it, with an
in-process exact cache: no Redis, no cluster."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="the gateway's port (what clients call)")
    parser.add_argument("--runtime-port", type=int, default=8000)
    parser.add_argument("--startup-timeout", type=float, default=600)
    parser.add_argument(
        "serve_args",
        nargs=argparse.REMAINDER,
        help="flags for `tokenyard serve` (e.g. --model PATH --max-model-len 4096), after `--`",
    )


def run(args: argparse.Namespace) -> int:
    from tokenyard.gateway.app import build_app
    from tokenyard.gateway.config import GatewayConfig
    from tokenyard.wire.asgi import run_server

    serve_args = [a for a in args.serve_args if a != "--"]
    runtime = f"http://127.0.0.1:{args.runtime_port}"
    process = subprocess.Popen(serve_command(args.runtime_port, *serve_args))
    try:
        _wait_healthy(runtime, process, args.startup_timeout)
        config = GatewayConfig(upstreams=[runtime], local_cache=True)
        print(f"tokenyard up: gateway on http://{args.host}:{args.port} -> runtime {runtime}", flush=True)
        app = build_app(config)
        # The gateway drains first (its requests in flight finish on the runtime), then the runtime drains.
        code = run_server(app, args.host, args.port, 30.0, access_log=False, on_draining=app.state.gateway.drain)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return code


def serve_command(port: int, *flags: str) -> list[str]:
    """``tokenyard serve`` on localhost, run by this interpreter."""
    return [sys.executable, "-m", "tokenyard.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *flags]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"tokenyard serve exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"tokenyard serve was not ready after {timeout:.0f}s")
