"""Cross-lingual codec check: encode in language A, decode in language B, score against B.

The LCM reasons in a language-agnostic space and decodes in any language (paper section 4.2,
zero-shot XLSum). Whatever the model predicts, the codec's A -> B round trip bounds what it can
write in B; SONAR reports its quality as spBLEU on FLORES-200 (SONAR paper; our DESIGN.md).

spBLEU is sacreBLEU with the ``flores200`` SentencePiece tokenizer. sacreBLEU downloads that
model on first use; we never let it: if the file is not already in sacreBLEU's cache
(``$SACREBLEU/models/flores200sacrebleuspm``) we fall back to a built-in tokenizer and say so in
the result's label: ``char`` for scripts written without spaces (Han, Japanese, Thai, Lao, Khmer,
Myanmar, Tibetan), ``13a`` otherwise. chrF (chrF2, character 6-grams) needs no tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF

from encoders.base import SentenceCodec

#: FLORES-200 scripts written without spaces between words.
NO_SPACE_SCRIPTS = frozenset({"Hans", "Hant", "Jpan", "Thai", "Laoo", "Khmr", "Mymr", "Tibt"})


def flores200_spm_path() -> str:
    """Where sacreBLEU looks for the flores200 SentencePiece model (it may not exist)."""
    from sacrebleu import utils
    from sacrebleu.tokenizers.tokenizer_spm import SPM_MODELS

    name = os.path.basename(SPM_MODELS["flores200"]["url"])
    return os.path.join(utils.SACREBLEU_DIR, "models", name)


@dataclass(frozen=True)
class BleuTokenizer:
    """The BLEU tokenization used for one target language.

    Attributes:
        tokenize: sacreBLEU tokenizer name.
        label: what to call the score: "spBLEU" only with ``flores200``, else e.g. "BLEU[char]".
        note: why spBLEU was not used ("" when it was).
    """

    tokenize: str
    label: str
    note: str


def bleu_tokenizer(lang: str) -> BleuTokenizer:
    """spBLEU's ``flores200`` tokenizer if it is available offline, else a labelled fallback.

    Args:
        lang: FLORES-200 code of the hypotheses/references (``zho_Hans``); its script picks the
            fallback.
    """
    path = flores200_spm_path()
    have_spm = importlib.util.find_spec("sentencepiece") is not None
    if have_spm and os.path.isfile(path):
        return BleuTokenizer("flores200", "spBLEU", "")
    script = lang.split("_")[-1]
    fallback = "char" if script in NO_SPACE_SCRIPTS else "13a"
    why = "sentencepiece is not installed" if not have_spm else f"{path} does not exist"
    note = (
        f"spBLEU unavailable ({why}; it is never downloaded here): BLEU with tokenize="
        f"{fallback!r} instead, not comparable to published spBLEU"
    )
    return BleuTokenizer(fallback, f"BLEU[{fallback}]", note)


@dataclass(frozen=True)
class TranslationScores:
    """Corpus scores of hypotheses against references in one language.

    Attributes:
        bleu: corpus BLEU (0-100) with ``tokenizer``.
        chrf: corpus chrF2 (0-100).
        tokenizer: how BLEU tokenized, with its label and note.
        bleu_signature: sacreBLEU's signature string for the BLEU score.
        chrf_signature: the same for chrF.
    """

    bleu: float
    chrf: float
    tokenizer: BleuTokenizer
    bleu_signature: str
    chrf_signature: str


def score_translations(
    hypotheses: Sequence[str], references: Sequence[str], lang: str, tokenize: str | None = None
) -> TranslationScores:
    """Corpus BLEU (spBLEU when possible) and chrF of ``hypotheses`` against ``references``.

    Args:
        hypotheses: decoded sentences.
        references: one reference per hypothesis, in ``lang``.
        lang: FLORES-200 code of both.
        tokenize: force a sacreBLEU tokenizer (a ``flores200`` that is not cached would
            download, so that is refused).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    tok = bleu_tokenizer(lang)
    if tokenize is not None and tokenize != tok.tokenize:
        if tokenize == "flores200":
            raise RuntimeError(tok.note)
        tok = BleuTokenizer(tokenize, f"BLEU[{tokenize}]", "tokenizer chosen by the caller")
    bleu = BLEU(tokenize=tok.tokenize)
    chrf = CHRF()
    refs = [list(references)]
    b = bleu.corpus_score(list(hypotheses), refs)
    c = chrf.corpus_score(list(hypotheses), refs)
    return TranslationScores(
        b.score, c.score, tok, str(bleu.get_signature()), str(chrf.get_signature())
    )


@dataclass(frozen=True)
class CrossLingualResult:
    """One A -> B codec check.

    Attributes:
        src_lang: language encoded.
        tgt_lang: language decoded.
        scores: BLEU/chrF of the decoded sentences against the B references.
        hypotheses: the decoded sentences.
    """

    src_lang: str
    tgt_lang: str
    scores: TranslationScores
    hypotheses: list[str]


def codec_crosslingual(
    codec: SentenceCodec,
    sources: Sequence[str],
    src_lang: str,
    references: Sequence[str],
    tgt_lang: str,
    batch_size: int = 64,
) -> CrossLingualResult:
    """Encode ``sources`` in ``src_lang``, decode in ``tgt_lang``, score against ``references``.

    With ``src_lang == tgt_lang`` this is the codec's auto-encoding round trip (SONAR: 32.4
    spBLEU averaged over FLORES-200, DESIGN.md).

    Args:
        codec: the frozen codec.
        sources: sentences in ``src_lang``.
        src_lang: FLORES-200 code to encode from.
        references: the parallel sentences in ``tgt_lang``.
        tgt_lang: FLORES-200 code to decode into.
        batch_size: sentences per encode/decode call.
    """
    if len(sources) != len(references):
        raise ValueError(f"{len(sources)} sources but {len(references)} references")
    hyps: list[str] = []
    for i in range(0, len(sources), batch_size):
        vectors = codec.encode(list(sources[i : i + batch_size]), src_lang)  # (b, D)
        hyps.extend(codec.decode(vectors, tgt_lang))
    return CrossLingualResult(
        src_lang, tgt_lang, score_translations(hyps, references, tgt_lang), hyps
    )


def crosslingual_matrix(
    codec: SentenceCodec,
    parallel: Mapping[str, Sequence[str]],
    pairs: Sequence[tuple[str, str]] | None = None,
    batch_size: int = 64,
) -> dict[tuple[str, str], CrossLingualResult]:
    """:func:`codec_crosslingual` for every (A, B) pair of a parallel corpus.

    Args:
        codec: the frozen codec.
        parallel: language code -> its sentences; row i is the same sentence in every language.
        pairs: (A, B) pairs to run; default all ordered pairs, diagonal included.
        batch_size: sentences per call.
    """
    sizes = {lang: len(s) for lang, s in parallel.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"parallel corpus is not aligned: {sizes}")
    langs = list(parallel)
    pairs = pairs if pairs is not None else [(a, b) for a in langs for b in langs]
    return {
        (a, b): codec_crosslingual(codec, parallel[a], a, parallel[b], b, batch_size)
        for a, b in pairs
    }
