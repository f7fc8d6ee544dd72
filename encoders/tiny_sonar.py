"""A tiny SONAR built with sonar-space's own config and factory classes.

The real SONAR checkpoints cannot be downloaded everywhere (CI, air-gapped clusters). This module
builds a model with the same architecture classes at toy size, a SentencePiece tokenizer in the
NLLB layout trained on a given corpus, and a fairseq2 asset card naming both, so that
``SonarCodec(encoder="tiny_sonar_encoder", ...)`` runs exactly the by-name loading path that
``text_sonar_basic_encoder`` runs. Optionally it trains encoder and decoder as an autoencoder for
a few steps so that decoding returns text instead of control tokens.

Nothing here is a substitute for SONAR's quality; it exists to test the real code path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_CORPUS_WORDS = (
    "the cat dog sat on mat a red blue house runs quickly slowly big small tree river bird "
    "sings today yesterday green sun moon le chat chien est sur la maison rouge"
).split()


@dataclass(frozen=True)
class TinySonar:
    """Where a tiny SONAR was written and the card names to load it by."""

    card_dir: Path
    encoder: str
    decoder: str
    langs: tuple[str, ...]


def _default_corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choices(DEFAULT_CORPUS_WORDS, k=rng.randint(3, 10))) + "." for _ in range(n)
    ]


def build_tiny_sonar(
    card_dir: str | Path,
    corpus: list[str] | None = None,
    langs: tuple[str, ...] = ("eng_Latn", "fra_Latn"),
    name: str = "tiny_sonar",
    model_dim: int = 64,
    num_layers: int = 2,
    vocab_size: int = 120,
    max_seq_len: int = 64,
    train_steps: int = 0,
    seed: int = 0,
) -> TinySonar:
    """Write a tiny SONAR (tokenizer, encoder, decoder, asset card) into ``card_dir``.

    Args:
        card_dir: folder for the card (``<name>.yaml``) and weights; register it with
            FAIRSEQ2_USER_ASSET_DIR or :func:`encoders.sonar.register_card_dir`.
        corpus: sentences to train the tokenizer (and the autoencoder) on.
        langs: FLORES-200 codes the tokenizer knows (as language tokens).
        name: card names become ``<name>_encoder`` and ``<name>_decoder``.
        model_dim: width of encoder and decoder; this is also the concept dimension.
        num_layers: layers of the encoder and of the decoder.
        vocab_size: SentencePiece vocabulary size (a soft limit on tiny corpora).
        max_seq_len: encoder/decoder maximum length in tokens.
        train_steps: autoencoder training steps (0 keeps random weights).
        seed: seeds the corpus, the weights and training.
    """
    import sentencepiece as spm
    from fairseq2.models.nllb.tokenizer import NllbTokenizerConfig, load_nllb_tokenizer
    from sonar.models.sonar_text import (
        SonarTextDecoderConfig,
        SonarTextDecoderFactory,
        SonarTextEncoderConfig,
        SonarTextEncoderFactory,
    )

    card_dir = Path(card_dir).resolve()
    card_dir.mkdir(parents=True, exist_ok=True)
    corpus = corpus or _default_corpus(500, seed)
    torch.manual_seed(seed)

    # 1) SentencePiece in NLLB's layout: <unk>=0, <s>=1, </s>=2 and no pad (fairseq2 adds it).
    (card_dir / f"{name}.corpus.txt").write_text("\n".join(corpus), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(card_dir / f"{name}.corpus.txt"),
        model_prefix=str(card_dir / name),
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    spm_path = card_dir / f"{name}.model"
    tokenizer = load_nllb_tokenizer(
        spm_path, NllbTokenizerConfig(langs=list(langs), default_lang=langs[0])
    )
    vi = tokenizer.vocab_info

    # 2) Encoder and decoder from sonar's own classes.
    common = dict(
        model_dim=model_dim,
        max_seq_len=max_seq_len,
        vocab_info=vi,
        num_encoder_layers=num_layers,
        num_decoder_layers=num_layers,
        num_encoder_attn_heads=4,
        num_decoder_attn_heads=4,
        ffn_inner_dim=4 * model_dim,
    )
    encoder = SonarTextEncoderFactory(
        SonarTextEncoderConfig(pooling="mean", **common)
    ).create_model()
    dec_cfg = SonarTextDecoderConfig(
        activation_fn="ReLU",
        no_scale_embedding=False,
        no_token_positional_embeddings=False,
        learned_pos=False,
        emb_dropout_p=0.0,
        attention_dropout_p=0.0,
        activation_dropout_p=0.0,
        normalize_before=True,
        **common,
    )
    decoder = SonarTextDecoderFactory(dec_cfg).create_model()
    if train_steps > 0:
        _train_autoencoder(encoder, decoder, tokenizer, corpus, langs[0], train_steps, seed)

    torch.save({"model": encoder.state_dict()}, card_dir / f"{name}_encoder.pt")
    torch.save({"model": decoder.state_dict()}, card_dir / f"{name}_decoder.pt")

    # 3) The asset card: same families and fields as sonar's own cards, local file:// URIs.
    vocab = (
        f"vocab_info: {{size: {vi.size}, unk_idx: {vi.unk_idx}, bos_idx: {vi.bos_idx}, "
        f"eos_idx: {vi.eos_idx}, pad_idx: {vi.pad_idx}}}"
    )
    tok = (
        f'tokenizer: "file://{spm_path}"\ntokenizer_family: nllb\ntokenizer_config:\n  _set_:\n'
        f"    default_lang: {langs[0]}\n    langs: [{', '.join(langs)}]\n"
    )
    layers = (
        f"    num_encoder_layers: {num_layers}\n    num_decoder_layers: {num_layers}\n"
        "    num_encoder_attn_heads: 4\n    num_decoder_attn_heads: 4\n"
        f"    ffn_inner_dim: {4 * model_dim}\n"
    )
    card = (
        f"name: {name}_encoder\nmodel_family: transformer_encoder\nmodel_arch: basic\n"
        f"model_config:\n  _set_:\n    model_dim: {model_dim}\n    max_seq_len: {max_seq_len}\n"
        f"    {vocab}\n{layers}    _from_fairseq: false\n"
        f'checkpoint: "file://{card_dir / f"{name}_encoder.pt"}"\n{tok}'
        "---\n"
        f"name: {name}_decoder\nmodel_family: transformer_decoder\nmodel_arch: toy\n"
        f"model_config:\n  _set_:\n    model_dim: {model_dim}\n    max_seq_len: {max_seq_len}\n"
        f"    {vocab}\n{layers}"
        "    activation_fn: ReLU\n    emb_dropout_p: 0.0\n    attention_dropout_p: 0.0\n"
        "    activation_dropout_p: 0.0\n"
        f'checkpoint: "file://{card_dir / f"{name}_decoder.pt"}"\n{tok}'
    )
    (card_dir / f"{name}.yaml").write_text(card, encoding="utf-8")
    return TinySonar(card_dir, f"{name}_encoder", f"{name}_decoder", tuple(langs))


def _train_autoencoder(encoder, decoder, tokenizer, corpus, lang, steps, seed) -> None:
    """Teach the decoder to reconstruct sentences from the encoder's pooled vector."""
    import torch.nn.functional as F
    from fairseq2.nn import BatchLayout
    from fairseq2.nn.utils.padding import pad_seqs
    from sonar.models.sonar_translation import SonarEncoderDecoderModel

    rng = random.Random(seed)
    model = SonarEncoderDecoderModel(encoder, decoder).train()
    src_enc = tokenizer.create_encoder(lang=lang, mode="source")
    tgt_enc = tokenizer.create_encoder(lang=lang, mode="target")
    pad = tokenizer.vocab_info.pad_idx
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = rng.sample(corpus, min(32, len(corpus)))
        src, src_layout = pad_seqs([src_enc(s) for s in batch], pad_value=pad)
        tgt, tgt_layout = pad_seqs([tgt_enc(s) for s in batch], pad_value=pad)
        inp, labels = tgt[:, :-1], tgt[:, 1:]  # teacher forcing: predict token t+1 from <= t
        inp_layout = BatchLayout.of(inp, [n - 1 for n in tgt_layout.seq_lens])
        logits = model(src, src_layout, inp, inp_layout)  # (B, T, V)
        loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=pad)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
