"""`lcm prepare`: documents -> concept shards, with rejects, resume and a 2-process run."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import make_sentence

from lcm.data.prepare import prepare
from lcm.normalizer import RobustNormalizer

ROOT = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, n: int = 300, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = " ".join(make_sentence(rng) for _ in range(rng.randint(2, 7)))
        rows.append(
            {
                "id": f"doc{i}",
                "text": text,
                "lang": rng.choice(["eng_Latn", "fra_Latn"]),
                "summary": make_sentence(rng),
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def load_shards(out: Path) -> datasets.Dataset:
    return datasets.load_dataset(
        "parquet", data_files=str(out / "shards" / "*.parquet"), split="train"
    )


def shard_digests(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "shards").glob("*.parquet"))
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    return path, write_corpus(path)


def test_prepare_few_hundred_docs_with_tiny_sonar(corpus, tiny_codec, tmp_path):
    path, rows = corpus
    summary = prepare(
        str(path),
        str(tmp_path / "out"),
        codec=tiny_codec,
        target_fields=["summary"],
        shard_size=64,
        progress=False,
    )
    assert summary["documents"] == 300 and summary["rejected"] == 0
    assert summary["shards"] == 5
    assert tiny_codec.cache is None  # prepare's own cache is detached from the caller's codec
    ds = load_shards(tmp_path / "out")
    assert ds.num_rows == 300
    assert sorted(ds["id"]) == sorted(r["id"] for r in rows)  # no document lost or duplicated
    by_id = {r["id"]: r for r in rows}
    n_sent = 0
    for rec in ds:
        assert len(rec["text_sentences"]) == len(
            rec["text_embeddings"]
        )  # sentence count == vectors
        assert len(rec["summary_sentences"]) == len(rec["summary_embeddings"]) == 1
        assert " ".join(rec["text_sentences"]) == by_id[rec["id"]]["text"]
        assert rec["summary"] == by_id[rec["id"]]["summary"]
        assert rec["lang"] == by_id[rec["id"]]["lang"]
        n_sent += len(rec["text_sentences"])
    assert summary["sentences"] == n_sent
    # the stored vectors are the codec's vectors for those sentences
    rec = ds[0]
    again = tiny_codec.encode(rec["text_sentences"], rec["lang"])
    torch.testing.assert_close(torch.tensor(rec["text_embeddings"]), again)
    # the normalizer: real 25th/50th/75th percentiles of the sampled vectors
    norm = RobustNormalizer.load(tmp_path / "out" / "normalizer.pt")
    allv = np.concatenate([np.asarray(r, dtype=np.float32) for r in ds["text_embeddings"]])
    assert summary["normalizer_fitted_on"] == allv.shape[0]
    np.testing.assert_allclose(norm.center.numpy(), np.median(allv, axis=0), rtol=1e-5, atol=1e-6)
    iqr = np.percentile(allv, 75, axis=0) - np.percentile(allv, 25, axis=0)
    np.testing.assert_allclose(norm.scale.numpy(), iqr, rtol=1e-5, atol=1e-6)
    z = norm.normalize(torch.from_numpy(allv))
    assert abs(float(z.median())) < 0.1  # centred
    torch.testing.assert_close(norm.denormalize(z), torch.from_numpy(allv), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "txt"])
def test_other_input_formats(fmt, hash_codec, tmp_path):
    rng = random.Random(3)
    texts = [" ".join(make_sentence(rng) for _ in range(3)) for _ in range(5)]
    if fmt == "txt":
        for i, t in enumerate(texts):
            (tmp_path / f"doc{i}.txt").write_text(t.replace(". ", ".\n\n", 1))
        inputs = str(tmp_path / "*.txt")
    else:
        import pandas as pd

        df = pd.DataFrame({"id": [f"d{i}" for i in range(5)], "text": texts})
        inputs = str(tmp_path / f"docs.{fmt}")
        df.to_parquet(inputs) if fmt == "parquet" else df.to_csv(inputs, index=False)
    s = prepare(inputs, str(tmp_path / "out"), codec=hash_codec, progress=False, lang_field=None)
    assert s["documents"] == 5 and s["sentences"] == 15 and s["rejected"] == 0


def test_bad_rows_are_rejected_with_file_row_and_reason(hash_codec, tmp_path):
    good = {"id": "ok", "text": "A fine document. It has two sentences.", "lang": "eng_Latn"}
    rows = [
        good,
        {"id": "blank", "text": "   \n ", "lang": "eng_Latn"},
        {"id": "nofield", "lang": "eng_Latn"},
        {"id": "badlang", "text": "Some text.", "lang": "fr_Latn"},
        {"id": "nan", "text": "Fine sentence. NaN! sentence.", "lang": "eng_Latn"},
        {"id": "ok", "text": "Same id again.", "lang": "eng_Latn"},
        {"id": "number", "text": 12345, "lang": "eng_Latn"},
        {"id": "nolang", "text": "Uses the default language."},
    ]
    raw = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    raw += b'{"id": "latin1", "text": "caf\xe9 au lait."}\n'  # not UTF-8
    (tmp_path / "docs.jsonl").write_bytes(raw)
    (tmp_path / "broken.csv").write_bytes(b"id,text\na,caf\xe9\n")  # csv with bad bytes: whole file
    summary = prepare(
        [str(tmp_path / "docs.jsonl"), str(tmp_path / "broken.csv")],
        str(tmp_path / "out"),
        codec=hash_codec,
        shard_size=2,
        progress=False,
    )
    rejects = [
        json.loads(line)
        for f in sorted((tmp_path / "out" / "rejects").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    got = {(Path(r["file"]).name, r["row"]): (r["kind"], r["reason"]) for r in rejects}
    assert got[("docs.jsonl", 1)][0] == "empty"
    assert got[("docs.jsonl", 2)] == ("missing_field", "missing field 'text'")
    assert got[("docs.jsonl", 3)][0] == "unknown_lang" and "fra_Latn" in got[("docs.jsonl", 3)][1]
    assert got[("docs.jsonl", 4)] == ("non_finite", "NaN/inf embedding in field 'text' sentence 1")
    assert got[("docs.jsonl", 5)][0] == "duplicate_id"
    assert got[("docs.jsonl", 6)][0] == "not_text" and "int" in got[("docs.jsonl", 6)][1]
    assert got[("docs.jsonl", 8)][0] == "non_utf8"
    assert got[("broken.csv", 0)][0] == "non_utf8"
    assert len(rejects) == 8
    ds = load_shards(tmp_path / "out")
    assert sorted(ds["id"]) == ["nolang", "ok"]
    assert ds.filter(lambda r: r["id"] == "nolang")["lang"] == ["eng_Latn"]
    # every input row is accounted for: 10 rows = 2 kept + 8 rejected
    assert summary["documents"] + summary["rejected"] == 10
    assert summary["rejected_by_reason"]["non_utf8"] == 2


def test_long_sentences_are_resplit_and_counted(hash_codec, tmp_path):
    long = "word " * 120 + "end."
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "a", "text": "Short one. " + long}) + "\n")
    s = prepare(
        str(tmp_path / "d.jsonl"),
        str(tmp_path / "out"),
        codec=hash_codec,
        max_sentence_chars=200,
        progress=False,
    )
    ds = load_shards(tmp_path / "out")
    assert s["long_sentences_resplit"] == 1
    assert all(len(x) <= 200 for x in ds[0]["text_sentences"])
    assert " ".join(ds[0]["text_sentences"]) == ("Short one. " + long).strip()


def test_a_finished_folder_keeps_no_copy_of_the_inputs_and_reruns_to_the_same_shards(
    hash_codec, tmp_path
):
    rows = [{"id": str(i), "text": f"Document {i} starts. It ends here."} for i in range(12)]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    first = prepare(str(src), str(out), codec=hash_codec, shard_size=5, progress=False)
    digests = shard_digests(out)
    assert first["documents"] == 12 and len(digests) == 3
    assert not (out / ".hf_cache").exists()  # the Arrow copy of the inputs is gone
    again = prepare(str(src), str(out), codec=hash_codec, shard_size=5, progress=False)
    assert again["documents"] == 12 and shard_digests(out) == digests
    assert not (out / ".hf_cache").exists()


def test_changed_settings_are_refused(hash_codec, tmp_path, corpus):
    prepare(str(corpus[0]), str(tmp_path / "out"), codec=hash_codec, shard_size=100, progress=False)
    with pytest.raises(ValueError, match="shard_size"):
        prepare(
            str(corpus[0]), str(tmp_path / "out"), codec=hash_codec, shard_size=50, progress=False
        )


SLOW_PREPARE = """
import sys, time
from encoders.sonar import SonarCodec
from lcm.data.prepare import prepare

class SlowSonar(SonarCodec):  # slow enough that the test can kill it mid-run
    def _encode(self, sentences, lang):
        time.sleep(0.25)
        return super()._encode(sentences, lang)

codec = SlowSonar("tiny_sonar_encoder", "tiny_sonar_decoder", batch_max_tokens=256)
prepare(sys.argv[1], sys.argv[2], codec=codec, target_fields=["summary"], shard_size=25,
        progress=False)
"""


def test_kill_and_resume_gives_identical_shards(corpus, tiny_sonar, tiny_codec, tmp_path):
    path, rows = corpus
    ref = prepare(
        str(path),
        str(tmp_path / "ref"),
        codec=tiny_codec,
        target_fields=["summary"],
        shard_size=25,
        progress=False,
    )
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_PREPARE, str(path), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "shards").glob("*.parquet"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list((out / "shards").glob("*.parquet")))
    assert 3 <= n_before < ref["shards"]  # really interrupted mid-run
    resumed = prepare(
        str(path),
        str(out),
        codec=tiny_codec,
        target_fields=["summary"],
        shard_size=25,
        progress=False,
    )
    assert shard_digests(out) == shard_digests(tmp_path / "ref")  # byte-identical shards
    for key in ("documents", "sentences", "rejected", "shards"):
        assert resumed[key] == ref[key]
    assert (out / "normalizer.pt").read_bytes() == (tmp_path / "ref" / "normalizer.pt").read_bytes()


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(corpus, tiny_sonar, tiny_codec, tmp_path):
    path, _ = corpus
    single = prepare(
        str(path), str(tmp_path / "one"), codec=tiny_codec, shard_size=40, progress=False
    )
    cmd = [
        sys.executable,
        "-m",
        "lcm.cli",
        "prepare",
        "--inputs",
        str(path),
        "--output_dir",
        str(tmp_path / "two"),
        "--shard_size",
        "40",
        "--codec",
        "encoders.sonar.SonarCodec",
        "--codec.encoder",
        tiny_sonar.encoder,
        "--codec.decoder",
        tiny_sonar.decoder,
        "--codec.card_dir",
        str(tiny_sonar.card_dir),
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--progress",
        "false",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    stats = [json.loads(p.read_text()) for p in sorted((tmp_path / "two" / "stats").glob("*.json"))]
    assert len(stats) == single["shards"] == 8
    a = load_shards(tmp_path / "one").sort("id")
    b = load_shards(tmp_path / "two").sort("id")
    assert a["id"] == b["id"] and a["text_sentences"] == b["text_sentences"]
    for x, y in zip(a["text_embeddings"], b["text_embeddings"]):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["documents"] == single["documents"] == 300


def test_default_codec_without_sonar_weights_stops_at_once_and_leaves_nothing(
    corpus, tmp_path, monkeypatch, capsys
):
    """`lcm prepare` without --codec means SONAR; offline it stops before making the output
    folder, in one line that names the offline codec's flag, so the corrected rerun works."""
    import encoders.sonar as sonar
    from lcm.cli import main

    class Unreachable(sonar.SonarCodec):
        def __init__(self, *args, **kwargs):
            pass

        def load(self):
            raise sonar.SonarWeightsUnavailable("cannot download text_sonar_basic_encoder")

    monkeypatch.setattr(sonar, "SonarCodec", Unreachable)
    out = tmp_path / "shards"
    with pytest.raises(SystemExit) as ex:
        main(["prepare", f"--inputs={corpus[0]}", f"--output_dir={out}"])
    assert ex.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--codec encoders.minilm.MiniLMCodec" in err[0]
    assert "cannot download text_sonar_basic_encoder" in err[0]
    assert not out.exists()
    with pytest.raises(FileNotFoundError):  # a wrong input path leaves nothing either
        prepare(str(tmp_path / "missing.jsonl"), str(out), codec=Unreachable())
    assert not out.exists()
