"""The synthetic corpus of the corpus-size benchmarks (``scale.py``, ``bank_load.py``): a hash
codec that costs next to nothing and a jsonl document writer. How they run their stages is in
``bench/_stages.py``.

Not a benchmark itself (it has no ``main``); the benchmarks import it as ``bench._synthetic``
after putting the repository root on ``sys.path``. Importing it imports torch and faiss (the
retrieval bank), as the benchmarks did before it was shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from encoders.base import SentenceCodec
from encoders.hashing import hash_vector
from encoders.registry import register_codec
from encoders.retrieval import RetrievalBank

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi rho".split()


class HashCodec(SentenceCodec):
    """A sentence's vector is :func:`encoders.hashing.hash_vector` of its text (no encoding
    cost); decoding retrieves from a bank.

    Args:
        dim: Vector width.
        codec_id: The id checkpoints record (registered by :func:`register_hash_codec`).
    """

    langs = ("eng_Latn",)

    def __init__(self, dim: int, codec_id: str) -> None:
        super().__init__(cache=None)
        self.dim = dim
        self.codec_id = codec_id
        self.bank = RetrievalBank(dim)

    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        out = torch.empty(len(sentences), self.dim)
        for i, s in enumerate(sentences):
            out[i] = hash_vector(s, self.dim)
        return out

    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        return [f[0] for f in self.bank.search(vectors, lang)[1]]


def register_hash_codec(dim: int, codec_id: str) -> None:
    """Register ``codec_id`` so a checkpoint that records it loads with a fresh
    :class:`HashCodec` of width ``dim``."""
    register_codec(codec_id, lambda _id, **kw: HashCodec(dim, codec_id))


def write_docs(path: Path, n: int, summaries: bool = False) -> None:
    """``n`` jsonl documents of 4-8 sentences drawn from :data:`WORDS` (each sentence unique by
    its ``i-j`` suffix); with ``summaries``, a one-sentence ``summary`` field too."""
    with open(path, "w") as f:
        for i in range(n):
            sents = [
                " ".join(WORDS[(i * 7 + j * 3 + k) % len(WORDS)] for k in range(6)).capitalize()
                + f" {i}-{j}."
                for j in range(4 + i % 5)
            ]
            row = {"id": str(i), "text": " ".join(sents)}
            if summaries:
                row["summary"] = f"Summary of document {i}."
            f.write(json.dumps(row) + "\n")
