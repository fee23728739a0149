"""``tokenyard generate``: run the engine offline on a few prompts and print the completions."""

from __future__ import annotations

import argparse
import json

from tokenyard.runtime.engine_args import add_engine_arguments, engine_config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="+", help="prompts (with --chat: user messages)")
    parser.add_argument("--chat", action="store_true", help="apply the model's chat template")
    parser.add_argument("--system", default=None, help="a system message for --chat")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--json", action="store_true", help="one JSON object per completion")
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from tokenyard.runtime import LLM, SamplingParams

    llm = LLM.from_config(engine_config_from_args(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p)
    if args.chat:
        system = [{"role": "system", "content": args.system}] if args.system else []
        outputs = llm.chat([[*system, {"role": "user", "content": p}] for p in args.prompts], params)
    else:
        outputs = llm.generate(args.prompts, params)
    for out in outputs:
        completion = out.outputs[0]
        if args.json:
            print(
                json.dumps(
                    {
                        "text": completion.text,
                        "finish_reason": completion.finish_reason,
                        "prompt_tokens": len(out.prompt_token_ids),
                        "completion_tokens": len(completion.token_ids),
                    },
                    ensure_ascii=False,
                )
            )
        else:
            print(completion.text)
    return 0
