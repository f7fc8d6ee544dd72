"""experiments.pretraining.inputs: the full report's inputs built, reused and refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import lcm.corpora.prose
import lcm.data.prepare
from experiments.pretraining import inputs as inp
from experiments.pretraining.inputs import (
    FULL_INPUTS,
    InputRecipe,
    InputsMissing,
    build_inputs,
    parts_in_use,
)
from experiments.pretraining.report import PRESETS, main, read_prepared, run_report

CODEC = "experiments.pretraining.toy.HashCodec"


def _doc(name: str, i: int, n: int) -> dict:
    text = "\n\n".join(f"{name.title()} document {i} says thing {k}." for k in range(n))
    return {"id": f"{name}/{i}", "text": text, "lang": "eng_Latn", "source": name}


def write_corpus(root: Path, sample_sentences: int = 40) -> dict[str, list[str]]:
    """A corpus folder in the layout ``lcm fetch-corpus`` writes; returns the ids per file."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    files = {
        "train.sample": [_doc("train", i, 8 + i % 5) for i in range(12)],
        "test": [_doc("test", i, 6 + i % 3) for i in range(7)],
        "ood": [_doc("ood", i, 5 + i % 4) for i in range(6)],
    }
    for name, rows in files.items():
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (corpus / f"corpus.{name}.jsonl").write_text(text)
    manifest = {"settings": {"sample_sentences": sample_sentences}, "splits": {}}
    (corpus / "corpus.manifest.json").write_text(json.dumps(manifest))
    return {k: [r["id"] for r in v] for k, v in files.items()}


def _no_fetch(*args, **kwargs):
    raise AssertionError("fetch_corpus called although the corpus is complete")


def test_full_preset_paths_are_relative_and_the_recipes():
    full = PRESETS["full"]
    paths = [full.train_dir, *full.eval_dirs.values(), full.work_dir]
    for path in paths:
        assert not Path(path).is_absolute() and "/work/data" not in path, path
    assert full.inputs == FULL_INPUTS and full.prepare_inputs
    assert full.train_dir == "data/pretraining/shards/train31996"
    assert full.eval_dirs == {
        "in-domain test": "data/pretraining/shards/test200",
        "held-out python-doc": "data/pretraining/shards/ood80",
    }
    assert (FULL_INPUTS.sample_sentences, FULL_INPUTS.test_rows, FULL_INPUTS.heldout_rows) == (
        31996,
        200,
        80,
    )
    assert PRESETS["ci"].inputs is None and PRESETS["ci"].toy
    # data/ and runs/ are git-ignored: a fresh clone's build never shows as changes
    ignore = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "/data/" in ignore and "runs/" in ignore


def test_builds_the_first_rows_then_reuses_without_encoding(tmp_path, monkeypatch, capsys):
    ids = write_corpus(tmp_path)
    recipe = InputRecipe(str(tmp_path), 40, test_rows=3, heldout_rows=2, codec=CODEC)
    monkeypatch.setattr(lcm.corpora.prose, "fetch_corpus", _no_fetch)
    rec = build_inputs(recipe, progress=False)
    sets = rec["sets"]
    assert {p: sets[p]["status"] for p in sets} == {p: "built" for p in inp.PARTS}
    assert [sets[p]["documents"] for p in inp.PARTS] == [12, 3, 2]
    # 12 train documents of 8..12 sentences; the test rows 6, 7, 8; the ood rows 5, 6
    assert [sets[p]["sentences"] for p in inp.PARTS] == [sum(8 + i % 5 for i in range(12)), 21, 11]
    got = {p: [i for i, _, _ in read_prepared(recipe.folder(p))] for p in inp.PARTS}
    assert got == {"train": ids["train.sample"], "test": ids["test"][:3], "heldout": ids["ood"][:2]}
    assert rec["corpus"]["fetched"] is False and rec["recipe"]["test_rows"] == 3
    assert "head -n 3" in " ".join(rec["commands"])
    assert "[inputs] 3/3 heldout: built" in capsys.readouterr().out

    shards = sorted(Path(tmp_path, "shards").glob("*/shards/*.parquet"))
    mtimes = [s.stat().st_mtime_ns for s in shards]

    def no_prepare(*args, **kwargs):
        raise AssertionError("prepare called on a complete folder")

    monkeypatch.setattr(lcm.data.prepare, "prepare", no_prepare)
    again = build_inputs(recipe, progress=False)
    assert {p: again["sets"][p]["status"] for p in inp.PARTS} == {p: "reused" for p in inp.PARTS}
    assert [again["sets"][p]["documents"] for p in inp.PARTS] == [12, 3, 2]
    assert again["corpus"] is None
    assert [s.stat().st_mtime_ns for s in shards] == mtimes


def test_missing_folders_are_an_error_naming_them_when_building_is_off(tmp_path):
    recipe = InputRecipe(str(tmp_path / "d"), codec=CODEC)
    with pytest.raises(InputsMissing) as e:
        build_inputs(recipe, ("test",), build=False)
    msg = str(e.value)
    assert recipe.folder("test") in msg and recipe.train_dir not in msg.split("build them")[0]
    assert f"lcm fetch-corpus --out_dir {tmp_path / 'd' / 'corpus'} --sample_sentences 31996" in msg
    assert f"head -n 200 {tmp_path / 'd' / 'corpus' / 'corpus.test.jsonl'}" in msg
    assert f"--output_dir {recipe.folder('test')} --codec {CODEC}" in msg
    assert not (tmp_path / "d").exists()
    # the command line: --prepare_inputs false stops before anything is trained
    with pytest.raises(SystemExit, match="missing prepared input folder"):
        main(
            preset="full",
            out_dir=str(tmp_path / "out"),
            inputs=recipe,
            prepare_inputs=False,
            mi=False,
        )
    assert not (tmp_path / "d").exists()


def test_an_interrupted_folder_is_resumed_or_refused(tmp_path, monkeypatch):
    write_corpus(tmp_path)
    monkeypatch.setattr(lcm.corpora.prose, "fetch_corpus", _no_fetch)
    recipe = InputRecipe(str(tmp_path), 40, test_rows=4, heldout_rows=2, codec=CODEC)
    build_inputs(recipe, ("test",), progress=False)
    (Path(recipe.folder("test")) / "summary.json").unlink()  # killed before the end
    rec = build_inputs(recipe, ("test",), progress=False)
    assert rec["sets"]["test"]["status"] == "resumed" and rec["sets"]["test"]["documents"] == 4
    # a half-written folder of other settings (another codec) is refused, not mixed
    (Path(recipe.folder("test")) / "summary.json").unlink()
    other = replace(recipe, codec="encoders.hashing.HashCodec")
    with pytest.raises(ValueError, match="cannot be resumed.*delete it"):
        build_inputs(other, ("test",), progress=False)


def test_explicit_folders_are_the_callers_and_the_report_records_the_build(tmp_path, monkeypatch):
    recipe = InputRecipe(str(tmp_path), 40, test_rows=3, heldout_rows=2, codec=CODEC)
    dirs = recipe.eval_dirs
    assert parts_in_use(recipe, recipe.train_dir, dirs) == inp.PARTS
    assert parts_in_use(recipe, "elsewhere", {"x": dirs["in-domain test"]}) == ("test",)
    assert parts_in_use(recipe, "elsewhere", {"x": "other"}) == ()

    write_corpus(tmp_path)
    monkeypatch.setattr(lcm.corpora.prose, "fetch_corpus", _no_fetch)
    p = replace(
        PRESETS["ci"],
        toy=False,
        inputs=recipe,
        train_dir=recipe.train_dir,
        eval_dirs={"held-out python-doc": dirs["held-out python-doc"]},
        families=("base_lcm",),
        guidance_one=False,
        mi=False,
        work_dir=str(tmp_path / "runs"),
    )
    res = run_report(p, str(tmp_path / "out"), "ci")
    built = res["setup"]["inputs"]
    assert sorted(built["sets"]) == ["heldout", "train"]  # the test set is not read: not built
    assert not Path(recipe.folder("test")).exists()
    assert res["setup"]["train_documents"] == built["sets"]["train"]["documents"] == 12
    assert list(res["sets"]) == ["held-out python-doc"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["setup"]["inputs"]["sets"]["heldout"]["documents"] == 2


def test_command_line_moves_the_recipe_and_keeps_explicit_folders(monkeypatch):
    from jsonargparse import CLI

    from experiments.pretraining import report

    seen = {}
    monkeypatch.setattr(report, "run_report", lambda p, out, name: seen.update(p=p) or {})
    monkeypatch.setattr(report, "markdown", lambda res: "")
    argv = ["--preset", "full", "--inputs.data_dir", "/big/pt", "--prepare_inputs", "false"]
    CLI(report.main, args=argv, as_positional=False)
    p = seen["p"]
    assert p.inputs == InputRecipe("/big/pt") and p.prepare_inputs is False
    assert p.train_dir == "/big/pt/shards/train31996"
    assert p.eval_dirs["held-out python-doc"] == "/big/pt/shards/ood80"
    argv = ["--preset", "full", "--inputs.test_rows", "50", "--train_dir", "/mine"]
    CLI(report.main, args=argv, as_positional=False)
    p = seen["p"]
    assert p.train_dir == "/mine" and p.prepare_inputs is True
    assert p.eval_dirs["in-domain test"] == "data/pretraining/shards/test50"
    assert parts_in_use(p.inputs, p.train_dir, p.eval_dirs) == ("test", "heldout")
