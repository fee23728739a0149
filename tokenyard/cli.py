"""The ``tokenyard`` command. Each subcommand imports its part only when it runs, so
``tokenyard --help`` never imports torch and an operator image does not need it."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from tokenyard import __version__

# name -> (module that defines `add_arguments(parser)` and `run(args) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("tokenyard.runtime.cli_serve", "serve a model over the OpenAI API (vLLM's flags)"),
    "up": ("tokenyard.up", "the local stack: tokenyard serve with the gateway in front (in-process cache)"),
    "gateway": ("tokenyard.gateway.cli", "the OpenAI-compatible gateway: tenants, routing, exact cache"),
    "bench": ("tokenyard.benchmarks.cli", "benchmark a server (bench serve), like vllm bench"),
    "generate": ("tokenyard.runtime.cli_generate", "run the engine offline on prompts and print completions"),
    "quantize": (
        "tokenyard.runtime.quantize.cli",
        "quantize a model offline (RTN, GPTQ, AWQ) into a Hugging Face GPTQ/AWQ checkpoint",
    ),
    "operator": ("tokenyard.operator.cli", "run the LLMDeployment operator (kopf) against the current cluster"),
    "crd": ("tokenyard.operator.crd", "write the LLMDeployment CRD generated from its Python models"),
    "eval": ("tokenyard.evals.cli", "run a testset against an endpoint, write baselines, gate on quality (RAGAS)"),
}

# The subcommands that run the engine: their OpenMP threads sleep at barriers instead of spinning (see
# tokenyard.runtime.threads); a tensor-parallel worker inherits the setting with the environment.
ENGINE_SUBCOMMANDS = ("serve", "generate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenyard", description="Kubernetes-native LLM serving.")
    parser.add_argument("--version", action="version", version=f"tokenyard {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints help / version / the unknown-command error
        parser.print_help()
        return 2
    logging.basicConfig(
        level=os.environ.get("TOKENYARD_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request drowns the output
    name, rest = argv[0], argv[1:]
    if name in ENGINE_SUBCOMMANDS:  # before the subcommand's module imports torch: libgomp reads it only then
        from tokenyard.runtime.threads import set_wait_policy

        set_wait_policy()
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"tokenyard {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(sub)
    return int(module.run(sub.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
