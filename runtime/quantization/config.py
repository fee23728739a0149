"""Which quantization a model is served with: the ``--quantization`` flag, the checkpoint's own
``quantization_config`` (config.json, detected as vLLM does) or the GGUF file's tensor types.

GGUF files: ``--quantization gguf`` keeps their quantized tensors packed; without it they are dequantized
once at load to the serving dtype. Dequantized is the default because, measured on this CPU, the packed
kernels win only at batch 1 (1.47x decode) and lose to oneDNN's bfloat16 matmuls with 32 sequences (0.78x)
and in prefill (a 450-token prompt takes 1.34x as long): serving is batched and prefill-heavy
(docs/benchmarks.md, quantization section)."""

from __future__ import annotations

from dataclasses import dataclass

from tokenyard.runtime.quantization.formats import AWQ_BITS, GPTQ_BITS
from tokenyard.runtime.validation import require

QUANTIZATION_METHODS = ("int8", "int4", "gptq", "awq", "gguf")  # weight-only; vLLM's names where it has them
FROM_FLOAT = ("int8", "int4")  # quantized after loading float weights
QUANTIZATION_GROUP_SIZES = (32, 64, 128)
KV_CACHE_DTYPES = ("auto", "int8", "fp8", "fp8_e4m3")


@dataclass(frozen=True)
class CheckpointQuantization:
    """A Hugging Face checkpoint's ``quantization_config``."""

    method: str  # gptq | awq
    bits: int
    group_size: int  # -1: one group per output channel
    desc_act: bool = False


def read_checkpoint_quantization(raw_config: dict) -> CheckpointQuantization | None:
    spec = raw_config.get("quantization_config")
    if not spec:
        return None
    method = spec.get("quant_method")
    require(method in ("gptq", "awq"), "quantization_config.quant_method", method, "gptq or awq")
    bits = spec.get("bits", spec.get("w_bit"))
    group_size = spec.get("group_size", spec.get("q_group_size", 128))
    if method == "gptq":
        require(bits in GPTQ_BITS, "quantization_config.bits", bits, f"one of {GPTQ_BITS} for GPTQ")
        fmt = spec.get("checkpoint_format", "gptq")
        require(fmt == "gptq", "quantization_config.checkpoint_format", fmt, "gptq (AutoGPTQ's v1 layout)")
    else:
        require(bits == AWQ_BITS, "quantization_config.bits", bits, f"{AWQ_BITS} for AWQ")
        version = str(spec.get("version", "gemm")).lower()
        require(version == "gemm", "quantization_config.version", version, "gemm (AutoAWQ's GEMM layout)")
    require(
        group_size == -1 or (group_size > 0 and group_size % 32 == 0),
        "quantization_config.group_size",
        group_size,
        "-1 or a multiple of 32",
    )
    return CheckpointQuantization(method, bits, group_size, bool(spec.get("desc_act", False)))


def resolve_quantization(
    flag: str | None,
    source_format: str,
    checkpoint: CheckpointQuantization | None,
    dtype: str,
    tensor_parallel_size: int = 1,
) -> str | None:
    """The method actually served, or None for float weights; a flag the checkpoint contradicts is an error.
    Pre-quantized weights are not sharded yet: under tensor parallelism only int8/int4 (from float) serve."""
    if checkpoint is not None:
        require(
            flag in (None, checkpoint.method),
            "quantization",
            flag,
            f"left out or {checkpoint.method!r}: the checkpoint's quantization_config says {checkpoint.method}",
        )
        require(tensor_parallel_size == 1, "tensor_parallel_size", tensor_parallel_size, f"1 for {checkpoint.method}")
        return checkpoint.method
    if source_format == "gguf":
        require(flag in (None, "gguf", *FROM_FLOAT), "quantization", flag, "gguf, int8 or int4 for a .gguf model")
        if tensor_parallel_size > 1:
            require(flag != "gguf", "quantization", flag, "int8, int4 or left out under tensor parallelism")
            return flag
        return flag
    require(
        flag in (None, *FROM_FLOAT),
        "quantization",
        flag,
        "int8 or int4 for a checkpoint without a quantization_config (gptq/awq need one; gguf needs a .gguf file)",
    )
    return flag
