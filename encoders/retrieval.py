"""Decoding by nearest-neighbour retrieval over a sentence bank (faiss).

Encoders that ship without a decoder (the offline default codec) render a vector as the bank
sentence whose embedding is closest in cosine similarity. The bank is usually every sentence of
the prepared training shards, so generated concepts read as real sentences of the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import torch


class RetrievalBank:
    """Sentences and their unit-normalised vectors in a faiss inner-product index, per language."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index: dict[str, faiss.IndexFlatIP] = {}
        self._sentences: dict[str, list[str]] = {}
        self._known: dict[str, set[str]] = {}  # per language, for linear-time de-duplication

    def __len__(self) -> int:
        return sum(len(s) for s in self._sentences.values())

    def add(self, sentences: Sequence[str], vectors: torch.Tensor, lang: str) -> None:
        """Add ``sentences`` with their ``(N, dim)`` vectors; repeated sentences are kept once."""
        if len(sentences) != vectors.shape[0]:
            raise ValueError(f"{len(sentences)} sentences but {vectors.shape[0]} vectors")
        known = self._known.setdefault(lang, set())
        keep = [i for i, s in enumerate(sentences) if s not in known and not known.add(s)]
        if not keep:
            return
        x = _unit(vectors[keep])
        index = self._index.setdefault(lang, faiss.IndexFlatIP(self.dim))
        index.add(x)
        self._sentences.setdefault(lang, []).extend(sentences[i] for i in keep)

    def search(
        self, vectors: torch.Tensor, lang: str, k: int = 1
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Cosine scores ``(N, k)`` and the ``k`` nearest bank sentences for each vector."""
        if lang not in self._index:
            have = ", ".join(sorted(self._index)) or "none"
            raise ValueError(
                f"the retrieval bank has no sentences in {lang!r} (it has: {have}); add some "
                "with add_to_bank(), or prepare shards in that language"
            )
        scores, ids = self._index[lang].search(_unit(vectors), k)
        bank = self._sentences[lang]
        return scores, [[bank[j] for j in row if j >= 0] for row in ids]


def _unit(vectors: torch.Tensor) -> np.ndarray:
    x = vectors.detach().to("cpu", torch.float32).numpy().copy()
    faiss.normalize_L2(x)
    return x
