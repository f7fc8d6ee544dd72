"""A family added in one file (tests/toy_family.py) trains through the CLI, generates through
the Python API and ``lcm summarize``, and is evaluated by ``lcm eval``: nothing in the toolkit
names it."""

from __future__ import annotations

import json
import sys

import torch
from helpers_train import HashCodec, make_shards

from lcm.api import ConceptModel
from lcm.cli import run


def test_a_toy_family_plugs_in_from_one_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lcm"])
    shards = make_shards(tmp_path / "data", n_docs=30, summaries=True)
    root = tmp_path / "run"
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(
        "model:\n  class_path: toy_family.ToyModule\n  init_args:\n"
        "    arch: {d_model: 8, n_heads: 1, residual: true}\n"
        "    optim: {lr: 0.01, warmup_steps: 2}\n"
        "data: {mode: summarize, max_seq_len: 16, max_concepts_per_batch: 256}\n"
    )
    fit = run(
        ["fit", "--config", "configs/trainer/default.yaml", "--config", str(recipe),
         f"--data.data_dir={shards}", f"--trainer.default_root_dir={root}",
         "--data.val_fraction=0.2", "--trainer.max_steps=30", "--trainer.val_check_interval=30",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    )  # fmt: skip
    assert type(fit.model).__name__ == "ToyModule" and fit.model.arch.sonar_dim == 16
    losses = [float(x) for x in fit.trainer.callback_metrics.values() if x.numel() == 1]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    ckpt = root / "checkpoints" / "last.ckpt"

    # The API finds the family from the checkpoint alone (its module is imported on load).
    from lcm.train.module import FAMILY_MODULES

    monkeypatch.delitem(FAMILY_MODULES, "toy")
    monkeypatch.delitem(sys.modules, "toy_family")  # as in a fresh process
    model = ConceptModel.load(ckpt, codec=HashCodec())
    assert model.module.family == "toy" and model.mode == "summarize"
    out = model.predict_concepts(["Token 3 is here. Token 16 is here."], "eng_Latn",
                                 max_new_concepts=2, repeat_threshold=2.0)  # fmt: skip
    assert len(out.concepts[0]) >= 1 and out.concepts[0].shape[-1] == 16
    text = model.summarize("Token 3 is here. Token 16 is here.", max_new_concepts=2)
    assert text.startswith("Token")

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "Token 5 is here. Token 1 is here."}) + "\n")
    counts = run(["summarize", f"--checkpoint={ckpt}", f"--inputs={src}", f"--output={dst}",
                  "--codec=helpers_train.HashCodec", "--settings.max_new_concepts=2",
                  "--progress=false"])  # fmt: skip
    assert counts["written"] == 1 and counts["errors"] == 0
    assert json.loads(dst.read_text())["output"].startswith("Token")

    # Concept-space evaluation of the held-out shards, and one text pair.
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(
        json.dumps({"id": str(i), "text": f"Token {i} is here. Token {i + 1} is here.",
                    "summary": f"Token {i} is here.", "lang": "eng_Latn"}) + "\n"
        for i in range(3)
    ))  # fmt: skip
    from eval.run import evaluate

    res = evaluate(
        checkpoints=[str(ckpt)], data=[str(docs)], out_dir=str(tmp_path / "eval"),
        codec=HashCodec(), concept_dir=str(shards), max_documents=3, batch_size=2,
        metrics=["rouge_l", "l2", "ca"], baselines=[], progress=False, plots=False,
        crosslingual_check=False, settings=[{"max_new_concepts": 1}],
    )  # fmt: skip
    (concepts,) = res["concepts"].values()
    systems = {r["system"]: r for r in concepts["groups"]["eng_Latn"]["systems"]}
    toy = systems["run/last"]
    assert toy["kind"] == "model" and toy["positions"] == systems["copy-previous"]["positions"] > 0
    assert 0.0 <= toy["ca"] <= 1.0 and toy["l2"] > 0
    assert "rouge_l" in json.dumps(res["summarization"])
