"""The interface every frozen sentence codec implements.

A codec maps sentences to fixed-size concept vectors (``encode``) and, where it can, vectors back
to sentences (``decode``). SONAR is the reference codec; the offline default (a small pretrained
encoder with retrieval decoding) plugs into the same interface. Models never see a codec: they
train on the vectors it wrote into concept shards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from encoders.cache import EmbeddingCache
from encoders.langs import validate_lang


class SentenceCodec(ABC):
    """A frozen sentence encoder/decoder.

    Subclasses implement :meth:`_encode` (no caching, no validation) and :meth:`decode`, and set
    ``codec_id``, ``dim`` and ``langs``. :meth:`encode` adds language validation, de-duplication
    within a call and the optional :class:`~encoders.cache.EmbeddingCache`.
    """

    #: Identifies the weights: two codecs with equal ids give equal vectors (the cache key).
    codec_id: str
    #: Concept dimension (1024 for SONAR).
    dim: int
    #: Language codes the codec accepts.
    langs: Sequence[str]
    #: Where the encoder runs and the dtype it computes in; returned vectors are float32 on CPU.
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def __init__(self, cache: EmbeddingCache | None = None) -> None:
        self.cache = cache
        #: Sentences cut at the encoder's maximum token count, over the codec's lifetime.
        self.n_truncated = 0
        #: Sentences actually run through the encoder (cache and duplicate hits excluded).
        self.n_encoded = 0

    def validate_lang(self, lang: str, what: str = "") -> str:
        """Return ``lang`` if the codec handles it; else an error naming the codec's languages
        and the codecs that handle ``lang`` (:func:`encoders.langs.validate_lang`)."""
        cls = type(self)
        return validate_lang(lang, self.langs, what, codec=f"{cls.__module__}.{cls.__name__}")

    @torch.inference_mode()
    def encode(self, sentences: Sequence[str], lang: str) -> torch.Tensor:
        """Encode ``sentences`` written in ``lang``.

        Returns:
            float32 CPU tensor of shape ``(len(sentences), dim)``.
        """
        self.validate_lang(lang)
        if isinstance(sentences, str):
            raise TypeError("encode() takes a list of sentences, not one string")
        out = torch.empty(len(sentences), self.dim, dtype=torch.float32)
        if not sentences:
            return out
        unique = list(dict.fromkeys(sentences))  # repeated sentences are encoded once
        cached = (
            self.cache.get_many(self.codec_id, lang, unique) if self.cache else [None] * len(unique)
        )
        vec: dict[str, torch.Tensor] = {s: v for s, v in zip(unique, cached) if v is not None}
        missing = [s for s, v in zip(unique, cached) if v is None]
        if missing:
            new = self._encode(missing, lang).to("cpu", torch.float32)  # (M, dim)
            if new.shape != (len(missing), self.dim):
                raise RuntimeError(f"{type(self).__name__} returned {tuple(new.shape)}")
            self.n_encoded += len(missing)
            if self.cache is not None:
                self.cache.put_many(self.codec_id, lang, missing, new)
            vec.update(zip(missing, new))
        for i, s in enumerate(sentences):
            out[i] = vec[s]
        return out

    def count_truncated(self, sentences: Sequence[str], lang: str) -> int:
        """How many of ``sentences`` exceed the encoder's input limit (0 if it has none).

        Computed from token counts alone, so it is right even for sentences served by the cache.
        """
        return 0

    def unknown_ratio(self, sentences: Sequence[str], lang: str) -> list[float] | None:
        """Share of each sentence's characters (spaces aside) that fall in tokens the codec's
        tokenizer maps to its unknown token (1.0 = the encoder sees only unknown tokens, so
        different sentences collapse to one vector); None when the codec cannot tell (the
        default). Characters, not tokens: a tokenizer folds a run of unknown characters
        (SentencePiece) or a whole word (WordPiece) into one unknown token, so a share of
        tokens would depend on how long the runs are."""
        return None

    def to(self, device: str | torch.device) -> SentenceCodec:
        """Run the encoder on ``device`` (used by the scale-out path to pick each rank's GPU)."""
        self.device = torch.device(device)
        return self

    @abstractmethod
    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        """Encode unique, uncached sentences: ``(len(sentences), dim)``."""

    @abstractmethod
    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        """Render ``vectors`` of shape ``(N, dim)`` as N sentences in ``lang``."""
