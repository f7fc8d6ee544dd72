"""Word-level summarization metrics: ROUGE-L, OVL-3, REP-4 and length statistics.

LCM paper (Barrault et al. 2024) section 3.1.1 and Table 8: ROUGE-L (Lin 2004) against the
reference, OVL-3 (word 3-gram overlap with the source), REP-4 (share of duplicated word 4-grams,
Welleck et al. 2019). Section 4.2 notes that ROUGE on XLSum depends on tokenization.

Every metric here runs on one tokenizer, :class:`UnicodeTokenizer`. rouge-score's default
tokenizer keeps only ``[a-z0-9]`` and so scores any non-Latin text as empty; Python's ``\\w+``
splits Indic words at their vowel signs (combining marks are not ``\\w``). Ours:

- a word is a maximal run of letters, digits and combining marks (Unicode categories L, N, M),
  case-folded;
- each Han, Hiragana or Katakana character is one token (no spaces between words), and so is each
  character (with its combining marks) of Thai, Lao, Khmer and Myanmar, which are also written
  without spaces; Hangul is written with spaces and stays word-level;
- punctuation, symbols and spaces separate tokens and are dropped.

Scores are fractions in [0, 1]; the paper's tables print ROUGE-L x100. A metric that is undefined
for an input (no n-grams) is NaN, never 0, and :func:`summarization_metrics` reports how many
inputs were undefined.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rouge_score import rouge_scorer
from rouge_score.tokenizers import Tokenizer

# Code point ranges whose characters are each one token: scripts written without spaces.
_SINGLE_CHAR_RANGES: tuple[tuple[int, int], ...] = (
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x19E0, 0x19FF),  # Khmer symbols
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3005, 0x3007),  # CJK iteration mark, closing mark, ideographic zero
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x323AF),  # CJK extensions B-H and compatibility supplement
)


def _single_char(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _SINGLE_CHAR_RANGES)


def _word_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LNM"


class UnicodeTokenizer(Tokenizer):
    """Script-aware word tokenizer; also a rouge-score ``Tokenizer`` (see the module docstring).

    Args:
        lowercase: case-fold tokens.
        stem: Porter-stem ASCII-letter tokens longer than 3 characters, as rouge-score's
            ``use_stemmer`` does for English; other tokens are left alone.
    """

    def __init__(self, lowercase: bool = True, stem: bool = False) -> None:
        self.lowercase = lowercase
        self._stemmer = None
        if stem:
            from nltk.stem import porter  # a rouge-score dependency

            self._stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFC", text)
        if self.lowercase:
            text = text.casefold()
        tokens: list[str] = []
        word: list[str] = []
        after_single = False  # the previous character was a one-character token
        for ch in text:
            if not _word_char(ch):  # space, punctuation, symbol: a separator
                if word:
                    tokens.append("".join(word))
                    word = []
                after_single = False
            elif after_single and unicodedata.category(ch)[0] == "M":
                tokens[-1] += ch  # a Thai vowel sign or tone mark belongs to its base character
            elif _single_char(ch):
                if word:
                    tokens.append("".join(word))
                    word = []
                tokens.append(ch)
                after_single = True
            else:
                word.append(ch)  # letters, digits and marks (Indic vowel signs) build a word
                after_single = False
        if word:
            tokens.append("".join(word))
        if self._stemmer is not None:
            tokens = [
                self._stemmer.stem(t) if len(t) > 3 and t.isascii() and t.isalpha() else t
                for t in tokens
            ]
        return tokens


_DEFAULT_TOKENIZER = UnicodeTokenizer()


def tokenize(text: str, tokenizer: Tokenizer | None = None) -> list[str]:
    """Tokens of ``text`` with ``tokenizer`` (default: case-folded :class:`UnicodeTokenizer`)."""
    return (tokenizer or _DEFAULT_TOKENIZER).tokenize(text)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous ``n``-grams of ``tokens``, in order, with repeats."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# ----------------------------------------------------------------------------------- ROUGE-L
@dataclass(frozen=True)
class RougeL:
    """Corpus ROUGE-L: means over pairs of the per-pair scores (rouge-score's convention).

    Attributes:
        precision: mean LCS / |hypothesis|.
        recall: mean LCS / |reference|.
        f: mean F-measure (the paper's R-L, there x100).
        per_pair_f: F-measure of each pair.
    """

    precision: float
    recall: float
    f: float
    per_pair_f: list[float]


def rouge_l(
    hypotheses: Sequence[str],
    references: Sequence[str],
    summary_level: bool = False,
    tokenizer: Tokenizer | None = None,
) -> RougeL:
    """ROUGE-L (Lin 2004) of each hypothesis against its reference, with a Unicode tokenizer.

    Paper section 3.1.1 / Table 8 ("R-L"). Scored by rouge-score's LCS code; only the tokenizer
    is ours, so English text scores as rouge-score would score it (without stemming unless
    ``tokenizer=UnicodeTokenizer(stem=True)``), except that non-ASCII letters are kept.

    Args:
        hypotheses: generated summaries.
        references: one reference per hypothesis.
        summary_level: ``rougeLsum`` (union LCS over sentences) instead of ``rougeL``; sentences
            must then be separated by newlines.
        tokenizer: defaults to :class:`UnicodeTokenizer` (case-folded, no stemming).

    Returns:
        :class:`RougeL` with fractions in [0, 1].
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("rouge_l() needs at least one pair")
    key = "rougeLsum" if summary_level else "rougeL"
    scorer = rouge_scorer.RougeScorer([key], tokenizer=tokenizer or _DEFAULT_TOKENIZER)
    scores = [scorer.score(ref, hyp)[key] for hyp, ref in zip(hypotheses, references)]
    n = len(scores)
    return RougeL(
        precision=sum(s.precision for s in scores) / n,
        recall=sum(s.recall for s in scores) / n,
        f=sum(s.fmeasure for s in scores) / n,
        per_pair_f=[s.fmeasure for s in scores],
    )


# ----------------------------------------------------------------------------- OVL-3 / REP-4
def ngram_overlap(
    hypothesis: str,
    source: str,
    n: int = 3,
    of: Literal["hypothesis", "source"] = "hypothesis",
    tokenizer: Tokenizer | None = None,
) -> float:
    """Share of word n-grams on one side that also occur on the other (OVL-n).

    Paper section 3.1.1 defines OVL-3 as "the proportion of word 3-grams of the source that are
    present in the output". ``of="hypothesis"`` (default, as our design asks) counts the
    hypothesis's n-grams found in the source: how much of the summary is copied. ``of="source"``
    is the paper's wording read literally: how much of the source the output reproduces.
    Occurrences are counted with multiplicity on the counted side.

    Returns:
        A fraction in [0, 1]; NaN when the counted side has fewer than ``n`` tokens.
    """
    hyp, src = ngrams(tokenize(hypothesis, tokenizer), n), ngrams(tokenize(source, tokenizer), n)
    counted, other = (hyp, src) if of == "hypothesis" else (src, hyp)
    if not counted:
        return math.nan
    present = set(other)
    return sum(g in present for g in counted) / len(counted)


def ovl3(
    hypothesis: str,
    source: str,
    of: Literal["hypothesis", "source"] = "hypothesis",
    tokenizer: Tokenizer | None = None,
) -> float:
    """OVL-3 (paper Table 8): :func:`ngram_overlap` with ``n=3``."""
    return ngram_overlap(hypothesis, source, n=3, of=of, tokenizer=tokenizer)


def repeated_ngram_share(text: str, n: int = 4, tokenizer: Tokenizer | None = None) -> float:
    """``(#n-grams - #distinct n-grams) / #n-grams`` over the *word* n-grams of ``text``.

    Welleck et al. (2019) seq-rep-n. Meta's code counts character n-grams, which measures
    something else (any frequent letter sequence repeats); we count words.

    Returns:
        A fraction in [0, 1); NaN when ``text`` has fewer than ``n`` tokens.
    """
    grams = ngrams(tokenize(text, tokenizer), n)
    if not grams:
        return math.nan
    return (len(grams) - len(set(grams))) / len(grams)


def rep4(text: str, tokenizer: Tokenizer | None = None) -> float:
    """REP-4 (paper Table 8): :func:`repeated_ngram_share` with ``n=4``, as a fraction (the
    paper's tables appear to print it x100: values above 1 occur there)."""
    return repeated_ngram_share(text, n=4, tokenizer=tokenizer)


# ----------------------------------------------------------------------------------- lengths
@dataclass(frozen=True)
class LengthStats:
    """Length of one text: ``words`` = tokens of :class:`UnicodeTokenizer` (a Han character
    counts as one word), ``sentences`` = sentences as given or as split by
    :class:`lcm.splitting.SentenceSplitter`."""

    words: int
    sentences: int


def length_stats(
    text: str | Sequence[str], lang: str = "eng_Latn", tokenizer: Tokenizer | None = None
) -> LengthStats:
    """Words and sentences of a summary.

    Args:
        text: the summary, either as its list of sentences (an LCM emits one per concept) or as
            one string, which is then split with ``SentenceSplitter(max_chars=0)`` in ``lang``.
        lang: FLORES-200 code, used only to split a string.
        tokenizer: word tokenizer (default :class:`UnicodeTokenizer`).
    """
    if isinstance(text, str):
        from lcm.splitting import SentenceSplitter

        sentences = SentenceSplitter(max_chars=0).split(text, lang)
    else:
        sentences = [s for s in text if s.strip()]
    words = sum(len(tokenize(s, tokenizer)) for s in sentences)
    return LengthStats(words=words, sentences=len(sentences))


# ----------------------------------------------------------------------------- aggregation
def nanmean(values: Sequence[float]) -> tuple[float, int]:
    """Mean of the finite values and how many were NaN (mean is NaN if none is finite)."""
    finite = [v for v in values if not math.isnan(v)]
    mean = sum(finite) / len(finite) if finite else math.nan
    return mean, len(values) - len(finite)


def summarization_metrics(
    hypotheses: Sequence[str],
    references: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    lang: str = "eng_Latn",
    tokenizer: Tokenizer | None = None,
) -> dict[str, float | int]:
    """Corpus means of the word-level metrics of paper Table 10.

    Args:
        hypotheses: generated summaries (plain strings).
        references: gold summaries, for ROUGE-L (skipped when None).
        sources: input documents, for OVL-3 (skipped when None).
        lang: FLORES-200 code for sentence counting.
        tokenizer: default :class:`UnicodeTokenizer`.

    Returns:
        ``rouge_l`` (F, fraction), ``ovl3``, ``rep4``, ``words``, ``sentences`` (means), and
        ``ovl3_undefined`` / ``rep4_undefined``: how many summaries were too short to score.
    """
    out: dict[str, float | int] = {}
    if references is not None:
        out["rouge_l"] = rouge_l(hypotheses, references, tokenizer=tokenizer).f
    if sources is not None:
        if len(sources) != len(hypotheses):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(sources)} sources")
        out["ovl3"], out["ovl3_undefined"] = nanmean(
            [ovl3(h, s, tokenizer=tokenizer) for h, s in zip(hypotheses, sources)]
        )
    out["rep4"], out["rep4_undefined"] = nanmean([rep4(h, tokenizer) for h in hypotheses])
    lengths = [length_stats(h, lang, tokenizer) for h in hypotheses]
    out["words"] = sum(x.words for x in lengths) / max(len(lengths), 1)
    out["sentences"] = sum(x.sentences for x in lengths) / max(len(lengths), 1)
    return out
