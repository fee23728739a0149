"""tokenyard's inference runtime: a paged-attention engine with continuous batching, prefix caching
and chunked prefill, behind vLLM's offline API (``LLM``, ``SamplingParams``)."""

from tokenyard.runtime.config import EngineConfig
from tokenyard.runtime.engine.llm_engine import LLMEngine
from tokenyard.runtime.llm import LLM
from tokenyard.runtime.outputs import CompletionOutput, RequestOutput
from tokenyard.runtime.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "LLMEngine", "RequestOutput", "SamplingParams"]
