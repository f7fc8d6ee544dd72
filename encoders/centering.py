"""Language-mean centering of a multilingual codec (Libovický et al. 2020).

Multilingual sentence embeddings carry a language-specific mean: French sentences sit, on average,
a constant vector away from English ones ("On the language neutrality of pre-trained multilingual
representations", Findings of EMNLP 2020, section 3). Subtracting each language's mean embedding,
estimated from unlabelled sentences of that language, removes much of that identity and makes the
space more language-neutral; adding a language's mean back before decoding puts a prediction in
that language's region of the space, where its bank sentences are.

:class:`LanguageCentered` wraps any codec:

- ``encode(s, lang) = codec.encode(s, lang) - mean[lang] + mean[anchor]``
- ``decode(v, lang) = codec.decode(v - mean[anchor] + mean[lang], lang)``

or, with ``center_bank=True`` (a retrieval codec only), decoding compares the centred query
``v - mean[anchor]`` with the centred bank vectors ``b - mean[lang]`` by cosine, as Libovický et al.
centre both sides for cross-lingual retrieval. (Shifting the query alone keeps the bank's raw
cosine geometry; centring both changes which sentence is nearest.)

With ``anchor=None`` the space is the centred one (no ``mean[anchor]`` terms). With an anchor (the
training language) the space is that language's own raw frame: its sentences encode exactly as
the wrapped codec encodes them, so a model trained on the raw codec reads the wrapper's concepts
and the codec keeps its id. The two are the same pipeline: training on centred anchor-language
concepts differs from training on raw ones by a constant translation, which the model's
normalizer (``x - median``, fitted on the training concepts) removes, and decoding adds the same
``mean[lang] - mean[anchor]`` either way. No parallel data and no labels of the other languages
are used: a zero-shot method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from encoders.base import SentenceCodec


class LanguageCentered(SentenceCodec):
    """A codec whose vectors have each language's mean embedding removed (see the module).

    Args:
        codec: the wrapped codec (its cache, bank and languages are used as they are).
        means: language code -> mean embedding ``(dim,)`` of unlabelled sentences of it (e.g.
            from :meth:`fit`). Encoding or decoding a language without a mean is an error.
        anchor: a language in ``means`` whose raw frame the concepts live in (its sentences
            encode unchanged and the codec keeps the wrapped codec's id); None: the centred
            space (id ``<codec id>+langmean``).
        center_bank: decode by cosine between centred queries and centred bank vectors (each
            bank language minus its mean) instead of shifting the query into the raw bank.
    """

    def __init__(
        self,
        codec: SentenceCodec,
        means: Mapping[str, torch.Tensor],
        anchor: str | None = None,
        center_bank: bool = False,
    ) -> None:
        super().__init__(cache=None)  # the wrapped codec caches its own vectors
        self.codec = codec
        self.dim = codec.dim
        self.langs = codec.langs
        self.means: dict[str, torch.Tensor] = {}
        for lang, mean in means.items():
            codec.validate_lang(lang, "centering mean")
            mean = torch.as_tensor(mean, dtype=torch.float32).cpu()
            if mean.shape != (self.dim,):
                raise ValueError(
                    f"the centering mean of {lang!r} has shape {tuple(mean.shape)}, not "
                    f"({self.dim},)"
                )
            if not torch.isfinite(mean).all():
                raise ValueError(f"the centering mean of {lang!r} has NaN or inf values")
            self.means[lang] = mean
        if anchor is not None and anchor not in self.means:
            raise ValueError(f"anchor {anchor!r} has no mean (means: {', '.join(self.means)})")
        self.anchor = anchor
        if center_bank and not hasattr(codec, "bank"):
            raise ValueError(f"center_bank needs a retrieval codec; {codec.codec_id} has no bank")
        self.center_bank = center_bank
        self._centred: dict[str, tuple[int, torch.Tensor]] = {}  # lang -> (bank size, (K, dim))
        self.codec_id = codec.codec_id if anchor is not None else f"{codec.codec_id}+langmean"

    @classmethod
    def fit(
        cls,
        codec: SentenceCodec,
        sentences: Mapping[str, Sequence[str]],
        anchor: str | None = None,
        center_bank: bool = False,
    ) -> LanguageCentered:
        """Estimate each language's mean from ``sentences`` (language -> its sentences; any
        unlabelled text of that language, never the references being scored)."""
        means = {}
        for lang, sents in sentences.items():
            if not sents:
                raise ValueError(f"no sentences to estimate the mean of {lang!r}")
            means[lang] = codec.encode(list(sents), lang).mean(dim=0)
        return cls(codec, means, anchor=anchor, center_bank=center_bank)

    def shift(self, lang: str) -> torch.Tensor:
        """``mean[lang] - mean[anchor]`` (``mean[lang]`` without an anchor): what encoding
        subtracts and decoding adds back, ``(dim,)``."""
        if lang not in self.means:
            raise ValueError(
                f"no centering mean for language {lang!r} (means: {', '.join(self.means)}); "
                "fit one from unlabelled sentences of it"
            )
        if self.anchor is None:
            return self.means[lang]
        return self.means[lang] - self.means[self.anchor]

    # -- the SentenceCodec interface -----------------------------------------------------------
    def validate_lang(self, lang: str, what: str = "") -> str:
        return self.codec.validate_lang(lang, what)

    def encode(self, sentences: Sequence[str], lang: str) -> torch.Tensor:
        """The wrapped codec's vectors minus ``shift(lang)``: ``(len(sentences), dim)``."""
        return self.codec.encode(sentences, lang) - self.shift(lang)

    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        return self.codec.encode(sentences, lang) - self.shift(lang)

    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        """Decode ``vectors + shift(lang)`` with the wrapped codec (into ``lang``'s region), or
        with ``center_bank`` the bank sentence of ``lang`` whose centred vector is nearest (cosine)
        to the centred query."""
        if not self.center_bank:
            return self.codec.decode(vectors + self.shift(lang).to(vectors), lang)
        self.validate_lang(lang, "target language")
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"decode() takes (N, {self.dim}) vectors, got {tuple(vectors.shape)}")
        bank = self.codec.bank
        if bank.count(lang) == 0:
            have = ", ".join(bank.langs()) or "none"
            raise ValueError(f"the retrieval bank has no sentences in {lang!r} (it has: {have})")
        self.shift(lang)  # a clear error when the target language has no mean
        if len(vectors) == 0:
            return []
        size, table = self._centred.get(lang, (-1, None))
        if size != bank.count(lang):  # (re)built when the bank's language grew or shrank
            table = bank.vectors(lang) - self.means[lang]  # (K, dim)
            table = table / table.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self._centred[lang] = (bank.count(lang), table)
        query = vectors.float().cpu()
        if self.anchor is not None:
            query = query - self.means[self.anchor]
        query = query / query.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (N, dim)
        texts = bank.sentences(lang)
        return [texts[int(j)] for j in (query @ table.T).argmax(dim=1)]

    def count_truncated(self, sentences: Sequence[str], lang: str) -> int:
        return self.codec.count_truncated(sentences, lang)

    def unknown_ratio(self, sentences: Sequence[str], lang: str) -> list[float] | None:
        return self.codec.unknown_ratio(sentences, lang)

    def to(self, device: str | torch.device) -> LanguageCentered:
        self.codec.to(device)
        return self

    # -- a retrieval codec's bank is the wrapped codec's ---------------------------------------
    @property
    def bank(self):
        return self.codec.bank

    @bank.setter
    def bank(self, value) -> None:
        self.codec.bank = value

    def add_to_bank(self, sentences: Sequence[str], lang: str) -> None:
        """Add ``sentences`` to the wrapped codec's bank (stored uncentred; :meth:`decode` shifts
        the query instead)."""
        self.codec.add_to_bank(sentences, lang)

    def bank_langs(self) -> list[str]:
        return self.codec.bank_langs()
