"""The ``input_noise`` option: while training, Gaussian noise of std sigma (normalized space, per
coordinate) is added to the context concepts the network reads, never to the targets, the
residual base, or any evaluation path; sigma 0 is the loss without the option, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers_train import cli_printed
from test_residual import FAMILIES, IDS, D, _objective
from torch import nn

from experiments.pretraining.noise_candidates import choose
from experiments.pretraining.report import PRESETS, fit_record
from lcm.models import BaseLCMConfig, RefinerConfig, TwoTowerConfig
from lcm.objectives import MSEObjective
from lcm.objectives.base import add_input_noise, masked_mse, residual_base, shift_right
from lcm.train.module import BaseLCMModule, RefinerModule, TwoTowerModule

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _batch():
    x = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[True] * 6, [True, True, True, True, False, False]])
    return {"x": x, "mask": mask, "loss_mask": mask.clone()}


def _perturbed(objective):
    """``objective`` with every weight moved off its initialization: Two-Tower's zero-initialized
    gates otherwise hide the context from a fresh denoiser."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in objective.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return objective


def _loss(objective, batch, sigma, seed=7):
    objective.input_noise = sigma
    return objective.loss(batch, torch.Generator().manual_seed(seed)).loss


@pytest.mark.parametrize("cfg,objective_cls", FAMILIES, ids=IDS)
def test_sigma_zero_is_the_loss_without_the_option(cfg, objective_cls):
    objective = _objective(cfg, objective_cls, "context_mean").train()
    batch = _batch()
    assert objective.input_noise == 0.0  # the default
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert objective.network_input(batch, g) is batch["x"]  # the same tensor, nothing drawn
    assert torch.equal(g.get_state(), state)
    a, b = _loss(objective, batch, 0.0), _loss(objective, batch, 0.0)
    assert torch.equal(a, b)
    if objective_cls is MSEObjective:  # the loss as written before the option
        y = objective.model(batch["x"], batch["mask"])
        pred = shift_right(y + residual_base(batch["x"], batch["mask"], "context_mean"))
        weight = batch["mask"].clone()
        weight[:, 0] = False
        assert torch.equal(a, masked_mse(pred, batch["x"], weight))


@pytest.mark.parametrize("cfg,objective_cls", FAMILIES, ids=IDS)
def test_noise_changes_the_training_loss_but_not_evaluation(cfg, objective_cls):
    objective = _perturbed(_objective(cfg, objective_cls, "context_mean")).train()
    batch = _batch()
    clean = _loss(objective, batch, 0.0)
    noisy = _loss(objective, batch, 0.5)
    assert torch.isfinite(noisy) and abs(float((noisy - clean).detach())) > 1e-4
    assert torch.equal(noisy, _loss(objective, batch, 0.5))  # reproducible from the generator
    assert not torch.equal(noisy, _loss(objective, batch, 0.5, seed=8))  # and drawn from it
    objective.eval()
    assert objective.network_input(batch, torch.Generator()) is batch["x"]  # eval: never noised
    assert torch.equal(_loss(objective, batch, 0.5), _loss(objective, batch, 0.0))
    objective.input_noise = 0.5
    noisy_pred = objective.predict_all(batch, torch.Generator().manual_seed(5))
    noisy_next = objective.predict_next(batch["x"], batch["mask"], torch.Generator().manual_seed(5))
    objective.input_noise = 0.0
    assert torch.equal(noisy_pred, objective.predict_all(batch, torch.Generator().manual_seed(5)))
    want = objective.predict_next(batch["x"], batch["mask"], torch.Generator().manual_seed(5))
    assert torch.equal(noisy_next, want)


class _Recorder(nn.Module):
    """A Base-LCM stand-in that outputs zeros and remembers what it read."""

    def forward(self, x, mask=None, cache=None):
        self.seen = x.detach().clone()
        return torch.zeros_like(x)


def test_only_real_context_concepts_are_noised_and_targets_and_base_stay_clean():
    objective = MSEObjective(_Recorder(), "context_mean").train()
    objective.input_noise = 0.3
    batch = _batch()
    sep = torch.zeros_like(batch["mask"])
    sep[0, 2] = True  # a separator slot: a marker, not a concept
    batch["sep_mask"] = sep
    out = objective.loss(batch, torch.Generator().manual_seed(0))
    seen, x = objective.model.seen, batch["x"]
    noised = batch["mask"] & ~sep
    assert torch.equal(seen[~noised], x[~noised])  # padding and the separator slot
    moved = (seen - x)[noised]  # (N, D)
    assert bool((moved.abs() > 0).all())
    # the network's output is 0, so the prediction is the residual base: from the clean x
    assert torch.equal(out.pred, shift_right(residual_base(x, batch["mask"], "context_mean")))
    assert torch.equal(out.target, x)
    # the draw is sigma * N(0, 1) from the generator, per coordinate
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen[noised], (x + 0.3 * eps)[noised])
    big = torch.zeros(4000, 1, D)
    spread = add_input_noise(big, 0.3, None, torch.Generator().manual_seed(1))
    assert abs(float(spread.std()) - 0.3) < 0.01 and abs(float(spread.mean())) < 0.01


def test_modules_pass_record_and_check_input_noise():
    arch = BaseLCMConfig.from_name("tiny", sonar_dim=D)
    module = BaseLCMModule(arch=arch, residual="context_mean", input_noise=0.2)
    assert module.hparams["input_noise"] == 0.2  # saved in the checkpoint's hparams
    assert module.objective.input_noise == 0.2
    assert module.eval_objective().input_noise == 0.2  # EMA-less: the same objective
    assert BaseLCMModule(arch=arch).objective.input_noise == 0.0
    two = TwoTowerModule(arch=TwoTowerConfig.from_name("tiny", sonar_dim=D), input_noise=0.1)
    refiner = RefinerModule(arch=RefinerConfig.from_name("tiny", sonar_dim=D), input_noise=0.4)
    assert two.objective.input_noise == 0.1 and refiner.objective.input_noise == 0.4
    ema = BaseLCMModule(arch=arch, input_noise=0.2, ema_decay=0.9)
    assert ema.eval_objective().input_noise == 0.2
    for bad in (-0.1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="input_noise must be"):
            BaseLCMModule(arch=arch, input_noise=bad)
        with pytest.raises(ValueError, match="input_noise must be"):
            module.objective.input_noise = bad


def test_cli_parses_input_noise_and_the_printed_yaml_reads_back(tmp_path, capsys):
    args = [
        "fit",
        "--config",
        str(CONFIGS / "trainer" / "default.yaml"),
        "--config",
        str(CONFIGS / "base_lcm" / "tiny.yaml"),
    ]
    printed = cli_printed(capsys, [*args, "--model.init_args.input_noise=0.2", "--print_config"])
    assert yaml.safe_load(printed)["model"]["init_args"]["input_noise"] == 0.2
    saved = tmp_path / "config.yaml"
    saved.write_text(printed)
    reread = cli_printed(capsys, ["fit", "--config", str(saved), "--print_config"])
    assert yaml.safe_load(reread)["model"]["init_args"]["input_noise"] == 0.2
    default = cli_printed(capsys, [*args, "--print_config"])
    assert yaml.safe_load(default)["model"]["init_args"]["input_noise"] == 0.0
    wrong_type = [*args, "--model.init_args.input_noise=lots", "--print_config"]
    cli_printed(capsys, wrong_type, ok=False)  # typed float
    help_text = " ".join(cli_printed(capsys, ["fit", "--model.help", "BaseLCMModule"]).split())
    assert "--model.input_noise INPUT_NOISE" in help_text  # the docstring is the help
    assert "never in validation, test, predict or generation" in help_text


def test_report_records_and_passes_noise_only_when_set(tmp_path):
    p = PRESETS["full"]
    plain = fit_record("base_lcm", p, str(tmp_path))
    assert "input_noise" not in plain  # records from before the option still match
    noisy = fit_record("base_lcm", p.__class__(**{**p.__dict__, "input_noise": 0.1}), str(tmp_path))
    assert noisy["input_noise"] == 0.1 and {**noisy, "input_noise": None} != plain


def test_selection_rule_keeps_zero_unless_beaten_by_the_margin():
    assert choose({0.0: 0.900, 0.1: 0.9019, 0.2: 0.8}) == 0.0  # gain under 0.002
    assert choose({0.0: 0.900, 0.1: 0.9020, 0.2: 0.9030}) == 0.2  # the highest
    assert choose({0.0: 0.900, 0.05: 0.905, 0.4: 0.905}) == 0.05  # a tie: the smaller sigma
    assert choose({0.0: 0.910, 0.1: 0.905}) == 0.0
    with pytest.raises(ValueError, match="sigma 0"):
        choose({0.1: 0.9})
