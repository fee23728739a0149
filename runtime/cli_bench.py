"""``tokenyard bench``: load generators. ``serve`` drives an OpenAI-compatible server."""

from __future__ import annotations

import argparse

from tokenyard.runtime.bench import serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    serve.add_arguments(kinds.add_parser("serve", help="benchmark an OpenAI-compatible server, like vllm bench serve"))


def run(args: argparse.Namespace) -> int:
    return serve.run(args)
