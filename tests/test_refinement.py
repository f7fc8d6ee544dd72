"""Tests of the refinement evidence pipeline: the difficulty curriculum
(experiments.refinement.tasks.curriculum), Lightning training on tasks
(experiments.refinement.tasks.train) and the report
(experiments.refinement.report, ``--preset ci``). CPU, well under a minute."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch

from experiments.refinement.tasks import ChainToRoot, NoisyCleanup
from experiments.refinement.tasks.curriculum import Curriculum, CurriculumConfig
from experiments.refinement.tasks.train import (
    CurriculumCallback,
    TargetOnlyRefinerObjective,
    TaskDataModule,
    TaskModule,
    TaskStream,
    build_objective,
    fit_on_task,
)
from lcm.objectives.refiner import RefinerObjective

D = 16


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- curriculum --------------------------------------------------------------------------------


def test_curriculum_threshold_min_and_max_steps():
    c = Curriculum(CurriculumConfig(levels=(1, 2, 3), threshold=0.8, min_steps=100, max_steps=500))
    assert c.unlocked == (1.0,) and c.newest == 1.0 and not c.finished
    assert not c.update(50, {1.0: 0.95})  # too early: min_steps
    assert not c.update(100, {1.0: 0.79})  # below the threshold
    assert not c.update(100, {2.0: 0.99})  # a level that is not the newest does not count
    assert c.update(100, 0.8)  # a float is the newest level's accuracy
    assert c.unlocked == (1.0, 2.0) and c.stage_start == 100
    assert not c.update(599, None)
    assert c.update(600, None)  # max_steps after the stage began, whatever the accuracy
    assert c.finished and c.unlocked == (1.0, 2.0, 3.0)
    assert not c.update(10_000, 1.0)  # nothing left to unlock
    assert [h["reason"] for h in c.history] == ["threshold", "max_steps"]
    assert c.history[0] == dict(step=100, level=1.0, accuracy=0.8, reason="threshold")


def test_curriculum_step_schedule_and_state_round_trip():
    cfg = CurriculumConfig(levels=(1, 2, 3, 4), start=2, threshold=None, max_steps=10)
    c = Curriculum(cfg)
    assert cfg.num_stages == 3 and c.unlocked == (1.0, 2.0)
    advanced = [s for s in range(0, 40) if c.update(s, 1.0)]
    assert advanced == [10, 20] and c.finished
    d = Curriculum(cfg)
    d.load_state_dict(c.state_dict())
    assert d.stage == c.stage and d.stage_start == 20 and d.history == c.history
    with pytest.raises(ValueError):
        Curriculum(CurriculumConfig(levels=(1, 2))).load_state_dict(c.state_dict())


def test_curriculum_batch_mix():
    c = Curriculum(CurriculumConfig(levels=(1, 2, 3), start=2, newest_share=0.6))
    # Stage 0 with two levels is uniform; after an advance the newest level gets 0.6.
    assert c.probabilities() == {1.0: 0.5, 2.0: 0.5}
    c.stage = 1
    p = c.probabilities()
    assert p[3.0] == pytest.approx(0.6) and p[1.0] == p[2.0] == pytest.approx(0.2)
    counts = c.level_counts(20_000, gen())
    assert sum(counts.values()) == 20_000
    assert counts[3.0] / 20_000 == pytest.approx(0.6, abs=0.015)
    assert c.level_counts(64, gen(1)) == c.level_counts(64, gen(1))
    uniform = Curriculum(CurriculumConfig(levels=(1, 2), start=2, newest_share=None))
    assert uniform.probabilities() == {1.0: 0.5, 2.0: 0.5}


@pytest.mark.parametrize(
    "kw",
    [
        dict(levels=()),
        dict(levels=(1, 1)),
        dict(start=0),
        dict(start=4),
        dict(threshold=None, max_steps=None),
        dict(newest_share=0.0),
        dict(max_steps=0),
    ],
)
def test_curriculum_rejects_bad_configs(kw):
    with pytest.raises(ValueError):
        CurriculumConfig(**kw)


# ---- streaming data ----------------------------------------------------------------------------


def test_stream_is_seeded_and_follows_the_curriculum():
    task = ChainToRoot(D, n_items=6, max_hops=3)
    cur = Curriculum(CurriculumConfig(levels=(1, 2, 3), newest_share=0.5))
    a = iter(TaskStream(task, 32, cur, seed=7))
    b = iter(TaskStream(task, 32, cur, seed=7))
    first = [next(a) for _ in range(3)]
    for batch in first:
        assert set(batch["difficulty"].tolist()) == {1.0}
        torch.testing.assert_close(batch["x"], next(b)["x"])
    assert [batch["batch_id"] for batch in first] == [0, 1, 2]
    assert not torch.equal(first[0]["x"], first[1]["x"])  # fresh examples every batch
    cur.update(10_000, None)  # max_steps: now levels 1 and 2, half of each batch at 2
    later = next(a)["difficulty"]
    assert set(later.tolist()) == {1.0, 2.0}
    resumed = TaskStream(task, 32, cur, seed=7, start=3)
    torch.testing.assert_close(
        next(iter(resumed))["x"], TaskStream(task, 32, cur, seed=7).make(3)["x"]
    )
    plain = next(iter(TaskStream(task, 16, None, levels=(3.0,), seed=0)))
    assert set(plain["difficulty"].tolist()) == {3.0}


def test_datamodule_validation_set_is_fixed_per_level():
    task = NoisyCleanup(D, n_items=4)
    dm = TaskDataModule(task, val_levels=(0.25, 1.0), val_size=10, val_batch_size=4, seed=3)
    batches = dm.val_batches()
    assert [len(b["x"]) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert {float(b["difficulty"][0]) for b in batches} == {0.25, 1.0}
    again = TaskDataModule(task, val_levels=(0.25, 1.0), val_size=10, val_batch_size=4, seed=3)
    torch.testing.assert_close(batches[-1]["x"], again.val_batches()[-1]["x"])
    assert dm.train_levels == task.difficulties


# ---- Lightning training -------------------------------------------------------------------------


def test_build_objective_families():
    ref = build_objective("refiner", sonar_dim=D, objective_args={"mean_iterations": 4})
    assert isinstance(ref, RefinerObjective) and ref.mean_iterations == 4
    base = build_objective("base_lcm", sonar_dim=D, model_overrides={"n_layers": 3})
    assert type(base).__name__ == "MSEObjective" and len(base.model.transformer.layers) == 3
    with pytest.raises(ValueError):
        build_objective("two_tower", sonar_dim=D)
    with pytest.raises(ValueError):
        build_objective("base_lcm", sonar_dim=D, objective_args={"init": "embed"})


def _fit(seed: int, steps: int, curriculum: CurriculumConfig | None, **module_kw):
    torch.manual_seed(seed)
    task = NoisyCleanup(D, n_items=4, noise_levels=(0.1, 0.5, 1.0))
    data = TaskDataModule(task, batch_size=32, curriculum=curriculum, val_size=64, seed=seed)
    module = TaskModule(sonar_dim=D, lr=3e-3, warmup_steps=5, seed=seed, **module_kw)
    trainer = fit_on_task(module, data, max_steps=steps, probe_every=10, probe_size=64)
    return module, data, trainer


def test_training_learns_is_deterministic_and_runs_the_curriculum():
    cur = CurriculumConfig(levels=(0.1, 0.5, 1.0), threshold=0.5, min_steps=10, max_steps=30)
    kw = dict(family="base_lcm", model_overrides={"n_layers": 1})
    module, data, trainer = _fit(0, 60, cur, **kw)
    assert trainer.global_step == 60
    # Low-noise clean-up is learnt in 60 steps: far above chance (0.25).
    tb = data.task.sample(512, difficulty=0.1, generator=gen(11))
    assert module.task_scores(tb).accuracy > 0.6
    # The curriculum advanced through the callback, by threshold or by max_steps.
    assert data.curriculum.finished
    steps = [h["step"] for h in data.curriculum.history]
    assert steps == sorted(steps) and all(s % 10 == 0 for s in steps)
    probes = next(c for c in trainer.callbacks if isinstance(c, CurriculumCallback)).probes
    assert probes[0]["step"] == 10 and probes[0]["level"] == 0.1
    # Same seed, same everything.
    again, data2, _ = _fit(0, 60, cur, **kw)
    for p, q in zip(module.parameters(), again.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    assert data2.curriculum.history == data.curriculum.history


def test_refiner_module_validates_per_level_and_logs_r():
    module, data, trainer = _fit(
        1,
        8,
        None,
        objective_args={"mean_iterations": 3, "backprop_depth": 2, "init": "embed"},
        eval_args={"num_iterations": 2},
    )
    assert "train/r" in trainer.callback_metrics  # the refiner's drawn iteration count
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = L.Trainer(accelerator="cpu", **quiet).validate(module, data, verbose=False)[0]
    assert {"val/acc", "val/acc_0.1", "val/acc_0.5", "val/acc_1", "val/cosine"} <= set(metrics)
    assert 0.0 <= metrics["val/acc"] <= 1.0
    mean = sum(metrics[f"val/acc_{v:g}"] for v in (0.1, 0.5, 1.0)) / 3
    assert metrics["val/acc"] == pytest.approx(mean, abs=1e-6)  # equal counts per level
    # task_scores honours overrides of the refiner's predict_next and restores train mode.
    module.train()
    tb = data.task.sample(8, difficulty=0.5, generator=gen(2))
    s1 = module.task_scores(tb, num_iterations=1)
    assert module.training and s1.correct.shape == (8,)
    assert not math.isnan(s1.mean_cosine)


def test_target_only_refiner_loss_equals_the_full_loss():
    """Refining only the answer's query position gives the parent's loss and gradients."""
    tb = ChainToRoot(D, n_items=6, max_hops=3).sample(8, generator=gen(4))
    torch.manual_seed(0)
    fast = build_objective("refiner", sonar_dim=D, objective_args={"init": "embed"})
    assert isinstance(fast, TargetOnlyRefinerObjective)
    full = RefinerObjective(fast.model, init="embed", backprop_depth=fast.backprop_depth)
    params = list(fast.parameters())
    for r in (1, 6):
        a, b = fast.loss(tb.batch(), num_iterations=r), full.loss(tb.batch(), num_iterations=r)
        torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=0)
        assert torch.equal(a.weight, b.weight) and a.num_iterations == r
        w = a.weight
        torch.testing.assert_close(a.pred[w], b.pred[w], atol=1e-5, rtol=0)
        ga = torch.autograd.grad(a.loss, params, allow_unused=True)
        gb = torch.autograd.grad(b.loss, params, allow_unused=True)
        for x, y in zip(ga, gb):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-4)
    # Two targets in a row: falls back to the parent's loss (all positions refined).
    batch = {**tb.batch(), "loss_mask": tb.mask.clone()}
    torch.testing.assert_close(
        fast.loss(batch, num_iterations=3).loss, full.loss(batch, num_iterations=3).loss
    )


# ---- the report --------------------------------------------------------------------------------


def test_statistics_helpers_by_hand():
    from experiments.refinement.report import average_ranks, pearson, spearman

    torch.testing.assert_close(
        average_ranks(torch.tensor([10.0, 20.0, 10.0, 30.0, 20.0])),
        torch.tensor([1.5, 3.5, 1.5, 5.0, 3.5], dtype=torch.float64),
    )
    assert spearman(
        torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 25, 100])
    ) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    # Ties: ranks (1.5, 1.5, 3) against (1, 2, 3): Pearson of those = sqrt(3)/2.
    x, y = torch.tensor([5.0, 5.0, 7.0]), torch.tensor([1.0, 2.0, 3.0])
    assert spearman(x, y) == pytest.approx(math.sqrt(3) / 2)
    assert pearson(torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 4, 7])) == pytest.approx(
        0.9933992677987828
    )
    assert math.isnan(pearson(torch.ones(4), torch.arange(4.0)))


def test_report_ci_preset_end_to_end(tmp_path):
    from experiments.refinement.report import PRESETS, main

    main(["--out_dir", str(tmp_path), "--preset", "ci", "--seed", "3"])
    res = json.loads((tmp_path / "results.json").read_text())
    cfg = PRESETS["ci"]
    for name in ("report.md", "acc_vs_r.png", "acc_vs_exit.png", "exit_steps.png", "training.png"):
        assert (tmp_path / name).stat().st_size > 500
    m = res["matching"]
    # Equal parameters within one layer's worth; equal FLOPs at the mean training r.
    layer = m["equal_flops_params"] - m["equal_params_params"]
    layer /= max(m["equal_flops_layers"] - m["equal_params_layers"], 1)
    assert abs(m["equal_params_params"] - m["refiner_params"]) <= layer / 2 + 1
    assert m["equal_flops_layers"] > m["equal_params_layers"]
    per_layer = (m["equal_flops_flops"] - m["equal_params_flops"]) / (
        m["equal_flops_layers"] - m["equal_params_layers"]
    )
    assert abs(m["equal_flops_flops"] - m["refiner_flops_per_position_at_mean_r"]) <= per_layer
    ref = res["refiner"]
    levels = [str(v) for v in cfg.test_levels]
    assert set(ref["fixed_r"]) == {str(r) for r in cfg.r_values}
    for r in cfg.r_values:
        assert set(ref["fixed_r"][str(r)]) == set(levels)
    assert len(ref["exit"]) == len(set(cfg.taus) | {cfg.headline_tau})
    for row in ref["exit"].values():
        assert 1 <= row["mean_exit"] <= cfg.max_iterations and 0 <= row["accuracy"] <= 1
    assert sum(len(v) for v in ref["exit_steps"].values()) == cfg.eval_size * len(levels)
    for key in ("equal_params", "equal_flops"):
        assert set(res[key]["accuracy"]) == set(levels)
        assert res["training"][key]["params"] > 0
    assert res["training"]["refiner"]["probes"]  # the curriculum probed during training
    assert set(res["verdict"]["extrapolation"]) == {"3"}
    md = (tmp_path / "report.md").read_text()
    assert "| 3 | **extrap.** |" in md and "Spearman" in md
    assert "`python -m experiments.refinement.report --preset ci --seed 3`" in md  # how to rerun it
    assert res["config"]["seed"] == 3


@pytest.mark.slow
def test_refiner_extrapolates_in_depth_on_edge_chains():
    """The behaviour the refinement report measures, on a budget of seconds: trained on 1-3 hop
    chains only (edges encoding, no contextualizer layer), the refiner answers 5-hop chains when
    it iterates enough and cannot at r = 1, and its adaptive exit step grows with the hops."""
    from experiments.refinement.tasks.base import score

    task = ChainToRoot(2 * D, n_items=8, max_hops=5, encoding="edges")  # 16-dim node codes
    torch.manual_seed(0)
    module = TaskModule(
        "refiner",
        sonar_dim=2 * D,
        model_overrides=dict(ctx_layers=0, d_model=64, n_heads=2, ffn_dim=256),
        objective_args=dict(
            mean_iterations=4.0, backprop_depth=4, max_train_iterations=12, init="embed"
        ),
        lr=3e-3,
        warmup_steps=30,
    )
    data = TaskDataModule(task, batch_size=64, train_levels=(1.0, 2.0, 3.0), seed=0)
    fit_on_task(module, data, 1000)  # about 20 s on one core
    module.eval()
    objective = module.objective
    acc, exits = {}, {}
    for hops in (1, 5):
        tb = task.sample(300, difficulty=hops, generator=gen(50 + hops))
        x, mask = tb.prompt()
        for r in (1, 8):
            pred = objective.predict_next(x, mask, num_iterations=r)
            acc[hops, r] = score(pred, tb).accuracy
        pred, steps = objective.predict_next_with_exit(x, mask, max_iterations=16)
        exits[hops] = float(steps.float().mean())
    floor = task.no_chasing_accuracy(task.sample(300, difficulty=5, generator=gen(60)))
    assert acc[1, 1] > 0.9 and acc[1, 8] > 0.9  # the training difficulty, at any r
    assert acc[5, 1] < floor  # one iteration cannot reach a root 5 links up
    assert acc[5, 8] > 0.8 > floor  # iterating does, beyond the training difficulties
    assert exits[5] > exits[1] + 1.5  # it thinks longer on the deeper chains
