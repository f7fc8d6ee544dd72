"""The evaluation runner (eval/run.py) end to end on the shipped Debian slice (eval/data/).

Two tiny summarizers are trained for a few steps on shipped documents that are not evaluated:
one with the offline MiniLM codec (English; its codec comes from the checkpoint's shards) and one
with the tiny SONAR fixture (en and fr, so eng_Latn -> fra_Latn runs). The tests check that the
outputs agree with each other and with hand recomputations, that a rerun resumes, and that bad
inputs fail with messages that name the file, row, field or language.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from encoders import UnknownLanguageError
from eval.data import debian_file
from eval.inputs import parse_pair
from eval.metrics import text as tm
from eval.report import fmt
from eval.run import evaluate, main
from lcm.cli import run
from lcm.data.prepare import prepare
from lcm.splitting import SentenceSplitter

REPO = Path(__file__).resolve().parents[1]
N_DOCS = 5  # documents evaluated per pair (the first ones of the shipped files)
TRAIN = slice(40, 64)  # shipped rows the tiny models train on (never evaluated)
HELD = slice(5, 9)  # shipped rows prepared as held-out concept shards
PNG = b"\x89PNG\r\n\x1a\n"


def _rows(lang: str) -> list[dict]:
    return [json.loads(x) for x in debian_file(lang).read_text().splitlines()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _prepare_and_fit(root: Path, codec, langs: list[str]) -> tuple[Path, Path]:
    """Train shards + held-out shards with ``codec``, and a 3-step Base-LCM summarizer."""
    root.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", TRAIN), ("held", HELD)):
        rows = [r for lang in langs for r in _rows(lang)[part]]
        for r in rows:
            r["id"] = f"{r['id']}.{r['lang']}"  # ids are unique per shard folder
        prepare(
            str(_write(root / f"{name}.jsonl", rows)),
            str(root / name),
            codec=codec,
            target_fields=["summary"],
            end_of_text="End of text.",
            shard_size=64,
            cache=False,
            progress=False,
        )
    run(
        [
            "fit",
            "--config", "configs/trainer/default.yaml",
            "--config", "configs/base_lcm/tiny_sft.yaml",
            f"--data.data_dir={root / 'train'}",
            f"--trainer.default_root_dir={root / 'run'}",
            "--data.val_fraction=0.1",
            "--trainer.max_steps=3",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )  # fmt: skip
    return root / "run" / "checkpoints" / "last.ckpt", root / "held"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lcm"])  # LightningCLI reads sys.argv otherwise


@pytest.fixture(scope="module")
def minilm_model(tmp_path_factory):
    from encoders.minilm import MiniLMCodec

    sys_argv, sys.argv = sys.argv, ["lcm"]
    try:
        return _prepare_and_fit(tmp_path_factory.mktemp("minilm"), MiniLMCodec(), ["en"])
    finally:
        sys.argv = sys_argv


@pytest.fixture(scope="module")
def minilm_eval(minilm_model, tmp_path_factory):
    """Default data (all shipped files) and pairs; the codec comes from the checkpoint."""
    ckpt, held = minilm_model
    out = tmp_path_factory.mktemp("minilm-eval")
    kwargs = dict(
        checkpoints=[str(ckpt)],
        out_dir=str(out),
        settings=[{"max_new_concepts": 1}, {"max_new_concepts": 2}],
        max_documents=N_DOCS,
        concept_dir=str(held),
        batch_size=2,
        progress=False,
    )
    return out, evaluate(**kwargs), kwargs


def _table(report: str, heading: str) -> list[list[str]]:
    """Cells of the first markdown table after ``heading``."""
    lines = report[report.index(heading) :].splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [r for r in rows if not set("".join(r)) <= {"-"}]


def test_minilm_outputs_are_consistent(minilm_eval):
    out, res, _ = minilm_eval
    for name in ("results.json", "report.md", "documents.jsonl"):
        assert (out / name).is_file()
    for plot in ("plot_rouge_l_by_pair.png", "plot_rouge_l_by_setting.png"):
        assert (out / plot).read_bytes()[:8] == PNG and plot in res["plots"]
    saved = json.loads((out / "results.json").read_text())
    assert saved == {k: v for k, v in res.items() if k != "run"}
    # MiniLM is English-only: the default pairs for fr and de are listed, not silently skipped
    assert res["config"]["pairs"] == ["eng_Latn->eng_Latn"]
    assert {p["pair"] for p in res["data"]["pairs_not_run"]} == {
        "fra_Latn->fra_Latn",
        "deu_Latn->deu_Latn",
    }
    rows = res["summarization"]["eng_Latn->eng_Latn"]
    assert [(r["system"], r["setting"]) for r in rows] == [
        ("run/last", "max_new_concepts=1"),
        ("run/last", "max_new_concepts=2"),
        ("doc-mean", "-"),
        ("lead-1", "-"),
        ("lead-3", "-"),
        ("random-3", "-"),
    ]
    assert all(r["documents"] == N_DOCS and r["failed"] == 0 for r in rows)
    # at most one generated concept, so at most one sentence per summary
    assert 0 < rows[0]["sentences"] <= 1 < rows[1]["sentences"] <= 2
    # model-based metrics are missing here, with the reason, not a made-up number
    for metric in ("cola", "seahorse-q4", "seahorse-q5"):
        assert all(r[metric] == "missing" for r in rows)
        assert "not available locally" in res["missing_metrics"][metric]

    # every number of the markdown table is the JSON number
    report = (out / "report.md").read_text()
    table = _table(report, "### eng_Latn -> eng_Latn")
    cols = res["metric_columns"]
    labels = ["ROUGE-L", "OVL-3", "REP-4", "words", "sentences", "CoLA", "SH-4", "SH-5"]
    assert table[0][4:] == [*labels, "stopped by"]
    for cells, row in zip(table[1:], rows, strict=True):
        assert cells[:4] == [row["system"], row["setting"], str(row["documents"]), "0"]
        assert cells[4:-1] == [fmt(row[c]) for c in cols]
    # one concept at most: every summary of the first setting hits the length cap
    assert rows[0]["stop_reasons"] == {"max_length": N_DOCS}
    assert table[1][-1] == f"max_length {N_DOCS}" and table[3][-1] == "-"
    assert "SH-5 missing" in report and "fra_Latn->fra_Latn" in report


def test_lead_and_random_baselines_match_hand_computation(minilm_eval):
    _, res, _ = minilm_eval
    rows = {r["system"]: r for r in res["summarization"]["eng_Latn->eng_Latn"]}
    docs = _rows("en")[:N_DOCS]
    split = SentenceSplitter(max_chars=0)
    lead3 = [" ".join(split.split(d["text"], "eng_Latn")[:3]) for d in docs]
    hand = tm.rouge_l(lead3, [d["summary"] for d in docs]).f
    assert rows["lead-3"]["rouge_l"] == pytest.approx(hand, abs=1e-12)
    words = sum(len(tm.tokenize(x)) for x in lead3) / N_DOCS
    assert rows["lead-3"]["words"] == pytest.approx(words)
    # a leading run of sentences copies the source: every 3-gram is found there
    assert rows["lead-1"]["ovl3"] == rows["lead-3"]["ovl3"] == 1.0
    assert rows["random-3"]["sentences"] == 3.0  # every shipped document has >= 3 sentences
    assert rows["lead-1"]["rouge_l"] > rows["run/last"]["rouge_l"]  # a 3-step model is no match


def test_teacher_forced_metrics_and_codec_check(minilm_eval):
    out, res, _ = minilm_eval
    block = res["concepts"]["run/last"]["groups"]["eng_Latn"]
    systems = {r["system"]: r for r in block["systems"]}
    assert list(systems) == ["run/last", "copy-previous", "context-mean", "mean-concept"]
    assert block["documents"] == HELD.stop - HELD.start
    assert "gpt2" in res["concepts"]["run/last"]["missing"]["mi"]
    # copy-previous l2 by hand from the held-out shards: [description, synopsis] concepts, each
    # target concept (synopsis + end of text) predicted by the concept before it
    dists = []
    concept_dir = Path(out) / res["config"]["concept_dir"]  # recorded relative to the results
    for f in sorted((concept_dir / "shards").glob("*.parquet")):
        t = pq.read_table(f).to_pydict()
        for src, tgt in zip(t["text_embeddings"], t["summary_embeddings"]):
            x = torch.tensor(src + tgt, dtype=torch.float64)
            dists += (x[len(src) :] - x[len(src) - 1 : -1]).norm(dim=1).tolist()
    assert systems["copy-previous"]["positions"] == len(dists)
    assert systems["copy-previous"]["l2"] == pytest.approx(sum(dists) / len(dists), rel=1e-5)
    for r in systems.values():
        assert 0.0 <= r["ca"] <= 1.0 and r["l2"] > 0 and r["l2_r"] >= 0
        assert r["mi"] is None
    report = (out / "report.md").read_text()
    table = _table(report, "### run/last: eng_Latn")
    assert table[0] == ["system", "positions", "l2", "l2-r", "PAR", "CA", "MI"]
    for cells in table[1:]:
        r = systems[cells[0]]
        assert cells[1:] == [
            str(r["positions"]),
            *[fmt(r[m]) for m in ("l2", "l2_r", "par", "ca")],
            "missing",
        ]
    check = res["codec_check"]["run/last"]["pairs"]["eng_Latn->eng_Latn"]
    assert check["sentences"] == N_DOCS and 0 <= check["bleu"] <= 100 and 0 < check["chrf"] <= 100


def _same_run(a: dict, b: dict) -> bool:
    """Equal results apart from the run statistics and the output folder."""

    def strip(r: dict) -> dict:
        r = {k: v for k, v in r.items() if k != "run"}
        return {**r, "config": {k: v for k, v in r["config"].items() if k != "out_dir"}}

    return strip(a) == strip(b)


def test_rerun_resumes_and_reproduces(minilm_eval, tmp_path):
    out, first, kwargs = minilm_eval
    work = out.parent / f"{out.name}-copy"  # beside it: its relative paths name the same files
    shutil.copytree(out, work)
    kwargs = {**kwargs, "out_dir": str(work)}
    report = (work / "report.md").read_text()
    again = evaluate(**kwargs)
    assert again["run"]["computed"] == 0
    assert (work / "report.md").read_text() == report

    # "kill" the run: drop the last 3 records and leave half of the one before them
    lines = (work / "documents.jsonl").read_text().splitlines(keepends=True)
    dropped = [json.loads(x) for x in lines[-4:]]
    (work / "documents.jsonl").write_text("".join(lines[:-4]) + lines[-4][: len(lines[-4]) // 2])
    resumed = evaluate(**kwargs)
    assert resumed["run"]["computed"] == 4 and resumed["run"]["partial_lines_ignored"] == 1
    assert (work / "report.md").read_text() == report
    assert _same_run(resumed, first)
    store = [json.loads(x) for x in (work / "documents.jsonl").read_text().splitlines()[-4:]]
    assert [r["key"] for r in store] == [r["key"] for r in dropped]
    assert [r.get("hypothesis") for r in store] == [r.get("hypothesis") for r in dropped]


def test_codec_without_the_language_is_a_clear_error(minilm_model, tmp_path):
    ckpt, _ = minilm_model
    with pytest.raises(
        UnknownLanguageError, match=r"eng_Latn->fra_Latn.*does not support fra_Latn"
    ):
        evaluate([str(ckpt)], out_dir=str(tmp_path), pairs=["eng_Latn->fra_Latn"], progress=False)


@pytest.fixture(scope="module")
def sonar_codec(tiny_sonar):
    """The tiny SONAR, cutting real sentences at its 64 positions."""
    from encoders.sonar import SonarCodec

    return SonarCodec(
        tiny_sonar.encoder, tiny_sonar.decoder, batch_max_tokens=512, max_seq_len=64,
        decode_max_len=12, beam_size=1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sonar_model(sonar_codec, tmp_path_factory):
    sys_argv, sys.argv = sys.argv, ["lcm"]
    try:
        return _prepare_and_fit(tmp_path_factory.mktemp("sonar"), sonar_codec, ["en", "fr"])
    finally:
        sys.argv = sys_argv


def test_tiny_sonar_crosslingual(sonar_model, sonar_codec, tmp_path):
    ckpt, held = sonar_model
    res = evaluate(
        [str(ckpt)],
        data=[str(debian_file("en")), str(debian_file("fr"))],
        out_dir=str(tmp_path),
        pairs=["eng_Latn->fra_Latn", "eng_Latn->eng_Latn"],
        settings=[{"max_new_concepts": 2}],
        max_documents=3,
        codec=sonar_codec,
        model_names=["tiny"],
        metrics=["rouge_l", "ovl3", "rep4", "length", "l2", "ca", "par"],
        concept_dir=str(held),
        progress=False,
    )
    assert res["models"]["tiny"]["codec"] == sonar_codec.codec_id
    fr = {r["system"]: r for r in res["summarization"]["eng_Latn->fra_Latn"]}
    assert fr["tiny"]["documents"] == 3
    # references are the French synopses of the same packages
    records = [json.loads(x) for x in (tmp_path / "documents.jsonl").read_text().splitlines()]
    fr_refs = {r["id"]: r["summary"] for r in _rows("fr")}
    model_fr = [r for r in records if r["kind"] == "model" and r["pair"] == "eng_Latn->fra_Latn"]
    assert len(model_fr) == 3 and all(r["reference"] == fr_refs[r["id"]] for r in model_fr)
    # lead-3 of English documents scored against French references: same sentences as in
    # eng->eng, other references
    en = {r["system"]: r for r in res["summarization"]["eng_Latn->eng_Latn"]}
    assert fr["lead-3"]["words"] == en["lead-3"]["words"]
    assert fr["lead-3"]["rouge_l"] != en["lead-3"]["rouge_l"]
    # cross-lingual matrices: rows source, columns target, cells = the JSON numbers (the random
    # tiny SONAR decodes to empty text: its ROUGE-L is 0 in both columns, lead-1's differ)
    report = (tmp_path / "report.md").read_text()
    section = report[report.index("### ROUGE-L") :]
    for system in ("tiny", "lead-1"):
        matrix = _table(section, f"`{system}`")
        assert matrix[0] == ["source \\ target", "eng_Latn", "fra_Latn"]
        assert matrix[1] == ["eng_Latn", fmt(en[system]["rouge_l"]), fmt(fr[system]["rouge_l"])]
    assert en["lead-1"]["rouge_l"] > fr["lead-1"]["rouge_l"] > 0  # English lead vs French refs
    codec = res["codec_check"]["tiny"]["pairs"]
    bleu = _table(report, "### Codec BLEU: `tiny`")
    assert bleu[1] == [
        "eng_Latn",
        *(fmt(codec[f"eng_Latn->{t}"]["bleu"]) for t in ("eng_Latn", "fra_Latn")),
    ]
    concepts = res["concepts"]["tiny"]["groups"]
    assert set(concepts) == {"eng_Latn", "fra_Latn"}  # the held-out shards hold both
    assert all(r["positions"] > 0 for r in concepts["fra_Latn"]["systems"])
    assert "l2_r" not in concepts["eng_Latn"]["systems"][0]  # not asked for


def test_bad_inputs_fail_clearly(tmp_path):
    good = {"id": "a", "lang": "eng_Latn", "text": "One. Two. Three.", "summary": "Counting."}
    base = dict(checkpoints=[], out_dir=str(tmp_path / "out"), progress=False, plots=False)
    with pytest.raises(
        UnknownLanguageError,
        match=r"'fr_Latn' \(language pair 'eng_Latn->fr_Latn'\).*did you mean.*fra_Latn",
    ):
        evaluate(data=[str(debian_file("en"))], pairs=["eng_Latn->fr_Latn"], **base)
    bad_lang = _write(tmp_path / "bad_lang.jsonl", [good, {**good, "id": "b", "lang": "xx_Yyyy"}])
    with pytest.raises(
        UnknownLanguageError, match=r"'xx_Yyyy' \(\S*bad_lang.jsonl row 1 field 'lang'\)"
    ):
        evaluate(data=[str(bad_lang)], **base)
    no_summary = _write(
        tmp_path / "no_summary.jsonl", [{k: v for k, v in good.items() if k != "summary"}]
    )
    with pytest.raises(ValueError, match=r"no_summary.jsonl: no field 'summary'.*--summary_field"):
        evaluate(data=[str(no_summary)], **base)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        evaluate(data=[str(tmp_path / "nowhere.jsonl")], **base)
    with pytest.raises(ValueError, match="unknown generation setting 'beam'"):
        evaluate(data=[str(bad_lang)], settings=[{"beam": 4}], **base)
    with pytest.raises(ValueError, match=r"settings\[1\]: .*max_new_concepts"):
        evaluate(data=[str(bad_lang)], settings=[{}, {"max_new_concepts": "many"}], **base)
    with pytest.raises(ValueError, match="guidance_rescale must be >= 0.0 and <= 1.0"):
        evaluate(data=[str(bad_lang)], settings=[{"guidance_rescale": 2.0}], **base)
    with pytest.raises(ValueError, match="no usable references in deu_Latn"):
        evaluate(data=[str(debian_file("en"))], pairs=["eng_Latn->deu_Latn"], **base)
    with pytest.raises(UnknownLanguageError, match="fra_Latn"):
        parse_pair("eng_Latn->fr")


def test_unusable_rows_are_listed_not_dropped(tmp_path):
    """Baselines alone (no checkpoint), a language given per file, rows that cannot be used."""
    rows = [
        {"id": "a", "text": "One cat sat. Two dogs ran. Three birds sang.", "summary": "Animals."},
        {"id": "b", "text": "Only this sentence here.", "summary": ""},
        {"id": "a", "text": "A duplicate id. Second.", "summary": "Dup."},
        {"id": "c", "text": "   ", "summary": "Empty text."},
    ]
    path = _write(tmp_path / "nolang.jsonl", rows)
    res = evaluate([], data=[f"eng_Latn={path}"], out_dir=str(tmp_path / "o"), progress=False,
                   baselines=["lead-1"], metrics=["rouge_l", "length"])  # fmt: skip
    reasons = {r["row"]: r["reason"] for r in res["data"]["rows_not_used"]}
    assert sorted(reasons) == [1, 2, 3]
    assert "'summary'" in reasons[1] and "duplicate id 'a'" in reasons[2] and "'text'" in reasons[3]
    (row,) = res["summarization"]["eng_Latn->eng_Latn"]
    assert row["documents"] == 1 and row["rouge_l"] == 0.0 and row["sentences"] == 1.0
    report = (tmp_path / "o" / "report.md").read_text()
    assert "nolang.jsonl row 2 (a): duplicate id" in report
    with pytest.raises(ValueError, match=r"no field 'lang'.*LANG="):
        evaluate([], data=[str(path)], out_dir=str(tmp_path / "o2"), progress=False)


def test_parquet_and_csv_read_like_jsonl(tmp_path):
    import pandas as pd

    rows = _rows("de")[:3]
    pd.DataFrame(rows).to_parquet(tmp_path / "de.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "de.csv", index=False)
    jsonl = _write(tmp_path / "de.jsonl", rows)
    tables = []
    for path in (jsonl, tmp_path / "de.parquet", tmp_path / "de.csv"):
        res = evaluate([], data=[str(path)], out_dir=str(tmp_path / path.suffix[1:]),
                       progress=False, plots=False, metrics=["rouge_l", "ovl3"])  # fmt: skip
        tables.append(res["summarization"])
    assert tables[0] == tables[1] == tables[2]
    assert list(tables[0]) == ["deu_Latn->deu_Latn"]


def test_cli_main_and_help(tmp_path, capsys):
    res = main(
        [
            "--checkpoints=[]",
            f"--data=[{debian_file('de')}]",
            f"--out_dir={tmp_path}",
            "--max_documents=2",
            "--baselines=[lead-2]",
            "--settings=[{max_new_concepts: 1}, {seed: 3}]",
            "--metrics=[rouge_l]",
            "--plots=false",
            "--progress=false",
        ]
    )
    assert "### deu_Latn -> deu_Latn (2 documents)" in capsys.readouterr().out
    assert math.isfinite(res["summarization"]["deu_Latn->deu_Latn"][0]["rouge_l"])
    assert list(res["config"]["settings"]) == ["max_new_concepts=1", "seed=3"]
    proc = subprocess.run(
        [sys.executable, "-m", "eval", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--checkpoints", "--pairs", "--settings", "--concept_dir", "--out_dir"):
        assert option in proc.stdout
    assert re.search(r"language pairs\s+``SRC->TGT``", proc.stdout)
