"""The retrieval bank of a prepared folder: built once, saved beside the shards, memory-mapped."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from helpers_train import HashCodec, sentence

from encoders.retrieval import ArrowTexts, RetrievalBank
from lcm.data import bank as banks

EOT = "End of text."


def _prepare(root: Path, n_docs: int = 24, offset: int = 0) -> Path:
    """Real ``lcm prepare`` over documents in two languages (every third one French)."""
    from lcm.data.prepare import prepare

    root.mkdir(parents=True, exist_ok=True)
    src = root / "docs.jsonl"
    with open(src, "w") as f:
        for j in range(n_docs):
            lang = "fra_Latn" if j % 3 == 0 else "eng_Latn"
            toks = [(j + k + offset) % 40 for k in range(3 + j % 4)]
            text = " ".join(sentence(t) if lang == "eng_Latn" else f"Jeton {t} ici." for t in toks)
            f.write(json.dumps({"id": f"d{j}", "lang": lang, "text": text}) + "\n")
    out = root / "shards"
    prepare(
        inputs=str(src), output_dir=str(out), codec=HashCodec(), shard_size=7, cache=False,
        progress=False, end_of_text=EOT,
    )  # fmt: skip
    return out


def _shard_sentences(data_dir: Path) -> dict[str, set[str]]:
    want: dict[str, set[str]] = {}
    for path in sorted((data_dir / "shards").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            want.setdefault(row["lang"], set()).update(s for s in row["text_sentences"] if s != EOT)
    return want


def _load(data_dir: Path, codec_id: str = HashCodec.codec_id, **kw):
    return banks.load_bank(data_dir, codec_id, HashCodec.dim, None, EOT, progress=False, **kw)


@pytest.fixture()
def shards(tmp_path):
    return _prepare(tmp_path / "data")


def test_second_load_opens_the_saved_bank_and_decodes_the_same(shards):
    built, how = _load(shards)
    assert how == "built"
    folder = banks.bank_dir(shards, HashCodec.codec_id, None, EOT)
    manifest = folder / "manifest.json"
    stamp, builds = manifest.stat().st_mtime_ns, banks.BUILDS

    opened, how = _load(shards)
    assert how == "opened"
    assert banks.BUILDS == builds  # not rebuilt
    assert manifest.stat().st_mtime_ns == stamp
    assert all(isinstance(opened.sentences(x), ArrowTexts) for x in opened.langs())  # lazy texts

    memory, how = _load(shards, saved=False)
    assert how == "memory" and banks.BUILDS == builds + 1
    # language membership kept: every distinct sentence once, in its document's language
    want = _shard_sentences(shards)
    assert set(want) == {"eng_Latn", "fra_Latn"}
    for bank in (built, opened, memory):
        assert bank.langs() == ["eng_Latn", "fra_Latn"]
        assert {lang: set(bank.sentences(lang)) for lang in bank.langs()} == want
        assert len(bank) == sum(len(v) for v in want.values())
    assert json.loads(manifest.read_text())["languages"] == {k: len(v) for k, v in want.items()}
    queries = torch.randn(50, HashCodec.dim, generator=torch.Generator().manual_seed(0))
    for lang in want:
        s_mem, found_mem = memory.search(queries, lang, k=3)
        s_open, found_open = opened.search(queries, lang, k=3)
        assert found_open == found_mem
        torch.testing.assert_close(torch.from_numpy(s_open), torch.from_numpy(s_mem))
    # a bank sentence decodes to itself, in its own language only
    s = sorted(want["fra_Latn"])[0]
    assert opened.search(HashCodec().encode([s], "fra_Latn"), "fra_Latn")[1] == [[s]]
    assert s not in set(opened.sentences("eng_Latn"))


def test_a_changed_shard_or_another_codec_rebuilds_the_bank(shards, tmp_path):
    _load(shards)
    folder = banks.bank_dir(shards, HashCodec.codec_id, None, EOT)
    # touched (same bytes, new mtime, as after a copy): the checksum vouches for it, no rebuild
    shard = sorted((shards / "shards").glob("*.parquet"))[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert _load(shards)[1] == "opened"

    # another codec id has its own bank
    other, how = _load(shards, codec_id="other-codec-16")
    assert how == "built" and banks.bank_dir(shards, "other-codec-16", None, EOT) != folder

    # the folder is prepared again from other documents: the saved bank is stale
    import shutil

    for p in shards.iterdir():  # everything but the saved banks
        if p.name != "bank":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    shards = _prepare(tmp_path / "data", offset=100)
    reason = banks.stale_reason(folder, shards, HashCodec.codec_id, HashCodec.dim, None, EOT)
    assert reason is not None and "prepared again" in reason
    builds = banks.BUILDS
    bank, how = _load(shards)
    assert how == "built" and banks.BUILDS == builds + 1
    assert {lang: set(bank.sentences(lang)) for lang in bank.langs()} == _shard_sentences(shards)
    assert _load(shards)[1] == "opened"
    assert not [p for p in (shards / "bank").iterdir() if p.name.startswith(".")]  # no leftovers
    (folder / "0.faiss").unlink()  # damaged by hand: rebuilt, not an error
    assert _load(shards)[1] == "built" and _load(shards)[1] == "opened"


def test_a_read_only_data_folder_builds_in_memory_with_one_warning(shards, caplog):
    (shards / "bank").write_text("not a folder")  # any OSError on write (a read-only mount too)
    with caplog.at_level(logging.WARNING, logger="lcm.data.bank"):
        bank, how = _load(shards)
    assert how == "memory" and len(bank) == sum(len(v) for v in _shard_sentences(shards).values())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "not saved" in warnings[0]


def test_saved_texts_span_several_batches_and_an_opened_bank_still_grows(tmp_path, monkeypatch):
    import encoders.retrieval as retrieval

    monkeypatch.setattr(retrieval, "_BATCH", 4)
    sents = [f"Sentence {i}." for i in range(11)]
    vecs = torch.randn(11, 8, generator=torch.Generator().manual_seed(1))
    bank = RetrievalBank(8)
    bank.add(sents, vecs, "eng_Latn")
    bank.save(tmp_path / "b")
    opened = RetrievalBank.open(tmp_path / "b")
    texts = opened.sentences("eng_Latn")
    assert len(texts._batches) == 3
    assert [texts[i] for i in range(11)] == sents and texts[-1] == sents[-1]
    assert list(texts) == sents
    with pytest.raises(IndexError):
        texts[11]
    assert opened.search(vecs, "eng_Latn")[1] == [[s] for s in sents]
    # adding to an opened bank: repeated sentences are still kept once
    opened.add(sents[:2] + ["New one."], torch.randn(3, 8), "eng_Latn")
    assert len(opened) == 12 and opened.count("eng_Latn") == 12
    assert opened.search(vecs[:1], "eng_Latn")[1] == [[sents[0]]]


def test_remove_takes_sentences_and_vectors_out_of_an_opened_bank_not_its_files(shards):
    _load(shards)  # built and saved
    opened, how = _load(shards)
    assert how == "opened"
    saved = {p: p.read_bytes() for p in sorted((shards / "bank").rglob("*")) if p.is_file()}
    texts = list(opened.sentences("eng_Latn"))
    gone, kept = texts[1], texts[len(texts) // 2]
    assert opened.remove([gone, "Never in the bank."], "eng_Latn") == 1
    assert list(opened.sentences("eng_Latn")) == [t for t in texts if t != gone]
    codec = HashCodec()
    _, found = opened.search(codec.encode([gone, kept], "eng_Latn"), "eng_Latn")
    assert found[0][0] != gone and found[1][0] == kept  # the vectors still match their texts
    n_fr = opened.count("fra_Latn")
    assert opened.remove(opened.sentences("fra_Latn"), "fra_Latn") == n_fr > 0
    assert opened.langs() == ["eng_Latn"]  # a language left empty is dropped
    assert opened.remove([kept], "fra_Latn") == 0
    after = {p: p.read_bytes() for p in sorted((shards / "bank").rglob("*")) if p.is_file()}
    assert after == saved  # the saved bank is unchanged


class _BankCodec(HashCodec):
    """HashCodec decoding by retrieval from a bank, as the offline codecs do."""

    def __init__(self) -> None:
        super().__init__()
        self.bank = RetrievalBank(self.dim)

    def add_to_bank(self, sentences, lang: str) -> None:
        self.bank.add(list(sentences), self.encode(list(sentences), lang), lang)

    def decode(self, vectors, lang):
        return [row[0] for row in self.bank.search(vectors, lang)[1]]


def test_eval_banks_leave_references_out_of_the_part_the_training_shards_filled():
    from eval.banks import BankFile, fill_banks

    shard_part = [sentence(k) for k in range(6)]  # what ConceptModel.load fills from shards
    refs = {"eng_Latn": {sentence(1), sentence(4), "Not in the bank."}, "fra_Latn": {"Jeton 2."}}
    files = [BankFile("fra_Latn", "fr.jsonl", ["Jeton 1.", "Jeton 2.", "Jeton 3."])]
    codec = _BankCodec()
    codec.add_to_bank(shard_part, "eng_Latn")
    info = fill_banks(codec, files, refs)
    assert codec.bank.sentences("eng_Latn") == tuple(shard_part[i] for i in (0, 2, 3, 5))
    assert codec.bank.sentences("fra_Latn") == ("Jeton 1.", "Jeton 3.")
    assert info["eng_Latn"] == {
        "files": [], "offered": 0, "references_left_out": 2, "rows_not_used": 0,
        "references_left_out_of_shards": 2, "sentences": 4, "references_in_bank": 0,
    }  # fmt: skip
    assert info["fra_Latn"]["references_left_out"] == 1
    assert info["fra_Latn"]["references_left_out_of_shards"] == 0
    # the reference's own concept now decodes to another sentence
    assert codec.decode(codec.encode([sentence(1)], "eng_Latn"), "eng_Latn") != [sentence(1)]

    closed = _BankCodec()  # references_in_bank: the closed set keeps every reference
    closed.add_to_bank(shard_part, "eng_Latn")
    info = fill_banks(closed, files, refs, references_in_bank=True)
    assert (
        len(closed.bank.sentences("eng_Latn")) == 6 and info["eng_Latn"]["references_in_bank"] == 2
    )
