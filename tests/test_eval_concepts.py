"""``lcm eval`` on concepts alone (issue 14, item 3): no summaries needed, metrics broken down by
any shard column, and the concept window and document caps stated, with whole documents on
request."""

from __future__ import annotations

import json
import sys

import pytest
from helpers_train import HashCodec, make_shards

from eval.run import evaluate
from lcm.cli import run


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 3-step Base-LCM (pretraining mode, max_seq_len 8) and held-out shards whose documents
    (4-14 concepts) are often longer than its window; ids ``doc<j>`` from two "sources"."""
    root = tmp_path_factory.mktemp("concepts")
    train = make_shards(root / "train", n_docs=24)
    held = make_shards(root / "held", n_docs=12, seed=5)
    argv, sys.argv = sys.argv, ["lcm"]
    try:
        run(
            ["fit", "--config", "configs/trainer/default.yaml", "--config",
             "configs/base_lcm/tiny.yaml", f"--data.data_dir={train}",
             f"--trainer.default_root_dir={root / 'run'}", "--data.val_fraction=0.2",
             "--data.max_seq_len=8", "--trainer.max_steps=3",
             "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
        )  # fmt: skip
    finally:
        sys.argv = argv
    return root / "run" / "checkpoints" / "last.ckpt", held


def _concepts(ckpt, held, out, **kw):
    return evaluate(
        [str(ckpt)],
        data=[str(out / "nowhere.jsonl")],  # never read: concepts only
        out_dir=str(out),
        summarize=False,
        concept_dir=str(held),
        codec=HashCodec(),
        metrics=["l2", "ca"],
        plots=False,
        progress=False,
        **kw,
    )


def test_concept_only_evaluation_reads_no_data_and_states_its_window(pretrained, tmp_path):
    ckpt, held = pretrained
    res = _concepts(ckpt, held, tmp_path / "a")
    assert res["summarization"] == {} and res["config"]["summarize"] is False
    block = res["concepts"]["run/last"]
    assert block["max_len"] == block["model_max_seq_len"] == 8 and block["group_by"] == "lang"
    (group,) = block["groups"].values()
    lengths = [len(json.loads(x)["text"].split(". ")) for x in (held.parent / "docs.jsonl").open()]
    assert group["documents"] == group["documents_available"] == 12
    assert group["documents_cut"] == sum(n > 8 for n in lengths) > 0
    assert group["positions_left_out"] == sum(max(0, n - 8) for n in lengths)
    report = (tmp_path / "a" / "report.md").read_text()
    assert "a window of 8 concepts per document" in report
    assert f"{group['positions_left_out']} positions left out (not scored)" in report

    # whole documents: every position scored; the window's positions + those left out
    whole = _concepts(ckpt, held, tmp_path / "b", concept_max_len="whole")
    wblock = whole["concepts"]["run/last"]
    (wgroup,) = wblock["groups"].values()
    assert wblock["max_len"] is None and wgroup["documents_cut"] == 0
    model_rows = {r["system"]: r for r in group["systems"]}
    whole_rows = {r["system"]: r for r in wgroup["systems"]}
    assert (
        whole_rows["run/last"]["positions"]
        == model_rows["run/last"]["positions"] + group["positions_left_out"]
    )
    assert "whole documents" in (tmp_path / "b" / "report.md").read_text()


def test_metrics_by_any_shard_column_cut_by_a_pattern(pretrained, tmp_path):
    ckpt, held = pretrained
    # ids doc0..doc11: the last digit's parity stands for two corpus sources
    res = _concepts(
        ckpt, held, tmp_path, group_by="id", group_pattern=r"([02468])$", max_documents=4
    )
    groups = res["concepts"]["run/last"]["groups"]
    assert set(groups) == {"0", "2", "4", "6", "8", "(no match)"}
    assert groups["(no match)"]["documents_available"] == 6  # odd ids: nothing dropped
    assert groups["(no match)"]["documents"] == 4  # max_documents caps each group, stated:
    assert "### run/last: (no match) (4 of 6 documents" in (tmp_path / "report.md").read_text()
    assert sum(g["documents_available"] for g in groups.values()) == 12


def test_bad_grouping_and_concept_only_without_shards_are_clear_errors(pretrained, tmp_path):
    ckpt, held = pretrained
    with pytest.raises(ValueError, match=r"group_by 'topic' is not a column .*'source'"):
        _concepts(ckpt, held, tmp_path / "a", group_by="topic")
    with pytest.raises(ValueError, match="not a regular expression"):
        _concepts(ckpt, held, tmp_path / "b", group_pattern="(")
    with pytest.raises(ValueError, match="give --concept_dir"):
        evaluate([str(ckpt)], out_dir=str(tmp_path / "c"), summarize=False, progress=False)
