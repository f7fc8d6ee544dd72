"""SONAR text encoder/decoder as a frozen :class:`~encoders.base.SentenceCodec`.

Loads the real checkpoints by fairseq2 asset name (``text_sonar_basic_encoder`` and
``text_sonar_basic_decoder``), or any asset card a user wrote for weights they downloaded. The
encoder path batches *all* sentences of a call together, sorted by token length so padding stays
small, which is where the speed-up over calling the stock pipeline once per document comes from.
Truncation at the encoder's maximum length (512 tokens for SONAR) is counted, never silent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from encoders.base import SentenceCodec
from encoders.cache import EmbeddingCache
from encoders.langs import SONAR_LANGS

log = logging.getLogger(__name__)

SONAR_ENCODER = "text_sonar_basic_encoder"
SONAR_DECODER = "text_sonar_basic_decoder"

HOW_TO_GET_WEIGHTS = """\
SONAR weights for asset {name!r} are not available: {reason}
The official checkpoints download from Meta's file server on first use
(https://dl.fbaipublicfiles.com/SONAR/sonar_text_encoder.pt, sonar_text_decoder.pt and
sentencepiece.source.256000.model). Without network access:
  1. download those three files on a machine that has it;
  2. write a fairseq2 asset card (YAML) naming them with file:// URIs, for example
       name: my_sonar_encoder
       base: text_sonar_basic_encoder
       checkpoint: "file:///path/to/sonar_text_encoder.pt"
       tokenizer: "file:///path/to/sentencepiece.source.256000.model"
     (and the same with base: text_sonar_basic_decoder for the decoder);
  3. point fairseq2 at the card folder with FAIRSEQ2_USER_ASSET_DIR=/path/to/cards (or
     `lcm prepare --codec.card_dir /path/to/cards`) and use the card names as encoder/decoder.
Or run the offline default codec, which needs no download."""


class SonarWeightsUnavailable(RuntimeError):
    """The SONAR checkpoint could not be loaded (no network, no local card)."""


def register_card_dir(path: str | Path) -> None:
    """Make fairseq2 find the asset cards in ``path``.

    fairseq2 builds its asset store once per process, so this must run before anything loads a
    model; later it only succeeds if ``path`` is the folder already registered.
    """
    import fairseq2.runtime.dependency as dep

    path = Path(path).resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"asset card folder not found: {path}")
    if dep._resolver is None:  # fairseq2 reads the user asset folder when it initialises
        os.environ["FAIRSEQ2_USER_ASSET_DIR"] = str(path)
        return
    current = os.environ.get("FAIRSEQ2_USER_ASSET_DIR")
    if current is None or Path(current).resolve() != path:
        raise RuntimeError(
            f"fairseq2 is already initialised with asset folder {current!r}; set "
            f"FAIRSEQ2_USER_ASSET_DIR={path} before starting the process"
        )


def _card_field(name: str, field: str) -> object:
    from fairseq2.assets import get_asset_store

    found = get_asset_store().retrieve_card(name).maybe_get_field(field)  # follows `base:` cards
    return None if found is None else found.value


def _load(kind: str, name: str, device: torch.device, dtype: torch.dtype | None):
    """Load a fairseq2 model or tokenizer by card name, turning download failures into advice."""
    from fairseq2.assets import AssetDownloadError, AssetNotFoundError
    from fairseq2.data.tokenizers import load_tokenizer
    from fairseq2.models import load_model

    try:
        if kind == "tokenizer":
            return load_tokenizer(name)
        return load_model(name, device=device, dtype=dtype)
    except AssetNotFoundError as ex:
        raise SonarWeightsUnavailable(
            HOW_TO_GET_WEIGHTS.format(name=name, reason=f"no asset card named {name!r}")
        ) from ex
    except (AssetDownloadError, OSError) as ex:
        raise SonarWeightsUnavailable(
            HOW_TO_GET_WEIGHTS.format(name=name, reason=str(ex).splitlines()[0])
        ) from ex


class SonarCodec(SentenceCodec):
    """Frozen SONAR text encoder and decoder.

    Args:
        encoder: fairseq2 asset card name of the encoder.
        decoder: asset card name of the decoder.
        tokenizer: card whose tokenizer to use (default: the encoder's card).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: compute dtype; default float16 on GPU, float32 on CPU.
        batch_max_tokens: most tokens (padding included) in one encoder batch.
        batch_size: most sentences in one encoder batch.
        max_seq_len: encoder truncation length in tokens (SONAR: 512); truncations are counted.
        beam_size: beam width for decoding.
        decode_max_len: most tokens per decoded sentence.
        cache: optional embedding cache.
        card_dir: folder of asset cards to register (see :func:`register_card_dir`).
    """

    def __init__(
        self,
        encoder: str = SONAR_ENCODER,
        decoder: str = SONAR_DECODER,
        tokenizer: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        batch_max_tokens: int = 8192,
        batch_size: int = 256,
        max_seq_len: int = 512,
        beam_size: int = 5,
        decode_max_len: int = 128,
        cache: EmbeddingCache | None = None,
        card_dir: str | None = None,
    ) -> None:
        super().__init__(cache)
        if card_dir is not None:
            register_card_dir(card_dir)
        self.encoder_name, self.decoder_name = encoder, decoder
        self.tokenizer_name = tokenizer or encoder
        self.device = torch.device(device)
        self._auto_dtype = dtype is None
        if dtype is None:
            self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = getattr(torch, dtype)
        self.batch_max_tokens, self.batch_size = batch_max_tokens, batch_size
        self.max_seq_len, self.beam_size, self.decode_max_len = (
            max_seq_len,
            beam_size,
            decode_max_len,
        )
        self._encoder = self._decoder = self._tokenizer = None
        # The card is read now (cheap, no download) so that a wrong name fails at once.
        from fairseq2.assets import AssetCardError, AssetNotFoundError

        try:
            ckpt = _card_field(encoder, "checkpoint")
            langs = _card_field(self.tokenizer_name, "tokenizer_config")
        except (AssetNotFoundError, AssetCardError) as ex:
            raise SonarWeightsUnavailable(
                HOW_TO_GET_WEIGHTS.format(name=encoder, reason=f"no usable asset card: {ex}")
            ) from ex
        self.codec_id = f"sonar:{encoder}:{ckpt}"
        lang_list = langs.get("_set_", langs).get("langs") if isinstance(langs, dict) else None
        self.langs = tuple(lang_list) if lang_list else SONAR_LANGS
        self.dim = None  # known once the encoder is loaded

    # -- loading ---------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = _load("tokenizer", self.tokenizer_name, self.device, None)
        return self._tokenizer

    @property
    def encoder(self):
        if self._encoder is None:
            model = _load("model", self.encoder_name, self.device, self.dtype)
            self._encoder = model.eval().requires_grad_(False)
            # The pooled width is not a uniform attribute across fairseq2 encoders: measure it.
            probe = torch.tensor([[self.tokenizer.vocab_info.eos_idx]], device=self.device)
            from fairseq2.nn import BatchLayout

            with torch.inference_mode():
                out = self._encoder(probe, BatchLayout.of(probe)).sentence_embeddings
            self.dim = int(out.shape[-1])
        return self._encoder

    @property
    def decoder(self):
        if self._decoder is None:
            from sonar.inference_pipelines.text import EmbeddingToTextModelPipeline

            model = _load("model", self.decoder_name, self.device, self.dtype)
            self._decoder = EmbeddingToTextModelPipeline(
                decoder=model.eval().requires_grad_(False),
                tokenizer=self.tokenizer,
                device=self.device,
            )
        return self._decoder

    def load(self) -> SonarCodec:
        """Load the encoder and tokenizer now (they load lazily otherwise)."""
        _ = self.encoder, self.tokenizer
        return self

    @torch.inference_mode()
    def encode(self, sentences, lang):  # noqa: D102 - documented in the base class
        self.load()  # dim must be known before the base class allocates the output
        return super().encode(sentences, lang)

    def to(self, device):
        device = torch.device(device)
        if device != self.device:
            if self._encoder is not None or self._decoder is not None:
                raise RuntimeError("move the SONAR codec before its first use")
            self.device = device
            if self._auto_dtype:
                self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        return self

    def count_truncated(self, sentences, lang):
        token_encoder = self.tokenizer.create_encoder(lang=lang, mode="source")
        return sum(int(token_encoder(s).shape[0] > self.max_seq_len) for s in sentences)

    def unknown_ratio(self, sentences, lang):
        """Share of each sentence's characters (spaces aside) that fall in ``<unk>`` pieces.

        SentencePiece merges a run of characters it does not know into one ``<unk>`` piece, so
        counting pieces would call "🙂🙂🙂🙂 ok" 1 in 3 unknown (``▁``, ``<unk>``, ``▁ok``) when
        4 of its 6 characters are invisible to the encoder; the share of characters is what
        tells how much of the sentence the vector cannot reflect, whatever the runs' lengths.
        Measured on SentencePiece's normalized text (the language tag and ``</s>`` aside)."""
        token_encoder = self.tokenizer.create_encoder(lang=lang, mode="source")
        unk = self.tokenizer.vocab_info.unk_idx
        n_pre = len(token_encoder.prefix_indices or [])  # the language tag
        n_suf = len(token_encoder.suffix_indices or [])  # </s>
        out = []
        for s in sentences:
            ids = token_encoder(s).tolist()
            pieces = token_encoder.encode_as_tokens(s)
            ids, pieces = (x[n_pre : len(x) - n_suf] for x in (ids, pieces))
            sizes = [len(p.replace("\u2581", "")) for p in pieces]  # "▁" marks a word start
            total = sum(sizes)
            hidden = sum(n for i, n in zip(ids, sizes) if i == unk)
            out.append(hidden / total if total else 0.0)
        return out

    # -- encoding --------------------------------------------------------------------------------
    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        from fairseq2.nn.utils.padding import pad_seqs

        encoder = self.encoder
        token_encoder = self.tokenizer.create_encoder(lang=lang, mode="source")
        pad = self.tokenizer.vocab_info.pad_idx
        tokens = []
        for s in sentences:
            ids = token_encoder(s)
            if ids.shape[0] > self.max_seq_len:
                self.n_truncated += 1
                ids = ids[: self.max_seq_len]
            tokens.append(ids)
        # Sort by length so each batch holds similar lengths: little padding, and a batch is
        # closed when its padded size (longest * count) would pass batch_max_tokens.
        order = sorted(range(len(tokens)), key=lambda i: tokens[i].shape[0])
        out = torch.empty(len(tokens), self.dim, dtype=torch.float32)
        start = 0
        while start < len(order):
            end = start + 1
            while (
                end < len(order)
                and end - start < self.batch_size
                and tokens[order[end]].shape[0] * (end - start + 1) <= self.batch_max_tokens
            ):
                end += 1
            idx = order[start:end]
            seqs, layout = pad_seqs([tokens[i] for i in idx], pad_value=pad, device=self.device)
            emb = encoder(seqs, layout).sentence_embeddings  # (b, dim)
            out[idx] = emb.to("cpu", torch.float32)
            start = end
        return out

    # -- decoding --------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        self.validate_lang(lang)
        if vectors.ndim != 2:
            raise ValueError(f"decode() takes (N, dim) vectors, got shape {tuple(vectors.shape)}")
        if len(vectors) == 0:
            return []
        pipeline = self.decoder
        return pipeline.predict(
            vectors.to(self.device, self.dtype),
            target_lang=lang,
            batch_size=self.batch_size,
            beam_size=self.beam_size,
            max_seq_len=self.decode_max_len,
        )
