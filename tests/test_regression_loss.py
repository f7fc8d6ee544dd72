"""Base-LCM's ``loss`` option (``mse`` | ``cosine`` | ``infonce``): values against hand
computations, gradients, the decoder-space map, and the option recorded in checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from lcm.models import BaseLCMConfig
from lcm.objectives import MSEObjective
from lcm.objectives.mse import regression_loss

D = 4
pytestmark = pytest.mark.usefixtures("plain_argv")  # sft_shards: tests/conftest.py


def _pair():
    # Two rows: row 0 has targets at positions 1 and 2, row 1 at position 1 only.
    pred = torch.tensor(
        [
            [[9.0, 9, 9, 9], [1, 0, 0, 0], [1, 1, 0, 0]],
            [[9.0, 9, 9, 9], [0, 0, 2, 0], [5, 5, 5, 5]],
        ]
    )
    target = torch.tensor(
        [
            [[0.0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]],
            [[0.0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]],
        ]
    )
    weight = torch.tensor([[False, True, True], [False, True, False]])
    return pred, target, weight


def test_mse_and_cosine_equal_hand_values():
    pred, target, weight = _pair()
    # squared errors summed over D then / D: 0, 1 / 4, (1 + 1) / 4
    mse = (0.0 + 1 / 4 + 2 / 4) / 3
    assert regression_loss(pred, target, weight, "mse").item() == pytest.approx(mse)
    # cosines: 1, 1/sqrt(2), 2/(2 sqrt(2)) = 1/sqrt(2)
    cos = ((1 - 1) + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert regression_loss(pred, target, weight, "cosine").item() == pytest.approx(cos)
    # cosine ignores the scale of the prediction; MSE does not
    assert regression_loss(3 * pred, target, weight, "cosine").item() == pytest.approx(cos)
    assert regression_loss(3 * pred, target, weight, "mse").item() != pytest.approx(mse)


def test_infonce_equals_hand_value_and_drops_duplicate_targets():
    pred, target, weight = _pair()
    t = 0.5
    # rows of cos(pred_i, target_j), targets j = (1,0,0,0), (0,1,0,0), (0,0,1,1)/sqrt2
    s = 1 / math.sqrt(2)
    cos = [[1.0, 0.0, 0.0], [s, s, 0.0], [0.0, 0.0, s]]
    ce = [-(cos[i][i] / t) + math.log(sum(math.exp(c / t) for c in cos[i])) for i in range(3)]
    value = regression_loss(pred, target, weight, "infonce", temperature=t)
    assert value.item() == pytest.approx(sum(ce) / 3, rel=1e-6)
    # A target equal to another one (e.g. each row's end-of-text) is not a negative of it: set
    # the third target to the first one.
    dup = target.clone()
    dup[1, 1] = dup[0, 1]
    value = regression_loss(pred, dup, weight, "infonce", temperature=t)
    # targets j = e0, e1, e0; pred rows p0=e0, p1=(1,1,0,0)/sqrt2, p2=e2
    hand = [
        -1 / t + math.log(math.exp(1 / t) + math.exp(0.0)),  # row 0: e0 vs e1 (dup dropped)
        -s / t + math.log(3 * math.exp(s / t)),  # row 1: e1 vs both copies of e0
        -0.0 + math.log(math.exp(0.0) + math.exp(0.0)),  # row 2: e0 vs e1 (dup dropped)
    ]
    assert value.item() == pytest.approx(sum(hand) / 3, rel=1e-6)


def test_losses_score_in_the_decoder_space_when_given_and_reject_bad_options():
    pred, target, weight = _pair()
    center = torch.tensor([1.0, -2.0, 0.5, 3.0])
    scale = torch.tensor([2.0, 0.5, 1.0, 4.0])

    def space(x):
        return x * scale + center

    for loss in ("cosine", "infonce"):
        mapped = regression_loss(pred, target, weight, loss, 0.1, space)
        direct = regression_loss(space(pred), space(target), weight, loss, 0.1)
        torch.testing.assert_close(mapped, direct)
        assert not torch.allclose(mapped, regression_loss(pred, target, weight, loss, 0.1))
    # MSE stays in the objective's (normalized) space
    torch.testing.assert_close(
        regression_loss(pred, target, weight, "mse", 0.1, space),
        regression_loss(pred, target, weight, "mse"),
    )
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        regression_loss(pred, target, weight, "l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature must be > 0"):
        regression_loss(pred, target, weight, "infonce", temperature=0.0)
    model = BaseLCMConfig.from_name("tiny", sonar_dim=D).build()
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        MSEObjective(model, loss="l1")  # type: ignore[arg-type]


@pytest.mark.parametrize("loss", ["cosine", "infonce"])
def test_gradient_reaches_every_network_parameter(loss):
    torch.manual_seed(0)
    objective = MSEObjective(
        BaseLCMConfig.from_name("tiny", sonar_dim=D).build(), "context_mean", loss, 0.1
    )
    x = torch.randn(3, 5, D)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 4] = False
    out = objective.loss({"x": x, "mask": mask, "loss_mask": mask})
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    for name, p in objective.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # a few steps lower it
    opt = torch.optim.Adam(objective.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        value = objective.loss({"x": x, "mask": mask, "loss_mask": mask}).loss
        first = value.item() if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    assert value.item() < first


def test_loss_option_is_recorded_in_the_checkpoint(sft_shards, tmp_path):
    from lcm.train import load_module
    from lcm.train.cli import cli_main

    root = tmp_path / "run"
    cli_main(
        [
            "fit",
            "--config",
            "configs/trainer/default.yaml",
            "--config",
            "configs/base_lcm/tiny_sft_residual.yaml",
            f"--data.data_dir={sft_shards}",
            f"--data.cache_dir={tmp_path / 'cache'}",
            f"--trainer.default_root_dir={root}",
            "--data.val_fraction=0.2",
            "--data.max_concepts_per_batch=64",
            "--trainer.max_steps=3",
            "--trainer.val_check_interval=3",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--model.init_args.loss=infonce",
            "--model.init_args.temperature=0.2",
        ]
    )
    module = load_module(str(root / "checkpoints" / "last.ckpt"))
    assert module.hparams["loss"] == "infonce" and module.hparams["temperature"] == 0.2
    assert module.objective.loss_kind == "infonce" and module.objective.temperature == 0.2
    # the loaded objective scores in the loaded normalizer's space
    assert module.objective.to_decoder_space == module.normalizer.denormalize
    assert not torch.equal(module.normalizer.scale, torch.ones_like(module.normalizer.scale))
