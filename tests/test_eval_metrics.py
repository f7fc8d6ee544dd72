"""Evaluation metrics against hand-computed values on small inputs (eval/)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from encoders.base import SentenceCodec
from eval import baselines
from eval.metrics import concepts, crosslingual, model_based, text

SQ2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------- test codec
class LookupCodec(SentenceCodec):
    """Sentences with fixed vectors per language; decodes to the nearest known sentence."""

    def __init__(self, table: dict[str, dict[str, list[float]]]) -> None:
        super().__init__()
        self.table = {lang: {s: torch.tensor(v) for s, v in d.items()} for lang, d in table.items()}
        self.langs = tuple(table)
        self.dim = len(next(iter(next(iter(table.values())).values())))
        self.codec_id = "lookup"

    def _encode(self, sentences, lang):
        return torch.stack([self.table[lang][s] for s in sentences]).float()

    def decode(self, vectors, lang):
        names = list(self.table[lang])
        bank = torch.stack([self.table[lang][s] for s in names]).float()  # (K, D)
        return [names[int(i)] for i in torch.cdist(vectors.float(), bank).argmin(dim=1)]


class ToyLM:
    """Word-level LM with known probabilities: p(w) = 0.5 if w is in the prefix, else 0.1."""

    def log_prob(self, prefix: str, text_: str) -> tuple[float, int]:
        seen = set(prefix.split())
        words = text_.split()
        return sum(math.log(0.5 if w in seen else 0.1) for w in words), len(words)


# ------------------------------------------------------------------------------ tokenizer
def test_unicode_tokenizer_keeps_scripts():
    tok = text.UnicodeTokenizer()
    assert tok.tokenize("हिन्दी भाषा") == ["हिन्दी", "भाषा"]  # \w+ would cut at the vowel signs
    assert tok.tokenize("猫は魚を食べない") == ["猫", "は", "魚", "を", "食", "べ", "な", "い"]
    assert tok.tokenize("GPT-4は猫だ。") == ["gpt", "4", "は", "猫", "だ"]
    assert tok.tokenize("Hello, World! Café") == ["hello", "world", "café"]
    assert tok.tokenize("한국어 문장입니다") == ["한국어", "문장입니다"]
    # Thai: one token per character, its above-vowel mark attached (กิน = ก + ิ + น)
    assert tok.tokenize("กิน ข้าว") == ["กิ", "น", "ข้", "า", "ว"]
    assert text.UnicodeTokenizer(stem=True).tokenize("running cats") == ["run", "cat"]


# -------------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_japanese_hand_lcs():
    # hyp 猫が魚を食べた (7 chars), ref 猫は魚を食べない (8); LCS 猫魚を食べ = 5
    r = text.rouge_l(["猫が魚を食べた"], ["猫は魚を食べない"])
    assert r.precision == pytest.approx(5 / 7)
    assert r.recall == pytest.approx(5 / 8)
    assert r.f == pytest.approx(2 / 3)  # 2PR/(P+R) = (50/56)/(75/56)
    # rouge-score's own tokenizer keeps only [a-z0-9]: the pair would score 0
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(["rougeL"]).score("猫は魚を食べない", "猫が魚を食べた")
    assert default["rougeL"].fmeasure == 0.0


def test_rouge_l_english_and_corpus_mean():
    # LCS(the cat sat on the mat, the cat is on the mat) = the cat on the mat = 5 of 6 each
    r = text.rouge_l(["the cat sat on the mat", "a b"], ["The cat is on the mat.", "c d"])
    assert r.per_pair_f == pytest.approx([5 / 6, 0.0])
    assert r.f == pytest.approx(5 / 12)
    with pytest.raises(ValueError):
        text.rouge_l(["a"], [])


# --------------------------------------------------------------------------- OVL-3, REP-4
def _char_rep4(s: str) -> float:
    """Meta's character-level variant, for contrast."""
    grams = [s[i : i + 4] for i in range(len(s) - 3)]
    return (len(grams) - len(set(grams))) / len(grams)


def test_rep4_counts_words_not_characters():
    s = "the cat the cat the cat"
    # word 4-grams: (the cat the cat), (cat the cat the), (the cat the cat): 3, 2 distinct
    assert text.rep4(s) == pytest.approx(1 / 3)
    # character 4-grams: 20, of which 8 distinct -> 0.6; a different number
    assert _char_rep4(s) == pytest.approx(0.6)
    assert text.rep4("one two three four five") == 0.0
    # three words have no 4-gram: undefined at word level, "repetitive" at character level
    assert math.isnan(text.rep4("abcd abcd abcd"))
    assert _char_rep4("abcd abcd abcd") > 0.5


def test_ovl3_both_directions():
    src = "the cat sat on the mat"
    # hypothesis 3-grams: (the cat sat) yes, (cat sat on) yes, (sat on a) no, (on a mat) no
    assert text.ovl3("the cat sat on a mat", src) == pytest.approx(0.5)
    assert text.ovl3("the cat sat", src) == pytest.approx(1.0)
    # the paper's wording: source 3-grams present in the output (1 of 4)
    assert text.ovl3("the cat sat", src, of="source") == pytest.approx(0.25)
    assert math.isnan(text.ovl3("the cat", src))
    # CJK: characters are words, so 3-grams of characters
    assert text.ovl3("猫が魚", "猫が魚を食べた") == pytest.approx(1.0)


def test_length_stats_and_summary_aggregate():
    assert text.length_stats(["One two.", "Three!"]) == text.LengthStats(words=3, sentences=2)
    assert text.length_stats("Hello there. How are you? Fine.") == text.LengthStats(6, 3)
    out = text.summarization_metrics(
        ["the cat sat on a mat", "cat"],
        references=["the cat sat on the mat", "dog"],
        sources=["the cat sat on the mat", "the dog"],
    )
    assert out["ovl3"] == pytest.approx(0.5) and out["ovl3_undefined"] == 1
    assert out["rep4"] == pytest.approx(0.0) and out["rep4_undefined"] == 1
    assert out["words"] == pytest.approx(3.5) and out["sentences"] == pytest.approx(1.0)
    assert out["rouge_l"] == pytest.approx((5 / 6 + 0.0) / 2)


# ---------------------------------------------------------------------------- l2, l2-r, PAR
def test_l2_and_round_trip_l2():
    codec = LookupCodec({"eng_Latn": {"A": [0.0, 0.0], "B": [3.0, 4.0]}})
    gold = torch.tensor([[3.0, 4.0], [3.0, 4.0]])
    pred = torch.tensor([[1.0, 1.0], [2.0, 3.0]])
    assert concepts.l2(pred, gold).tolist() == pytest.approx([math.sqrt(13), SQ2])
    rt = concepts.round_trip_l2(codec, pred, gold, "eng_Latn", batch_size=1)
    # (1,1) decodes to "A" = (0,0): 5 from the gold; (2,3) decodes to "B" itself: 0
    assert rt.sentences == ["A", "B"]
    assert rt.l2.tolist() == pytest.approx([5.0, 0.0])


def test_paraphrasing_hand_values():
    x = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]])  # (1, 4, 2)
    mask = torch.tensor([[True, True, True, False]])
    pred = torch.tensor([[[5.0, 5.0], [2.0, 0.0], [-1.0, 0.0], [1.0, 1.0]]])
    par = concepts.paraphrasing(pred, x, mask)
    assert math.isnan(par[0, 0])  # no context
    # n=1: max CS(pred, x0) = 1; gold (1,1) vs x0: 1/sqrt2
    assert par[0, 1] == pytest.approx(SQ2)
    # n=2: pred (-1,0): max(CS(.,x0)=-1, CS(.,x1)=-1/sqrt2) = -1/sqrt2; gold: max(0, 1/sqrt2)
    assert par[0, 2] == pytest.approx(-1.0)
    assert math.isnan(par[0, 3])  # padding
    # gold opposite to its whole context: max CS = -1, the ratio is undefined (NaN), not -x
    gold = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    opposite = concepts.paraphrasing(torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]), gold)
    assert math.isnan(opposite[0, 1])
    # copy-previous predicts x_{n-1}, so PAR = 1 / max CS(gold, context)
    cp, defined = baselines.copy_previous(x, mask)
    par_cp = concepts.paraphrasing(cp, x, mask, defined)
    assert par_cp[0, 1] == pytest.approx(SQ2) and par_cp[0, 2] == pytest.approx(SQ2)


# -------------------------------------------------------------------------------------- CA
def test_contrastive_accuracy_hand_pool():
    pool = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    pred = torch.tensor([[0.4], [1.7], [5.0], [4.0]])
    gold = torch.arange(4)
    # pred 1.7 (gold 1, d=0.7): 0 is farther (1.7), 2 closer (0.3), 10 farther -> 2/3
    # pred 4.0 (gold 10, d=6): 0, 1, 2 all closer -> 0
    for backend in ("torch", "faiss"):
        ca = concepts.contrastive_accuracy(pred, pool, gold, backend=backend)
        assert ca.tolist() == pytest.approx([1.0, 2 / 3, 1.0, 0.0])
    # the paper's exclusion of the two neighbours (one document, in order)
    seq = concepts.sequence_contrastive_accuracy(
        pred[None], pool[None], torch.ones(1, 4, dtype=torch.bool), backend="torch"
    )
    # pred 1.7: only 10 is left -> 1; pred 4.0: 0 and 1 left, both closer -> 0
    assert seq[0].tolist() == pytest.approx([1.0, 1.0, 1.0, 0.0])


def test_contrastive_accuracy_ties_are_not_farther():
    pool = torch.tensor([[0.0], [0.0], [5.0]])  # row 1 repeats the gold sentence
    for backend in ("torch", "faiss"):
        ca = concepts.contrastive_accuracy(
            torch.tensor([[0.1]]), pool, torch.tensor([0]), None, backend
        )
        assert ca.tolist() == pytest.approx([0.5])
    none_left = concepts.contrastive_accuracy(
        torch.tensor([[0.1]]), pool[:1], torch.tensor([0]), backend="torch"
    )
    assert math.isnan(none_left[0])


def test_faiss_ca_equals_exact_and_a_dense_recount():
    g = torch.Generator().manual_seed(0)
    n = 300
    gold = torch.randn(n, 16, generator=g)
    pred = gold + 0.8 * torch.randn(n, 16, generator=g)
    idx = torch.arange(n)
    exact = concepts.contrastive_accuracy(pred, gold, idx, backend="torch")
    dist = torch.cdist(pred, gold)  # (n, n): the share of other golds farther than one's own
    assert torch.equal(exact, (dist > dist.diagonal()[:, None]).sum(1).float() / (n - 1))
    assert 0.5 < float(exact.mean()) < 1.0  # not a degenerate case
    assert torch.equal(
        concepts.contrastive_accuracy(pred, gold, idx, backend="faiss", chunk=37), exact
    )
    nb = torch.stack([idx - 1, idx + 1], dim=1)
    nb[nb >= n] = -1
    exact_nb = concepts.contrastive_accuracy(pred, gold, idx, nb, backend="torch")
    faiss_nb = concepts.contrastive_accuracy(pred, gold, idx, nb, backend="faiss", chunk=50)
    assert torch.equal(exact_nb, faiss_nb)
    assert not torch.equal(exact_nb, exact)


def test_sequence_ca_pools_the_whole_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 4, generator=g)
    pred = x + 0.5 * torch.randn(2, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    weight = mask.clone()
    weight[:, 0] = False
    seq = concepts.sequence_contrastive_accuracy(pred, x, weight, mask, backend="torch")
    pool = x[mask]  # 8 concepts, document 1 starts at row 5
    exp = concepts.contrastive_accuracy(
        pred[1, 2][None], pool, torch.tensor([7]), torch.tensor([[6, -1]]), backend="torch"
    )
    assert seq[1, 2] == pytest.approx(float(exp[0]))  # neighbour 6 excluded, next is padding
    assert seq[~weight].isnan().all() and not seq[weight].isnan().any()


# -------------------------------------------------------------------------------------- MI
def test_mutual_information_hand():
    # "a b" after context "a c": p(a)=.5, p(b)=.1; without context: .1, .1
    # MI = (ln .5 + ln .1 - 2 ln .1) / 2 = ln(5) / 2
    mi = concepts.mutual_information(ToyLM(), ["a b", "z"], [["x y", "a c"], ["z"]], k=1)
    assert mi.per_sentence == pytest.approx([math.log(5) / 2, math.log(5)])
    assert mi.n_tokens == [2, 1]
    assert mi.value == pytest.approx((math.log(5) + math.log(5)) / 3)  # token-weighted
    mi_k0 = concepts.mutual_information(ToyLM(), ["a b"], [["a c"]], k=0)
    assert mi_k0.per_sentence == [0.0]


def _tiny_gpt2(path):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    GPT2Tokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(path)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=64, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(cfg).save_pretrained(path)


def test_hf_causal_lm_log_prob_matches_chain_rule(tmp_path):
    _tiny_gpt2(tmp_path)
    lm = model_based.load_causal_lm(str(tmp_path))
    lp, n = lm.log_prob("ab\n", "cd")
    assert n == 2  # byte-level vocab without merges: one token per character

    def seq_logp(s):  # log p(tokens 2..L | token 1) from the model's own LM loss
        ids = lm.tokenizer(s, return_tensors="pt").input_ids
        with torch.no_grad():
            return -float(lm.model(ids, labels=ids).loss) * (ids.shape[1] - 1)

    assert lp == pytest.approx(seq_logp("ab\ncd") - seq_logp("ab\n"), abs=1e-4)


# ----------------------------------------------------------------------- all metrics at once
def test_next_concept_metrics_and_missing():
    codec = LookupCodec({"eng_Latn": {"a c": [1.0, 0.0], "a b": [1.0, 1.0], "z": [0.0, 1.0]}})
    x = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    pred = torch.tensor([[[0.0, 0.0], [0.9, 0.8], [0.0, 0.9]]])
    weight = torch.tensor([[False, True, True]])
    sentences = [["a c", "a b", "z"]]
    values, missing = concepts.next_concept_metrics(
        pred, x, weight, codec=codec, lang="eng_Latn", lm=ToyLM(), sentences=sentences
    )
    assert missing == {}
    assert values["l2"] == pytest.approx((math.hypot(0.1, 0.2) + 0.1) / 2)
    assert values["l2_r"] == pytest.approx(0.0)  # both decode to their gold sentence
    # decoded "a b" after "a c": ln5/2 per token (2 tokens); "z" after "a c a b": 0 (1 token)
    assert values["mi"] == pytest.approx(math.log(5) / 3)
    # n=1: gold and both neighbours excluded, nothing left (NaN, skipped); n=2 keeps x0: farther
    assert values["ca"] == pytest.approx(1.0)
    # n=1: CS(pred, x0) / CS(x1, x0); n=2: pred and gold are both closest to x1 at 1/sqrt2
    assert values["par"] == pytest.approx((0.9 / math.hypot(0.9, 0.8) * SQ2 + 1.0) / 2)
    _, missing = concepts.next_concept_metrics(pred, x, weight)
    assert set(missing) == {"l2_r", "mi"} and "codec" in missing["l2_r"]
    _, missing = concepts.next_concept_metrics(pred, x, weight, codec=codec, lang="eng_Latn")
    assert set(missing) == {"mi"} and "GPT-2" in missing["mi"]


# ------------------------------------------------------------------------------- baselines
def test_text_baselines():
    doc = [f"s{i}." for i in range(10)]
    assert baselines.lead_k(doc, 3) == ["s0.", "s1.", "s2."]
    assert baselines.lead_k(doc[:2], 3) == ["s0.", "s1."]
    a = baselines.random_k(doc, 4, seed=7)
    assert a == baselines.random_k(doc, 4, seed=7)  # seeded
    assert a == [doc[i] for i in sorted(random.Random(7).sample(range(10), 4))]
    assert a == sorted(a, key=doc.index) and len(set(a)) == 4  # distinct, in document order
    assert any(baselines.random_k(doc, 4, seed=s) != a for s in range(8))
    assert baselines.random_k(doc[:2], 5, seed=0) == doc[:2]


def test_concept_baselines():
    x = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [5.0, 2.0]], [[2.0, 2.0], [0.0, 0.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    cp, d_cp = baselines.copy_previous(x, mask)
    assert cp[0, 2].tolist() == [3.0, 0.0]
    assert d_cp.tolist() == [[False, True, True], [False, True, False]]
    cm, d = baselines.context_mean(x, mask)
    assert cm[0, 2].tolist() == [2.0, 0.0] and cm[1, 1].tolist() == [2.0, 2.0]
    assert d.tolist() == [[False, True, True], [False, True, False]]
    mean = torch.tensor([0.5, 0.5])
    cst, d = baselines.constant_mean(x, mean, mask)
    assert torch.equal(cst[1, 2], mean) and torch.equal(d, mask)
    xp, m = baselines.pad_documents([x[0], x[1, :2]])
    assert torch.equal(m, mask) and torch.equal(xp[1, 2], torch.zeros(2))
    # copy-previous l2 is the distance between consecutive concepts: 2 and sqrt(8)
    assert concepts.l2(cp[d_cp], x[d_cp]).tolist() == pytest.approx(
        [2.0, math.sqrt(8), math.sqrt(8)]
    )


# ---------------------------------------------------------------------------- model-based
def test_model_based_reports_missing_without_models():
    assert {"cola", "seahorse-q4", "seahorse-q5"} <= set(model_based.model_metric_names())
    res = model_based.compute_model_metric("cola", ["The cat sat."])
    assert res.status == "missing" and res.value is None and res.values is None
    assert "roberta-large-cola-krishna2020" in res.reason and "not available locally" in res.reason
    res = model_based.compute_model_metric("seahorse-q4", ["A cat."], ["The cat sat."])
    assert res.status == "missing" and "seahorse-large-q4" in res.reason
    with pytest.raises(model_based.ModelUnavailable):
        model_based.load_causal_lm("gpt2")
    with pytest.raises(KeyError):
        model_based.compute_model_metric("bleurt", ["x"])
    with pytest.raises(ValueError):  # SEAHORSE without sources is a caller error, not "missing"
        model_based.compute_model_metric("seahorse-q5", ["x"])


def _tiny_bert_tokenizer(path, words):
    from transformers import BertTokenizer

    (path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])
    )
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)


def test_cola_hook_scores_with_a_local_model(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    _tiny_bert_tokenizer(tmp_path, ["the", "cat", "sat", "."])
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=9,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=2,
    )
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path)
    sents = ["the cat sat .", "cat the"]
    res = model_based.compute_model_metric("cola", sents, model=str(tmp_path))
    assert res.status == "ok" and res.reason == ""
    tok = AutoTokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        probs = model(**tok(sents, padding=True, return_tensors="pt")).logits.softmax(-1)
    assert res.values == pytest.approx(probs[:, 0].tolist(), abs=1e-5)
    assert res.value == pytest.approx(float(probs[:, 0].mean()), abs=1e-5)


def test_seahorse_hook_scores_with_a_local_model(tmp_path):
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    words = ["premise", ":", "hypothesis", "the", "cat", "sat", "0", "1"]
    _tiny_bert_tokenizer(tmp_path, words)
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=13,
        d_model=8,
        d_kv=4,
        d_ff=16,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    model = T5ForConditionalGeneration(cfg).eval()
    model.save_pretrained(tmp_path)
    res = model_based.compute_model_metric(
        "seahorse-q4", ["the cat"], ["the cat sat"], model=str(tmp_path)
    )
    assert res.status == "ok"
    tok = AutoTokenizer.from_pretrained(tmp_path)
    enc = tok(["premise: the cat sat hypothesis: the cat"], return_tensors="pt")
    with torch.no_grad():
        dec = torch.zeros(1, 1, dtype=torch.long)
        logits = model(enc["input_ids"], enc["attention_mask"], decoder_input_ids=dec).logits
    assert res.values[0] == pytest.approx(float(logits[0, 0].softmax(-1)[12]), abs=1e-5)


# ---------------------------------------------------------------------------- cross-lingual
def test_bleu_tokenizer_never_downloads(tmp_path, monkeypatch):
    import sacrebleu.utils

    monkeypatch.setattr(sacrebleu.utils, "SACREBLEU_DIR", str(tmp_path))
    zh = crosslingual.bleu_tokenizer("zho_Hans")
    assert (zh.tokenize, zh.label) == ("char", "BLEU[char]") and "never downloaded" in zh.note
    assert crosslingual.bleu_tokenizer("fra_Latn").tokenize == "13a"
    spm = tmp_path / "models" / "flores200sacrebleuspm"
    assert crosslingual.flores200_spm_path() == str(spm)
    spm.parent.mkdir()
    spm.write_bytes(b"")  # present in the cache: spBLEU is used
    assert crosslingual.bleu_tokenizer("zho_Hans") == crosslingual.BleuTokenizer(
        "flores200", "spBLEU", ""
    )


def test_codec_crosslingual_scores(tmp_path, monkeypatch):
    import sacrebleu
    import sacrebleu.utils

    monkeypatch.setattr(sacrebleu.utils, "SACREBLEU_DIR", str(tmp_path))  # force the fallback
    codec = LookupCodec(
        {
            "eng_Latn": {"the cat sleeps": [1.0, 0.0], "a dog runs fast": [0.0, 1.0]},
            "fra_Latn": {"le chat dort": [1.0, 0.0], "un chien court vite": [0.0, 1.0]},
        }
    )
    eng = ["the cat sleeps", "a dog runs fast"]
    res = crosslingual.codec_crosslingual(
        codec, eng, "eng_Latn", ["le chat dort", "un chien court vite"], "fra_Latn"
    )
    assert res.hypotheses == ["le chat dort", "un chien court vite"]
    assert res.scores.bleu == pytest.approx(100.0) and res.scores.chrf == pytest.approx(100.0)
    assert res.scores.tokenizer.label == "BLEU[13a]" and "tok:13a" in res.scores.bleu_signature
    refs = ["le chat dort", "un chien court lentement"]
    worse = crosslingual.codec_crosslingual(codec, eng, "eng_Latn", refs, "fra_Latn", batch_size=1)
    hyps = ["le chat dort", "un chien court vite"]
    assert worse.scores.bleu == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score
    )
    assert worse.scores.chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert worse.scores.bleu < 100 and worse.scores.chrf < 100
    grid = crosslingual.crosslingual_matrix(codec, {"eng_Latn": eng, "fra_Latn": hyps})
    assert len(grid) == 4 and grid[("fra_Latn", "eng_Latn")].hypotheses == eng
