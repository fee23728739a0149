"""tokenyard's inference runtime: a paged-attention engine with continuous batching, prefix caching
and chunked prefill, behind vLLM's offline API (``LLM``, ``SamplingParams``) and an OpenAI server.

Names are imported on first use, so importing the package, or a light module such as ``sampling_params``,
never pulls in torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "LLM": "tokenyard.runtime.llm",
    "LLMEngine": "tokenyard.runtime.engine.llm_engine",
    "EngineConfig": "tokenyard.runtime.config",
    "SamplingParams": "tokenyard.runtime.sampling_params",
    "RequestOutput": "tokenyard.runtime.outputs",
    "CompletionOutput": "tokenyard.runtime.outputs",
}

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "LLMEngine", "RequestOutput", "SamplingParams"]

if TYPE_CHECKING:
    from tokenyard.runtime.config import EngineConfig
    from tokenyard.runtime.engine.llm_engine import LLMEngine
    from tokenyard.runtime.llm import LLM
    from tokenyard.runtime.outputs import CompletionOutput, RequestOutput
    from tokenyard.runtime.sampling_params import SamplingParams


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tokenyard.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
