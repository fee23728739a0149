"""``tokenyard up``: the local stack. Starts ``tokenyard serve`` and puts the gateway in front of it, with an
in-process exact cache: no Redis, no cluster."""

from __future__ import annotations

import argparse
import signal
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
    import uvicorn

    from tokenyard.gateway.app import build_app
    from tokenyard.gateway.config import GatewayConfig

    serve_args = [a for a in args.serve_args if a != "--"]
    runtime = f"http://127.0.0.1:{args.runtime_port}"
    process = subprocess.Popen(serve_command(args.runtime_port, *serve_args))
    try:
        _wait_healthy(runtime, process, args.startup_timeout)
        config = GatewayConfig(upstreams=[runtime], local_cache=True)
        print(f"tokenyard up: gateway on http://{args.host}:{args.port} -> runtime {runtime}", flush=True)
        # uvicorn re-raises the SIGTERM/SIGINT it caught once its graceful shutdown is done: turn that into a
        # normal exit, so the `finally` below stops the runtime too
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _exit_cleanly)
        uvicorn.run(build_app(config), host=args.host, port=args.port, log_level="info", access_log=False)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return 0


def serve_command(port: int, *flags: str) -> list[str]:
    """``tokenyard serve`` on localhost, run by this interpreter."""
    return [sys.executable, "-m", "tokenyard.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *flags]


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


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
