"""The ``residual_scale`` option: at prediction time a residual family predicts
``base + s * (prediction - base)``, in teacher-forced prediction and in cached generation alike;
s = 1 predicts exactly as trained and the loss never scales."""

from __future__ import annotations

import pytest
import torch

# The residual families and their tiny objectives are test_residual.py's.
from test_residual import FAMILIES, IDS, D, _objective

from lcm.api import Settings, generation_options
from lcm.generation import generate, make_step
from lcm.models import BaseLCMConfig, TwoTowerConfig
from lcm.normalizer import RobustNormalizer
from lcm.objectives import MSEObjective
from lcm.objectives.base import residual_base, scale_residual, shift_right


@pytest.fixture(scope="module")
def normalizer():
    torch.manual_seed(0)
    return RobustNormalizer.fit(torch.randn(200, D) * 2 + 1)


def _batch():
    torch.manual_seed(2)
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    return {"x": x, "mask": mask, "loss_mask": mask}


def _predict_all(objective, batch, scale):
    objective.residual_scale = scale
    return objective.predict_all(batch, torch.Generator().manual_seed(5))


def test_scale_residual_formula_and_identity():
    pred, base = torch.randn(3, D), torch.randn(3, D)
    assert scale_residual(pred, base, 1.0) is pred  # bit-identical: the same tensor
    assert scale_residual(pred, None, 3.0) is pred
    torch.testing.assert_close(scale_residual(pred, base, 2.5), base + 2.5 * (pred - base))


@pytest.mark.parametrize("cfg,objective_cls", FAMILIES, ids=IDS)
def test_scale_one_is_bit_identical_and_scale_s_scales_the_correction(cfg, objective_cls):
    objective = _objective(cfg, objective_cls, "context_mean")
    batch = _batch()
    assert objective.residual_scale == 1.0  # the default
    one = _predict_all(objective, batch, 1.0)
    if objective_cls is MSEObjective:  # as before the option: network output plus base
        y = objective.model(batch["x"], batch["mask"])
        before = shift_right(y + residual_base(batch["x"], batch["mask"], "context_mean"))
        assert torch.equal(one, before)
    base = shift_right(residual_base(batch["x"], batch["mask"], "context_mean"))
    for s in (1.5, 3.0):
        got = _predict_all(objective, batch, s)
        want = base + s * (one - base)
        valid = batch["mask"].clone()
        valid[:, 0] = False  # position 0 has no context (diffusion: unconditional, unscaled)
        torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[:, 0], one[:, 0])
        assert not torch.allclose(got[valid], one[valid], atol=1e-3)
    # the loss is unchanged by the prediction-time scale
    objective.residual_scale = 1.0
    a = objective.loss(batch, torch.Generator().manual_seed(7)).loss
    objective.residual_scale = 4.0
    b = objective.loss(batch, torch.Generator().manual_seed(7)).loss
    assert torch.equal(a, b)


@pytest.mark.parametrize("cfg,objective_cls", FAMILIES, ids=IDS)
def test_cached_step_equals_teacher_forced_prediction_at_a_scale(cfg, objective_cls, normalizer):
    objective = _objective(cfg, objective_cls, "context_mean")
    objective.residual_scale = 2.0
    x = torch.randn(2, 4, D)
    mask = torch.ones(2, 4, dtype=torch.bool)
    want = torch.stack(
        [
            objective.predict_next(x[i : i + 1], mask[i : i + 1], torch.Generator().manual_seed(i))[
                0
            ]
            for i in range(2)
        ]
    )
    prompts = [normalizer.denormalize(x[i]) for i in range(2)]
    for use_cache in (True, False):
        step = make_step(objective, use_cache=use_cache)
        assert step.residual_scale == 2.0  # from the objective
        gen = generate(
            step,
            prompts,
            normalizer,
            max_new_concepts=1,
            repeat_threshold=2.0,
            generator=[torch.Generator().manual_seed(i) for i in range(2)],
        )
        got = torch.stack([c[0] for c in gen.concepts])
        torch.testing.assert_close(got, normalizer.denormalize(want), atol=1e-4, rtol=1e-4)
    # and the scaled generation is base + 2 * (unscaled - base), from the same noise
    one = make_step(objective, residual_scale=1.0)
    assert one.residual_scale == 1.0  # a per-call override
    plain = generate(
        one,
        prompts,
        normalizer,
        max_new_concepts=1,
        repeat_threshold=2.0,
        generator=[torch.Generator().manual_seed(i) for i in range(2)],
    )
    plain_n = normalizer.normalize(torch.stack([c[0] for c in plain.concepts]))
    base = x.mean(dim=1)
    torch.testing.assert_close(want, base + 2.0 * (plain_n - base), atol=1e-4, rtol=1e-4)


def test_residual_scale_is_validated_recorded_and_overridable():
    from lcm.train.module import BaseLCMModule, TwoTowerModule

    arch = BaseLCMConfig.from_name("tiny", sonar_dim=D)
    module = BaseLCMModule(arch=arch, residual="context_mean", residual_scale=2.0)
    assert module.hparams["residual_scale"] == 2.0  # saved in the checkpoint's hparams
    assert module.objective.residual_scale == 2.0
    assert BaseLCMModule(arch=arch, residual="last").objective.residual_scale == 1.0
    two = TwoTowerModule(
        arch=TwoTowerConfig.from_name("tiny", sonar_dim=D),
        residual="context_mean",
        residual_scale=1.5,
    )
    assert two.objective.residual_scale == 1.5
    assert make_step(two.objective).residual_scale == 1.5
    assert make_step(two.objective, residual_scale=3.0).residual_scale == 3.0
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="residual_scale must be"):
            BaseLCMModule(arch=arch, residual="context_mean", residual_scale=bad)
        with pytest.raises(ValueError, match="residual_scale must be"):
            module.objective.residual_scale = bad
    with pytest.raises(ValueError, match="needs a residual"):
        BaseLCMModule(arch=arch, residual_scale=2.0)
    with pytest.raises(ValueError, match="needs a residual"):
        make_step(BaseLCMModule(arch=arch).objective, residual_scale=2.0)
    assert generation_options(Settings(residual_scale=2.5))["residual_scale"] == 2.5
    with pytest.raises(ValueError, match="residual_scale must be > 0"):
        Settings(residual_scale=0.0)


def test_residual_scale_round_trips_through_a_checkpoint(tmp_path):
    import lightning as L

    from lcm.train.module import BaseLCMModule, load_module

    arch = BaseLCMConfig.from_name("tiny", sonar_dim=D)
    module = BaseLCMModule(arch=arch, residual="context_mean", residual_scale=2.0)
    module.normalizer_ready.fill_(True)
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0
    )
    trainer.strategy.connect(module)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_module(str(path))
    assert loaded.objective.residual_scale == 2.0  # the checkpoint's setting
    loaded.objective.residual_scale = 1.0  # overridden on the loaded module
    x = torch.randn(1, 4, D)
    base = x.mean(dim=1)  # the context mean
    at_two = module.objective.predict_next(x)
    torch.testing.assert_close(
        loaded.objective.predict_next(x), base + (at_two - base) / 2.0, atol=1e-5, rtol=1e-5
    )
