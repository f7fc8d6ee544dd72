"""A toy codec for tests, the ``ci`` report preset and the corpus-size benchmarks: a sentence's
vector is a fixed N(0, I) draw seeded by a hash of its text, so encoding costs next to nothing,
needs no weights and gives the same vectors on every machine and run.

Nothing here stands for a real codec's quality; it exists so that the data, training, generation
and evaluation paths run on a corpus whose structure is known.
"""

from __future__ import annotations

import hashlib

import torch

from encoders.base import SentenceCodec


def text_hash(text: str) -> int:
    """The 64-bit blake2b hash of ``text``, as an unsigned int."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def text_seed(text: str) -> int:
    """A 63-bit generator seed: the high 63 bits of :func:`text_hash`."""
    return text_hash(text) >> 1


def hash_vector(text: str, dim: int, seed: int | None = None) -> torch.Tensor:
    """(dim,) float32: the N(0, I) draw of a generator seeded with ``seed`` (default:
    :func:`text_seed` of ``text``)."""
    seed = text_seed(text) if seed is None else seed
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


class HashCodec(SentenceCodec):
    """Sentence -> :func:`hash_vector`; decodes a vector to the nearest sentence this instance
    has encoded (so decoding depends on what it encoded before).

    Subclasses set the class attributes ``codec_id``, ``dim`` and ``langs`` (a checkpoint records
    the id), and may override :meth:`seed`.
    """

    codec_id = "hash-codec-16"
    dim = 16
    langs: tuple[str, ...] = ("eng_Latn",)

    def __init__(self) -> None:
        super().__init__(cache=None)
        self.seen: dict[str, torch.Tensor] = {}

    def seed(self, sentence: str) -> int:
        """The generator seed of ``sentence``'s vector."""
        return text_seed(sentence)

    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        rows = []
        for s in sentences:
            rows.append(hash_vector(s, self.dim, self.seed(s)))  # (dim,)
            self.seen[s] = rows[-1]
        return torch.stack(rows)  # (N, dim)

    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        names = list(self.seen)
        table = torch.stack([self.seen[n] for n in names])  # (K, dim)
        return [names[int(i)] for i in torch.cdist(vectors.float(), table).argmin(dim=1)]
