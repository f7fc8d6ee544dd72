"""The offline default codec (MiniLM + faiss retrieval) and the README's main job."""

from __future__ import annotations

import socket

import pytest
import torch

from encoders import UnknownLanguageError


@pytest.fixture(scope="module")
def minilm():
    from encoders.minilm import MiniLMCodec

    return MiniLMCodec()


def test_minilm_encodes_and_retrieves_by_meaning(minilm):
    bank = [
        "The cat sat on the mat.",
        "Stock markets fell sharply today.",
        "This package provides a library for parsing XML files.",
        "Heavy rain is expected tomorrow.",
    ]
    minilm.add_to_bank(bank + bank[:1])  # repeated sentences are stored once
    assert len(minilm.bank) == 4
    vecs = minilm.encode(bank, "eng_Latn")
    assert vecs.shape == (4, 384)
    torch.testing.assert_close(vecs.norm(dim=1), torch.ones(4))
    assert minilm.decode(vecs, "eng_Latn") == bank  # bank sentences decode to themselves
    queries = ["A kitten is sitting on a rug.", "An XML parser library.", "Rain tomorrow."]
    assert minilm.decode(minilm.encode(queries, "eng_Latn"), "eng_Latn") == [
        bank[0],
        bank[2],
        bank[3],
    ]
    with pytest.raises(UnknownLanguageError, match="fra_Latn"):
        minilm.encode(["Bonjour."], "fra_Latn")  # English-only, and says so


def test_minilm_counts_truncation(minilm):
    assert minilm.count_truncated(["word " * 400, "short."], "eng_Latn") == 1


def _apt_reachable() -> bool:
    try:
        socket.create_connection(("deb.debian.org", 80), timeout=10).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _apt_reachable(), reason="Debian mirror not reachable")
def test_main_job_end_to_end(tmp_path):
    from lcm.demo import main

    result = main(
        out_dir=str(tmp_path), docs_per_split=60, codec="minilm", train_steps=30, show=2, n_eval=10
    )
    assert result["prepare"]["train"]["documents"] == 60
    assert result["prepare"]["train"]["rejected"] == 0
    assert (tmp_path / "shards" / "train" / "normalizer.pt").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert len(result["samples"]) == 10
    # held-out references are left out of the bank before scoring, and the report says so
    assert result["bank"]["references_left_out"] >= 0 and result["bank"]["sentences"] >= 60
    # retrieval decoding: summaries are made of training synopsis sentences, never empty
    import json

    rows = (tmp_path / "data" / "debian_descriptions.en.train.jsonl").read_text().splitlines()
    synopses = [json.loads(r)["summary"] for r in rows]
    assert all(any(s["generated"].startswith(x[:20]) for x in synopses) for s in result["samples"])
    assert 0 <= result["rouge_l"]["model"] <= 100 and result["rouge_l"]["documents"] == 10
    # Another family's recipe on the same data and shards, in its own run folder.
    refiner = main(
        out_dir=str(tmp_path),
        docs_per_split=60,
        codec="minilm",
        train_steps=20,
        show=1,
        n_eval=5,
        recipe="configs/refiner/tiny_sft.yaml",
        run_name="run_refiner",
    )
    path = tmp_path / "run_refiner" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    assert any(".core.0.cross_attn." in k for k in ckpt["state_dict"])  # the refiner's core
    assert (tmp_path / "report_run_refiner.json").exists() and (tmp_path / "report.json").exists()
    for key in ("documents", "sentences"):  # the same data and shards
        assert refiner["prepare"]["train"][key] == result["prepare"]["train"][key]
    assert len(refiner["samples"]) == 5
