"""One dataclass of engine settings, named as vLLM names them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenyard.runtime.quantization.config import KV_CACHE_DTYPES, QUANTIZATION_GROUP_SIZES, QUANTIZATION_METHODS
from tokenyard.runtime.spec_decode.config import SpeculativeConfig
from tokenyard.runtime.validation import require

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DTYPES = ("auto", "float32", "bfloat16", "float16")

# CPU default KV budget: vLLM's CPU backend also defaults to 4 GiB (VLLM_CPU_KVCACHE_SPACE).
DEFAULT_CPU_KV_CACHE_BYTES = 4 << 30


@dataclass
class EngineConfig:
    model: str = DEFAULT_MODEL
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None  # None: the model's own context length
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None  # None: GPU from gpu_memory_utilization, CPU a default
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    quantization_group_size: int = 128  # int4: input columns sharing one scale and zero
    tensor_parallel_size: int = 1
    speculative_config: dict[str, Any] | None = None  # vLLM's JSON shape, as given
    # every step through the model's modules: no flat CPU decode path (GPUs run every step eagerly for now: CUDA
    # graphs, which this flag will also turn off, are not captured yet)
    enforce_eager: bool = False
    seed: int = 0
    num_threads: int | None = None  # CPU threads per rank; None: the cores this process may use (runtime/threads.py)
    speculative: SpeculativeConfig | None = field(init=False)  # speculative_config, checked and typed

    def __post_init__(self) -> None:
        require(self.dtype in DTYPES, "dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        require(self.max_num_seqs >= 1, "max_num_seqs", self.max_num_seqs, ">= 1")
        require(self.max_num_batched_tokens >= 1, "max_num_batched_tokens", self.max_num_batched_tokens, ">= 1")
        require(self.block_size >= 1, "block_size", self.block_size, ">= 1")
        require(
            0 < self.gpu_memory_utilization <= 1,
            "gpu_memory_utilization",
            self.gpu_memory_utilization,
            "in (0, 1]",
        )
        if self.max_model_len is not None:
            require(self.max_model_len >= 2, "max_model_len", self.max_model_len, ">= 2")
        if self.kv_cache_memory_bytes is not None:
            require(self.kv_cache_memory_bytes > 0, "kv_cache_memory_bytes", self.kv_cache_memory_bytes, "> 0")
        methods = ", ".join(QUANTIZATION_METHODS)
        require(self.quantization in (None, *QUANTIZATION_METHODS), "quantization", self.quantization, methods)
        require(
            self.quantization_group_size in QUANTIZATION_GROUP_SIZES,
            "quantization_group_size",
            self.quantization_group_size,
            f"one of {', '.join(map(str, QUANTIZATION_GROUP_SIZES))}",
        )
        kv_dtypes = ", ".join(KV_CACHE_DTYPES)
        require(self.kv_cache_dtype in KV_CACHE_DTYPES, "kv_cache_dtype", self.kv_cache_dtype, kv_dtypes)
        require(self.tensor_parallel_size >= 1, "tensor_parallel_size", self.tensor_parallel_size, ">= 1")
        if self.tensor_parallel_size > 1:  # rank r runs on cuda:r: the device names no GPU of its own
            require(self.device in ("auto", "cpu", "cuda"), "device", self.device, "auto, cpu or cuda under TP")
        self.speculative = SpeculativeConfig.from_dict(self.speculative_config) if self.speculative_config else None
