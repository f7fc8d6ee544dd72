"""experiments.pretraining.report: the baselines, the bootstrap and the ``ci`` preset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from experiments.pretraining.report import (
    PRESETS,
    Bank,
    RetrievalBaseline,
    bootstrap,
    per_document,
    run_report,
    split_system,
    system_label,
)


def test_retrieval_returns_the_successor_of_the_nearest_context():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(6, 8, generator=g)
    doc = np.array([0, 0, 0, 1, 1, 1])
    base = RetrievalBaseline(train, doc, k=1)
    # a window that repeats training doc 1: each next concept is found exactly
    x = train[3:6][None]
    pred, defined = base(x, torch.ones(1, 3, dtype=torch.bool))
    assert defined.tolist() == [[False, True, True]]
    assert torch.equal(pred[0, 1], train[4]) and torch.equal(pred[0, 2], train[5])
    # the last concept of a document has no successor: never a key
    assert 2 not in (base.successor - 1).tolist() and 5 not in (base.successor - 1).tolist()


def test_bank_decodes_to_the_nearest_unique_sentence():
    train = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    bank = Bank(train, ["a", "b", "b", "c"])
    assert bank.size == 3
    assert bank.decode(torch.tensor([[0.9, 0.2], [0.0, 4.0]])).tolist() == [[1, 0], [0, 5]]


def test_bootstrap_means_and_paired_difference():
    values = torch.tensor([[float("nan"), 1.0, 3.0], [float("nan"), 2.0, float("nan")]])
    sums, counts = per_document(values, np.array([0, 1]), 2)
    assert sums.tolist() == [4.0, 2.0] and counts.tolist() == [2.0, 1.0]
    draws = np.random.default_rng(0).integers(0, 2, size=(200, 2))
    res = bootstrap(sums, counts, draws)
    assert res["mean"] == pytest.approx(2.0) and res["n"] == 3
    assert 1.0 <= res["lo"] <= res["mean"] <= res["hi"] <= 2.0
    same = bootstrap(sums, counts, draws, base=(sums, counts))
    assert same == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 3}


def test_systems_name_a_family_and_a_residual():
    assert split_system("base_lcm") == ("base_lcm", "none")
    assert split_system("two_tower+context_mean") == ("two_tower", "context_mean")
    assert system_label("base_lcm+context_mean") == "Base-LCM +ctx-mean"
    assert system_label("two_tower+last@g1") == "Two-Tower +last, guidance 1"
    with pytest.raises(ValueError, match="unknown family 'gpt'"):
        split_system("gpt")
    with pytest.raises(ValueError, match="unknown residual 'first'"):
        split_system("base_lcm+first")


@pytest.mark.slow
def test_ci_preset_end_to_end(tmp_path):
    res = run_report(PRESETS["ci"], str(tmp_path), "ci")
    for name in ("results.json", "table.md", "ca.png", "val_ca.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["sets"] == res["sets"]
    systems = {"copy_previous", "context_mean", "mean_concept", "retrieval"}
    trained = {"base_lcm", "one_tower", "two_tower", "quant_lcm", "refiner"}
    trained |= {"base_lcm+context_mean", "two_tower+last", "refiner+context_mean"}
    trained |= {"quant_lcm+context_mean"}
    systems |= trained | {"one_tower@g1", "two_tower@g1", "two_tower+last@g1"}
    assert res["default_guidance"] == {"one_tower": 3.0, "two_tower": 3.0, "two_tower+last": 3.0}
    for st in res["sets"].values():
        assert set(st["systems"]) == systems
        # free-running continuations: every trained system writes 4 decoded sentences
        assert len(st["continuations"]) == 2
        for c in st["continuations"]:
            assert len(c["prompt"]) == 3 and len(c["gold"]) == 4
            assert set(c["generated"]) == trained
            assert all(len(texts) == 4 for texts in c["generated"].values())
        for row in st["systems"].values():
            for m in ("l2", "l2_r", "par", "ca"):
                assert row[m]["lo"] <= row[m]["mean"] <= row[m]["hi"], (m, row[m])
            assert 0 <= row["ca"]["mean"] <= 1
    # in domain every toy transition was seen in training: retrieval predicts the gold exactly
    indomain = res["sets"]["in-domain test"]["systems"]
    assert indomain["retrieval"]["l2"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert indomain["retrieval"]["ca"]["mean"] > 0.9
    # the mean concept's l2 beats copying the previous concept (random hash vectors)
    assert indomain["mean_concept"]["l2"]["mean"] < indomain["copy_previous"]["l2"]["mean"]
    assert res["setup"]["bank_sentences"] == 23
    # MI (paper 2.4.1) with the small LM trained on the toy training text: every system has a
    # value, and the gold next sentence beats a shuffled one in domain, where the LM has seen
    # the transition rule (sentence k is followed by sentence 3k + 7 mod 23)
    assert "mi" not in res["missing"] and res["mi_lm"]["val_perplexity"] > 1
    for st in res["sets"].values():
        assert all(math.isfinite(row["mi"]["mean"]) for row in st["systems"].values())
    ref = res["sets"]["in-domain test"]["mi_reference"]
    assert ref["gold - shuffled"]["lo"] > 0.1, ref
    assert ref["gold next sentence"]["mean"] > ref["shuffled gold sentence"]["mean"]
    # retrieval predicts the gold exactly in domain, so its MI is the gold's
    assert indomain["retrieval"]["mi"]["mean"] == pytest.approx(
        ref["gold next sentence"]["mean"], abs=1e-6
    )


def _cells(node):
    """Every ``{"mean", "lo", "hi"}`` cell of a results.json tree."""
    if isinstance(node, dict):
        if {"mean", "lo", "hi"} <= set(node):
            yield node
        for v in node.values():
            yield from _cells(v)
    elif isinstance(node, list):
        for v in node:
            yield from _cells(v)


@pytest.mark.parametrize(
    "sub",
    [
        "",
        "residual_scale",
        "guidance_206k",
        "quant_residual",
        "contrastive_residual",
        "quant_decoding",
        "timed_run",
        "noise_augmentation",
        "quant_residual_206k",
        "seed1_206k_refiner",
        "seed1_206k_base_one_tower",
    ],
)
def test_report_readme_intervals_are_the_jsons(sub):
    """Every "value [lo, hi]" a committed report README quotes (the report's, and a
    sub-folder's with its own README, e.g. ``residual_206k/``) is a cell of one of the
    results.json (report) or paired.json (:mod:`experiments.pretraining.paired`) files under its
    folder (formatted as table.md formats it)."""
    import re
    from pathlib import Path

    from experiments.pretraining.report import fmt

    folder = Path(__file__).resolve().parents[1] / "reports" / "pretraining" / sub
    known = {
        fmt(c)
        for name in ("results.json", "paired.json")
        for path in folder.rglob(name)
        for c in _cells(json.loads(path.read_text()))
    }
    pattern = r"-?\d+\.\d{3} \[-?\d+\.\d{3}, -?\d+\.\d{3}\]"
    for readme in sorted(folder.rglob("README.md")):
        quoted = re.findall(pattern, readme.read_text())
        assert quoted, f"{readme} quotes no interval"
        missing = [q for q in quoted if q not in known]
        assert not missing, f"{readme}: intervals not in results.json: {missing}"


@pytest.mark.slow
def test_guidance_sweep_scores_the_reports_checkpoints(tmp_path):
    """The sweep scores a report's diffusion checkpoint at each scale: at guidance 1 and at the
    checkpoint's own guidance (3) it gives the report's CA; the scale is chosen on the selection
    set; the outputs are written."""
    from dataclasses import replace

    from experiments.pretraining.guidance_sweep import main as sweep_main

    p = replace(PRESETS["ci"], families=("two_tower+context_mean",), generate_docs=0, mi=False)
    rep = run_report(p, str(tmp_path / "rep"), "ci")
    run_dir = tmp_path / "rep" / "work" / f"runs_ci_steps{p.steps}_d{p.d_model}_seed{p.seed}"
    eval_dirs = rep["setup"]["eval_dirs"]
    res = sweep_main(
        str(run_dir), str(tmp_path / "sweep"), eval_dirs=eval_dirs,
        systems=["two_tower+context_mean"], scales=[1.0, 3.0, 5.0], bootstrap_draws=50,
        window=p.window,
    )  # fmt: skip
    for name in ("results.json", "table.md", "ca_vs_guidance.png"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0
    for set_name, st in res["sets"].items():
        rows, report_rows = st["systems"], rep["sets"][set_name]["systems"]
        got = rows["two_tower+context_mean"]
        assert set(got) == {"1", "3", "5"}
        assert got["1"]["ca"]["mean"] == pytest.approx(
            report_rows["two_tower+context_mean@g1"]["ca"]["mean"], abs=1e-9
        )
        assert got["3"]["ca"]["mean"] == pytest.approx(
            report_rows["two_tower+context_mean"]["ca"]["mean"], abs=1e-9
        )
        assert rows["context_mean"]["ca"]["mean"] == pytest.approx(
            report_rows["context_mean"]["ca"]["mean"], abs=1e-9
        )
        for cell in got.values():
            diff = cell["ca_minus_context_mean"]["mean"]
            assert diff == pytest.approx(cell["ca"]["mean"] - rows["context_mean"]["ca"]["mean"])
    by_scale = res["sets"]["in-domain test"]["systems"]["two_tower+context_mean"]
    best = max(by_scale, key=lambda s: by_scale[s]["ca"]["mean"])
    assert f"{res['chosen']['two_tower+context_mean']['scale']:g}" == best
    with pytest.raises(ValueError, match="select_on"):
        sweep_main(str(run_dir), str(tmp_path / "x"), eval_dirs=eval_dirs, select_on="nope")


def test_command_line_overrides_width_and_records_it(tmp_path):
    from jsonargparse import CLI

    from experiments.pretraining.report import main

    argv = ["--preset", "ci", "--out_dir", str(tmp_path / "out"), "--families", "base_lcm"]
    argv += ["--steps", "2", "--d_model", "24", "--ffn_dim", "40", "--work_dir", str(tmp_path)]
    argv += ["--mi", "false"]  # MI is the ci preset test's
    res = CLI(main, args=argv, as_positional=False)  # the command line of `python -m ...`
    assert (res["setup"]["d_model"], res["setup"]["ffn_dim"]) == (24, 40)
    assert res["setup"]["mi"] is False and "mi" in res["missing"]
    ckpt = tmp_path / "runs_ci_steps2_d24_seed0" / "base_lcm" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    widths = {tuple(v.shape) for k, v in state.items() if k.endswith("weight") and v.ndim == 2}
    assert (24, 24) in widths  # attention projections are d_model x d_model
    assert not any(PRESETS["ci"].d_model in shape and 24 not in shape for shape in widths)


def test_command_line_overrides_the_evaluation_sets(monkeypatch):
    from jsonargparse import CLI

    from experiments.pretraining import report

    seen = {}

    def fake_run(p, out_dir, preset_name):
        seen["preset"] = p
        return {}

    monkeypatch.setattr(report, "run_report", fake_run)
    monkeypatch.setattr(report, "markdown", lambda res: "")
    sets = '{"held-out python-doc": "/data/ood", "in-domain test": "/data/test"}'
    argv = ["--preset", "full", "--eval_dirs", sets, "--families", "quant_lcm+context_mean"]
    CLI(report.main, args=argv, as_positional=False)
    p = seen["preset"]
    assert p.eval_dirs == {"held-out python-doc": "/data/ood", "in-domain test": "/data/test"}
    assert p.families == ("quant_lcm+context_mean",) and p.steps == PRESETS["full"].steps
    CLI(report.main, args=["--preset", "full"], as_positional=False)
    assert seen["preset"].eval_dirs == PRESETS["full"].eval_dirs  # no override: the preset's


def _toy_lm(tmp_path):
    from experiments.pretraining.causal_lm import LMConfig, train_causal_lm

    docs = [[f"Token {(3 * k + 7) % 23} is here." for k in range(i, i + 8)] for i in range(30)]
    cfg = LMConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, block=64, steps=20,
                   batch=4, lr=1e-2, warmup=5)  # fmt: skip
    return train_causal_lm(docs, tmp_path / "lm", cfg), docs, cfg


def test_causal_lm_scores_like_the_metric_and_is_cached(tmp_path):
    """The batched, prefix-cached scorer equals one-at-a-time scoring through the project's MI
    metric (eval.metrics.concepts.mutual_information); a second call reuses the saved LM."""
    from eval.metrics.concepts import mutual_information
    from experiments.pretraining.causal_lm import SEP, train_causal_lm
    from experiments.pretraining.report import mi_per_document

    lm, docs, cfg = _toy_lm(tmp_path)
    info = lm.info
    assert info["parameters"] > 0 and info["val_documents"] >= 1 and info["val_perplexity"] > 1
    ctx, cands = docs[0][:5], [docs[0][5], docs[3][0], "Something else entirely!"]
    prefix = lm.encode_prefix("\n".join(ctx) + "\n")
    assert prefix[-1] == SEP and prefix.count(SEP) == 5
    batched = lm.score_after(prefix, [lm.encode(c) for c in cands])
    single = [lm.log_prob("\n".join(ctx) + "\n", c)[0] for c in cands]
    assert batched == pytest.approx(single, abs=1e-4)
    mi = mutual_information(lm, cands, [ctx] * 3, k=10, joiner="\n")
    uncond = lm.score_after([SEP], [lm.encode(c) for c in cands])
    n = [len(lm.encode(c)) for c in cands]
    assert mi.per_sentence == pytest.approx(
        [(b - u) / k for b, u, k in zip(batched, uncond, n)], abs=1e-4
    )
    # token-weighted per document, as the paper's dataset value
    sums, counts = mi_per_document(
        np.array([1.0, 2.0, float("nan")]), np.array([2.0, 3.0, 0.0]), np.array([0, 0, 1]), 2
    )
    assert sums.tolist() == [3.0, 0.0] and counts.tolist() == [5.0, 0.0]
    again = train_causal_lm(docs, tmp_path / "lm", cfg)  # cached: same weights, no training
    assert again.info["seconds_train"] == info["seconds_train"]
    assert again.score_after(prefix, [lm.encode(cands[0])]) == pytest.approx(batched[:1])
    with pytest.raises(ValueError, match="exceeds the LM's block"):
        lm.score_after(prefix, [[5] * 64])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_causal_lm_scores_the_same_on_cuda(tmp_path):
    """The MI scorer is device-clean: the same LM on CUDA gives the CPU's log-probabilities."""
    from experiments.pretraining.causal_lm import CausalLM

    lm, docs, _ = _toy_lm(tmp_path)
    gpu = CausalLM(tmp_path / "lm", device="cuda")
    prefix = lm.encode_prefix("\n".join(docs[1][:4]) + "\n")
    texts = [lm.encode(s) for s in docs[1][4:7]]
    assert gpu.score_after(prefix, texts) == pytest.approx(lm.score_after(prefix, texts), abs=1e-3)


def test_sweep_chooses_the_smallest_scale_within_the_tie():
    from experiments.pretraining.guidance_sweep import choose

    def cell(ca):
        return {"ca": {"mean": ca, "lo": ca, "hi": ca, "n": 1}}

    cas = {"1": 0.900, "1.5": 0.9015, "2": 0.9025, "3": 0.9030, "4": 0.890}
    res = {"sets": {"val": {"systems": {"s": {k: cell(v) for k, v in cas.items()}}}}}
    scales = [1.0, 1.5, 2.0, 3.0, 4.0]
    assert choose(res, "s", scales, "val", 0.0)["scale"] == 3.0
    assert choose(res, "s", scales, "val", 0.002)["scale"] == 1.5  # 0.9015 >= 0.9030 - 0.002
    got = choose(res, "s", scales, "val", 0.01)
    assert got["scale"] == 1.0 and got["best_scale"] == 3.0
    assert got["val"] == res["sets"]["val"]["systems"]["s"]["1"]
    # prefer: of the tied scales, the closest to the preferred one (the default guidance)
    assert choose(res, "s", scales, "val", 0.002, prefer=3.0)["scale"] == 3.0
    assert choose(res, "s", scales, "val", 0.002, prefer=1.0)["scale"] == 1.5  # 1 is not tied
    assert choose(res, "s", scales, "val", 0.01, prefer=1.75)["scale"] == 1.5  # equal: smaller
    assert choose(res, "s", scales, "val", 0.0, prefer=1.0)["scale"] == 3.0  # no tie: the best


@pytest.mark.slow
def test_residual_scale_sweep_on_validation_documents(tmp_path):
    """``--knob residual_scale``: at s = 1 the sweep gives the report's CA; the checkpoint's own
    validation documents are scored and chosen on; a larger s lengthens the predictions."""
    from dataclasses import replace

    from experiments.pretraining.guidance_sweep import main as sweep_main

    p = replace(PRESETS["ci"], families=("base_lcm+context_mean",), generate_docs=0, mi=False)
    rep = run_report(p, str(tmp_path / "rep"), "ci")
    run_dir = tmp_path / "rep" / "work" / f"runs_ci_steps{p.steps}_d{p.d_model}_seed{p.seed}"
    eval_dirs = rep["setup"]["eval_dirs"]
    res = sweep_main(
        str(run_dir), str(tmp_path / "sweep"), eval_dirs=eval_dirs,
        systems=["base_lcm+context_mean"], scales=[1.0, 2.0], bootstrap_draws=50,
        window=p.window, knob="residual_scale", tie=0.002, validation_documents=2,
        select_on="in-domain validation",
    )  # fmt: skip
    for name in ("results.json", "table.md", "ca_vs_residual_scale.png"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0
    assert list(res["sets"])[0] == "in-domain validation"
    assert res["sets"]["in-domain validation"]["documents"] == 2
    for set_name in eval_dirs:
        rows = res["sets"][set_name]["systems"]
        got, report_row = rows["base_lcm+context_mean"], rep["sets"][set_name]["systems"]
        assert got["1"]["ca"]["mean"] == pytest.approx(
            report_row["base_lcm+context_mean"]["ca"]["mean"], abs=1e-9
        )
        assert got["2"]["mean_norm"] != pytest.approx(got["1"]["mean_norm"])
        for ref in ("context_mean", "copy_previous"):
            diff = got["2"][f"ca_minus_{ref}"]["mean"]
            assert diff == pytest.approx(got["2"]["ca"]["mean"] - rows[ref]["ca"]["mean"])
    val = res["sets"]["in-domain validation"]["systems"]["base_lcm+context_mean"]
    chosen = res["chosen"]["base_lcm+context_mean"]["scale"]
    best = max(val[k]["ca"]["mean"] for k in val)
    assert val[f"{chosen:g}"]["ca"]["mean"] >= best - 0.002
    if chosen == 2.0:
        assert val["1"]["ca"]["mean"] < best - 0.002


def test_expected_temperature_knob_options():
    from experiments.pretraining.guidance_sweep import knob_options

    assert knob_options("guidance", 3.0) == {"guidance_scale": 3.0}
    assert knob_options("residual_scale", 2.0) == {"residual_scale": 2.0}
    # 0: greedy codes (the checkpoints' own validation decoding); else expected, top_p 1
    assert knob_options("expected_temperature", 0.0) == {"quant_decoding": ("sample", 0.0, 1.0)}
    assert knob_options("expected_temperature", 0.5) == {"quant_decoding": ("expected", 0.5, 1.0)}
    with pytest.raises(ValueError, match=">= 0"):
        knob_options("expected_temperature", -1.0)


@pytest.mark.slow
def test_expected_temperature_sweep_of_a_quant_checkpoint(tmp_path):
    """``--knob expected_temperature``: at 0 (greedy codes) the sweep gives the report's CA for
    Quant-LCM +ctx-mean; at 1 the expected decoding gives other predictions; the cosine to the
    context-mean prediction is the one computed by hand; one-hot weights (temperature 0)
    give greedy decoding; a non-Quant checkpoint is refused."""
    from dataclasses import replace

    from experiments.pretraining.guidance_sweep import main as sweep_main
    from experiments.pretraining.report import context_mean, load_eval_set, model_predictions

    p = replace(PRESETS["ci"], families=("quant_lcm+context_mean",), generate_docs=0, mi=False)
    rep = run_report(p, str(tmp_path / "rep"), "ci")
    run_dir = tmp_path / "rep" / "work" / f"runs_ci_steps{p.steps}_d{p.d_model}_seed{p.seed}"
    eval_dirs = rep["setup"]["eval_dirs"]
    system = "quant_lcm+context_mean"
    res = sweep_main(
        str(run_dir), str(tmp_path / "sweep"), eval_dirs=eval_dirs, systems=[system],
        scales=[0.0, 1.0], bootstrap_draws=50, window=p.window, knob="expected_temperature",
        tie=0.002, prefer=0.0,
    )  # fmt: skip
    assert (tmp_path / "sweep" / "ca_vs_expected_temperature.png").stat().st_size > 0
    for set_name in eval_dirs:
        got = res["sets"][set_name]["systems"][system]
        assert got["0"]["ca"]["mean"] == pytest.approx(
            rep["sets"][set_name]["systems"][system]["ca"]["mean"], abs=1e-9
        )
        assert got["1"]["mean_norm"] != pytest.approx(got["0"]["mean_norm"])
    ckpt = run_dir / system / "checkpoints" / "last.ckpt"
    set_name, folder = next(iter(eval_dirs.items()))
    es = load_eval_set(set_name, folder, p.window)
    greedy = model_predictions(ckpt, es)
    # the cosine to the context-mean prediction over the scored positions, by hand
    cm, defined = context_mean(es.x, es.mask)
    near = es.mask & defined
    near[:, 0] = False
    cos = torch.nn.functional.cosine_similarity(greedy[near], cm[near], dim=-1).mean()
    cell = res["sets"][set_name]["systems"][system]["0"]
    assert cell["cos_context_mean"] == pytest.approx(float(cos), abs=1e-6)
    assert torch.equal(greedy, model_predictions(ckpt, es, quant_decoding=("sample", 0.0, 1.0)))
    one_hot = model_predictions(ckpt, es, quant_decoding=("expected", 0.0, 1.0))
    torch.testing.assert_close(one_hot, greedy, atol=1e-5, rtol=0)
    other = replace(p, families=("base_lcm",))
    run_report(other, str(tmp_path / "rep2"), "ci")
    base_ckpt = tmp_path / "rep2" / "work" / run_dir.name / "base_lcm" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="not a Quant-LCM checkpoint"):
        model_predictions(base_ckpt, es, quant_decoding=("expected", 1.0, 1.0))


def test_paired_ca_gives_the_reports_cells_and_their_paired_difference(tmp_path):
    """experiments.pretraining.paired scores checkpoints on the report's windows with the
    report's document draws: each system's CA cell is the report's, and a system minus itself
    is exactly 0."""
    from dataclasses import replace

    from experiments.pretraining.paired import paired_ca

    systems = ("base_lcm", "base_lcm+context_mean")
    p = replace(PRESETS["ci"], families=systems, generate_docs=0, mi=False)
    rep = run_report(p, str(tmp_path / "rep"), "ci")
    run_dir = tmp_path / "rep" / "work" / f"runs_ci_steps{p.steps}_d{p.d_model}_seed{p.seed}"
    ckpts = {s: str(run_dir / s / "checkpoints" / "last.ckpt") for s in systems}
    pairs = [("base_lcm+context_mean", "base_lcm"), ("base_lcm", "base_lcm")]
    eval_dirs = rep["setup"]["eval_dirs"]
    res = paired_ca(ckpts, pairs, eval_dirs, p.window, p.bootstrap, p.seed)
    assert list(res["sets"]) == list(eval_dirs)
    for set_name, st in res["sets"].items():
        rows = rep["sets"][set_name]["systems"]
        for s in systems:
            assert st["ca"][s] == rows[s]["ca"]
        diff = st["differences"]["base_lcm+context_mean - base_lcm"]
        a, b = rows["base_lcm+context_mean"]["ca"], rows["base_lcm"]["ca"]
        assert diff["mean"] == pytest.approx(a["mean"] - b["mean"], abs=1e-12)
        assert diff["lo"] <= diff["mean"] <= diff["hi"] and diff["n"] == a["n"]
        same = st["differences"]["base_lcm - base_lcm"]
        assert same == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": b["n"]}
    with pytest.raises(ValueError, match="no checkpoint named 'x'"):
        paired_ca(ckpts, [("x", "base_lcm")], eval_dirs)
