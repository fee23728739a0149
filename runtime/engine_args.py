"""Command-line flags for the engine, named as vLLM names them, shared by every command that runs it."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from tokenyard.runtime.config import DEFAULT_MODEL, DTYPES, EngineConfig


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EngineConfig.__dataclass_fields__
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a .gguf file, a Hugging Face directory, or a hub id in the local HF cache",
    )
    group.add_argument("--dtype", choices=DTYPES, default="auto")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    group.add_argument("--max-model-len", type=int, default=None)
    group.add_argument("--max-num-seqs", type=int, default=defaults["max_num_seqs"].default)
    group.add_argument("--max-num-batched-tokens", type=int, default=defaults["max_num_batched_tokens"].default)
    group.add_argument("--block-size", type=int, default=defaults["block_size"].default)
    group.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    group.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=True)
    group.add_argument("--gpu-memory-utilization", type=float, default=defaults["gpu_memory_utilization"].default)
    group.add_argument(
        "--kv-cache-memory-bytes",
        type=int,
        default=None,
        help="KV cache budget in bytes (default: from --gpu-memory-utilization on GPU, 4 GiB on CPU)",
    )
    group.add_argument(
        "--kv-cache-dtype", default="auto", help="auto (the model dtype), int8 (per-token scales), fp8 (GPUs with fp8)"
    )
    group.add_argument(
        "--quantization",
        default=None,
        help="int8, int4 (weight-only, from float weights), gptq, awq (from the checkpoint's quantization_config), "
        "gguf (a .gguf file's tensors kept packed; without it they are dequantized at load)",
    )
    group.add_argument(
        "--quantization-group-size",
        type=int,
        default=defaults["quantization_group_size"].default,
        help="int4: input columns per scale (32, 64, 128)",
    )
    group.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=1,
        help="split the model across N processes started by this command (gloo on CPU; NCCL on GPU, rank r on cuda:r)",
    )
    group.add_argument("--speculative-config", type=json.loads, default=None, help="JSON, as vLLM takes it")
    group.add_argument(
        "--enforce-eager",
        action="store_true",
        help="every step through the model's modules: no flat decode path on CPU (GPU steps are eager "
        "either way: CUDA graphs are not captured yet)",
    )
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="CPU threads for torch's kernels, per tensor-parallel rank (default: the cores this process may use, "
        "its cgroup CPU quota (a Kubernetes CPU limit) rounded up and its affinity mask, shared among the ranks; "
        "not the host's core count). Threads waiting for each other spin only briefly, then sleep "
        "(GOMP_SPINCOUNT=1000, unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set), so that a process beside it on "
        "the same cores takes about its share, not most of this one's speed; on a crowded node "
        "OMP_WAIT_POLICY=PASSIVE shares better still, for less speed alone",
    )


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """The engine settings the flags ask for; a flag (or TOKENYARD_CPU_ISA) that cannot be honoured ends the
    command with its reason, before anything loads."""
    try:
        config = EngineConfig(**{field.name: getattr(args, field.name) for field in fields(EngineConfig) if field.init})
        _check_device(config)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    return config


def _check_device(config: EngineConfig) -> None:
    """What only the device can refuse: a float16 model on a CPU, a TOKENYARD_CPU_ISA this CPU cannot meet."""
    from tokenyard.runtime.cpu import cpu_isa
    from tokenyard.runtime.engine.model_runner import resolve_device
    from tokenyard.runtime.loaders.weights import resolve_dtype

    device = resolve_device(config.device)
    if device.type == "cpu":
        cpu_isa()
        if config.dtype == "float16":
            resolve_dtype(config.dtype, None, device)
