"""``tokenyard bench``: load generators. ``serve`` drives an OpenAI-compatible server."""

from __future__ import annotations

import argparse

from tokenyard.benchmarks import serve_client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    serve = kinds.add_parser("serve", help="benchmark an OpenAI-compatible server, like vllm bench serve")
    serve_client.add_arguments(serve)


def run(args: argparse.Namespace) -> int:
    return serve_client.run(args)
