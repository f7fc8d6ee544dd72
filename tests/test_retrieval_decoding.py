"""Retrieval decoding beyond the nearest sentence (encoders.retrieval.RetrievalDecoding): a
minimum-Bayes-risk choice among the k nearest bank sentences, by ROUGE-L or by cosine; the
default stays the nearest sentence, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer

from encoders.minilm import MiniLMCodec
from encoders.retrieval import RetrievalBank, RetrievalDecoding, rouge_l_matrix

LANG = "eng_Latn"
QUERY = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
# One odd sentence nearest the query (cosine 0.90), then a cluster of three that share words and
# directions (cosines 0.88, 0.87, 0.86); 'fast image viewer tool' lies between the other two.
TEXTS = ["zeta gadget", "fast image viewer", "fast image viewer tool", "image viewer for X"]


def _unit_with_cosine(c: float, rest: list[float]) -> list[float]:
    rest_np = np.asarray(rest, dtype=np.float64)
    rest_np = rest_np / np.linalg.norm(rest_np) * math.sqrt(1 - c * c)
    return [c, *rest_np.tolist()]


VECTORS = torch.tensor(
    [
        _unit_with_cosine(0.90, [1, 0, 0]),
        _unit_with_cosine(0.88, [0, 1, 0.6]),
        _unit_with_cosine(0.87, [0, 1, 0]),
        _unit_with_cosine(0.86, [0, 1, -0.6]),
    ],
    dtype=torch.float32,
)


def _bank() -> RetrievalBank:
    bank = RetrievalBank(4)
    bank.add(TEXTS, VECTORS, LANG)
    return bank


def test_the_three_rules_choose_three_different_candidates_where_they_should():
    bank = _bank()
    assert bank.search(QUERY, LANG, k=4)[1] == [TEXTS]  # the bank's order is the cosine order
    assert bank.decode(QUERY, LANG) == ["zeta gadget"]  # nearest: the odd one out
    # weights at t=0.05 are proportional to exp(0, -0.4, -0.6, -0.8) = 1, .670, .549, .449.
    # ROUGE-L: 'zeta gadget' shares no word (utility 1.0 from itself only), while 'fast image
    # viewer' gets .670 + .549 * 6/7 + .449 * 4/7 = 1.397 and beats '... tool' (1.341).
    mbr_rouge = RetrievalDecoding("mbr_rouge", k=4, temperature=0.05)
    assert bank.decode(QUERY, LANG, mbr_rouge) == ["fast image viewer"]
    # cosine: the candidate nearest the weighted centroid is the middle of the cluster
    # (expected cosine .905 against .893 for 'fast image viewer' and .865 for 'zeta gadget')
    mbr_cosine = RetrievalDecoding("mbr_cosine", k=4, temperature=0.05)
    assert bank.decode(QUERY, LANG, mbr_cosine) == ["fast image viewer tool"]
    # without the cluster's third member the middle moves
    assert bank.decode(QUERY, LANG, RetrievalDecoding("mbr_cosine", 3, 0.05)) == [TEXTS[1]]


@pytest.mark.parametrize("rule", ["mbr_rouge", "mbr_cosine"])
def test_a_cold_softmax_or_one_candidate_is_the_nearest_sentence(rule):
    bank = _bank()
    assert bank.decode(QUERY, LANG, RetrievalDecoding(rule, k=4, temperature=1e-4)) == [TEXTS[0]]
    assert bank.decode(QUERY, LANG, RetrievalDecoding(rule, k=1, temperature=1.0)) == [TEXTS[0]]
    # more candidates than sentences: faiss pads the row, the padding is never chosen
    far = RetrievalDecoding(rule, k=50, temperature=0.05)
    assert bank.decode(QUERY, LANG, far) == bank.decode(QUERY, LANG, RetrievalDecoding(rule, 4))


def test_the_default_is_the_nearest_sentence_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(60, 8, generator=gen)
    words = ["alpha", "beta", "gamma", "delta", "tool", "library"]
    picks = torch.randint(0, len(words), (60, 3), generator=gen).tolist()
    texts = [" ".join(words[w] for w in row) + f" {i}" for i, row in enumerate(picks)]
    queries = torch.randn(25, 8, generator=gen)
    bank = RetrievalBank(8)
    bank.add(texts, vectors, LANG)
    nearest = [row[0] for row in bank.search(queries, LANG, k=1)[1]]
    assert bank.decode(queries, LANG) == nearest
    assert bank.decode(queries, LANG, RetrievalDecoding()) == nearest
    for rule in ("mbr_rouge", "mbr_cosine"):
        assert bank.decode(queries, LANG, RetrievalDecoding(rule, k=1)) == nearest
        # with ten candidates a consensus choice differs from the nearest for some queries
        chosen = bank.decode(queries, LANG, RetrievalDecoding(rule, k=10, temperature=1.0))
        assert len(chosen) == 25 and chosen != nearest
    # the offline codec decodes through it, under its own `decoding` attribute
    codec = MiniLMCodec()  # the encoder loads lazily: never here
    assert codec.decoding == RetrievalDecoding()
    codec.bank = bank
    assert codec.decode(queries, LANG) == nearest
    codec.decoding = RetrievalDecoding("mbr_cosine", k=10, temperature=1.0)
    assert codec.decode(queries, LANG) == chosen
    assert MiniLMCodec(decoding=codec.decoding).decoding.k == 10


def test_an_opened_memory_mapped_bank_decodes_the_same(tmp_path):
    _bank().save(tmp_path / "bank")
    opened = RetrievalBank.open(tmp_path / "bank")
    for rule in ("mbr_rouge", "mbr_cosine"):
        decoding = RetrievalDecoding(rule, k=4, temperature=0.05)
        assert opened.decode(QUERY, LANG, decoding) == _bank().decode(QUERY, LANG, decoding)


def test_rouge_utility_is_the_scorers_rouge_l_f1():
    texts = ["Fast C++ library for X-rays", "library for fast x rays, in C", "tool", "a a b", ""]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    matrix = rouge_l_matrix(texts)
    for i, a in enumerate(texts):
        for j, b in enumerate(texts):
            expected = 1.0 if i == j else scorer.score(a, b)["rougeL"].fmeasure
            assert matrix[i, j] == pytest.approx(expected)
    assert matrix[0, 1] == pytest.approx(8 / 13)  # LCS 4 (library for x rays) of 5 and 8 words


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "beam"}, "unknown retrieval decoding rule 'beam'"),
        ({"rule": "mbr_rouge", "k": 0}, "integer >= 1, got 0"),
        ({"rule": "mbr_rouge", "k": 2.5}, "integer >= 1, got 2.5"),
        ({"rule": "mbr_rouge", "k": True}, "integer >= 1, got True"),
        ({"k": 3}, "rule 'nearest' retrieves one sentence \\(k=1\\), got k=3"),
        ({"rule": "mbr_cosine", "k": 5, "temperature": 0}, "finite number > 0, got 0"),
        ({"rule": "mbr_cosine", "k": 5, "temperature": -0.1}, "got -0.1"),
        ({"rule": "mbr_cosine", "k": 5, "temperature": float("inf")}, "got inf"),
        ({"rule": "mbr_cosine", "k": 5, "temperature": float("nan")}, "got nan"),
        ({"rule": "mbr_cosine", "k": 5, "temperature": "0.1"}, "got '0.1'"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RetrievalDecoding(**kwargs)


def test_a_language_without_sentences_is_named_for_every_rule():
    bank = _bank()
    for decoding in (RetrievalDecoding(), RetrievalDecoding("mbr_rouge", k=3)):
        with pytest.raises(ValueError, match="no sentences in 'fra_Latn' \\(it has: eng_Latn\\)"):
            bank.decode(QUERY, "fra_Latn", decoding)
    assert RetrievalDecoding("mbr_rouge", 3, 0.1).as_dict() == {
        "rule": "mbr_rouge",
        "k": 3,
        "temperature": 0.1,
    }


def test_the_multilingual_codecs_decode_under_the_same_option():
    """The offline multilingual codecs take the same ``decoding`` as the English one: the
    nearest sentence of the target language by default, a minimum-Bayes-risk choice on request."""
    from encoders.multilingual import MultilingualCodec

    table = dict(zip(TEXTS, VECTORS.numpy()))

    class TableCodec(MultilingualCodec):
        codec_id = "test-table"
        dim = 4
        langs = ("eng_Latn", "fra_Latn")

        def _embed(self, sentences):
            return np.stack([table[s] for s in sentences])

    codec = TableCodec()
    codec.add_to_bank(TEXTS, "fra_Latn")
    assert codec.decode(QUERY, "fra_Latn") == ["zeta gadget"]
    codec.decoding = RetrievalDecoding("mbr_rouge", k=4, temperature=0.05)
    assert codec.decode(QUERY, "fra_Latn") == ["fast image viewer"]
    chosen = TableCodec(decoding=RetrievalDecoding("mbr_cosine", k=4, temperature=0.05))
    chosen.add_to_bank(TEXTS, "fra_Latn")
    assert chosen.decode(QUERY, "fra_Latn") == ["fast image viewer tool"]
