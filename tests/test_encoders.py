"""Codecs: the tiny SONAR through the by-name card path, the missing-weights failure, the cache."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from encoders import EmbeddingCache, UnknownLanguageError, validate_lang
from encoders.langs import SONAR_LANGS

SENTENCES = [
    "the cat sat on the mat.",
    "a red bird sings today.",
    "big river.",
    "the cat sat on the mat.",
]


def test_sonar_langs_are_flores200():
    assert len(SONAR_LANGS) == 202 and len(set(SONAR_LANGS)) == 202
    assert {"eng_Latn", "fra_Latn", "zho_Hans", "zho_Hant", "arb_Arab"} <= set(SONAR_LANGS)


@pytest.mark.parametrize(
    "bad, hint", [("fr_Latn", "fra_Latn"), ("eng_latn", "eng_Latn"), ("english", None), ("", None)]
)
def test_unknown_language_suggests_close_codes(bad, hint):
    with pytest.raises(UnknownLanguageError) as ex:
        validate_lang(bad, what="docs.jsonl row 3")
    msg = str(ex.value)
    assert "docs.jsonl row 3" in msg
    if hint:
        assert hint in msg.split("did you mean")[1]


def test_tiny_sonar_by_card_name_matches_saved_weights(tiny_sonar, tiny_codec):
    """The by-name path loads exactly the weights the card points to."""
    codec = tiny_codec.load()
    saved = torch.load(tiny_sonar.card_dir / "tiny_sonar_encoder.pt", weights_only=True)["model"]
    loaded = codec.encoder.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert codec.dim == 64
    assert codec.langs == ("eng_Latn", "fra_Latn")  # read from the card, not hard-coded
    assert codec.codec_id.endswith("tiny_sonar_encoder.pt")


def test_tiny_sonar_round_trip_and_stock_pipeline_agree(tiny_codec):
    from sonar.inference_pipelines.text import TextToEmbeddingModelPipeline

    emb = tiny_codec.encode(SENTENCES, "eng_Latn")
    assert emb.shape == (4, 64) and emb.dtype == torch.float32
    assert torch.equal(emb[0], emb[3])  # a repeated sentence gets the same vector
    stock = TextToEmbeddingModelPipeline(tiny_codec.encoder, tiny_codec.tokenizer).predict(
        SENTENCES, source_lang="eng_Latn", batch_size=2
    )
    torch.testing.assert_close(emb, stock, atol=1e-5, rtol=1e-5)
    texts = tiny_codec.decode(emb, "fra_Latn")
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    with pytest.raises(UnknownLanguageError, match="deu_Latn"):
        tiny_codec.encode(["hello"], "deu_Latn")  # the tiny card only lists eng/fra


def test_trained_tiny_sonar_reconstructs_text(tmp_path):
    """After a short autoencoder training, decode(encode(s)) gives back real words."""
    import random

    from encoders.tiny_sonar import build_tiny_sonar

    rng = random.Random(1)
    corpus = [" ".join(rng.choices(["red", "cat", "sun", "tree"], k=3)) + "." for _ in range(60)]
    build_tiny_sonar(
        tmp_path,
        corpus=corpus,
        name="tiny_ae",
        model_dim=32,
        num_layers=1,
        vocab_size=40,
        train_steps=300,
        seed=1,
    )
    # load by name in a fresh process: fairseq2's asset store is fixed once per process
    code = f"""
import os
os.environ["FAIRSEQ2_USER_ASSET_DIR"] = {str(tmp_path)!r}
from encoders.sonar import SonarCodec
c = SonarCodec("tiny_ae_encoder", "tiny_ae_decoder", beam_size=1, decode_max_len=12)
src = {corpus[:8]!r}
out = c.decode(c.encode(src, "eng_Latn"), "eng_Latn")
print(sum(a == b for a, b in zip(src, out)))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert int(res.stdout.strip().splitlines()[-1]) >= 6  # of 8 sentences exactly reconstructed


def test_missing_real_weights_fail_fast_with_instructions(tmp_path):
    """No network: the real SONAR fails in seconds and says how to get the weights."""
    code = """
from encoders.sonar import SonarCodec, SonarWeightsUnavailable
try:
    SonarCodec().encode(["hello"], "eng_Latn")
except SonarWeightsUnavailable as ex:
    print(ex)
"""
    t0 = time.time()
    env = {"FAIRSEQ2_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert time.time() - t0 < 120
    assert res.returncode == 0, res.stderr[-2000:]
    msg = res.stdout
    assert "text_sonar_basic_encoder" in msg
    assert "FAIRSEQ2_USER_ASSET_DIR" in msg and "sonar_text_encoder.pt" in msg


def test_unknown_card_name_fails_at_construction():
    from encoders.sonar import SonarCodec, SonarWeightsUnavailable

    with pytest.raises(SonarWeightsUnavailable, match="no_such_encoder"):
        SonarCodec("no_such_encoder")


def test_cache_avoids_reencoding(hash_codec, tmp_path):
    hash_codec.cache = EmbeddingCache(tmp_path / "c.sqlite")
    a = hash_codec.encode(["x y.", "z.", "x y."], "eng_Latn")
    assert hash_codec.n_encoded == 2  # the duplicate was encoded once
    b = hash_codec.encode(["z.", "new one."], "eng_Latn")
    assert hash_codec.n_encoded == 3  # only "new one." was new
    torch.testing.assert_close(a[1], b[0], rtol=0, atol=0)
    # the cache persists: a new codec with the same id reads it back without encoding
    from conftest import HashCodec

    other = HashCodec()
    other.cache = EmbeddingCache(tmp_path / "c.sqlite")
    c = other.encode(["x y.", "z."], "eng_Latn")
    assert other.n_encoded == 0 and torch.equal(c, a[:2])
    # the key includes the language
    other.encode(["z."], "fra_Latn")
    assert other.n_encoded == 1


def test_truncation_is_counted(tiny_codec):
    long = " ".join(["cat"] * 200) + "."  # well past the tiny model's 64 tokens
    tiny_codec.max_seq_len = 64
    assert tiny_codec.count_truncated([long, "cat."], "eng_Latn") == 1
    before = tiny_codec.n_truncated
    tiny_codec.encode([long + " sun."], "eng_Latn")
    assert tiny_codec.n_truncated == before + 1


def test_retrieval_bank_keeps_each_sentence_once_across_calls():
    import torch

    from encoders.retrieval import RetrievalBank

    bank = RetrievalBank(4)
    v = torch.eye(4)
    bank.add(["a", "b"], v[:2], "eng_Latn")
    bank.add(["b", "c", "c"], v[1:4], "eng_Latn")  # b seen before, c twice in one call
    bank.add(["a"], v[:1], "fra_Latn")  # the same text in another language is another entry
    assert len(bank) == 4
    _, found = bank.search(v[2:3], "eng_Latn", k=3)
    assert found == [["c", "a", "b"]] or found[0][0] == "c"
