"""The EMA of the weights and its decay ramp ``min(decay, (1 + n) / (warmup + n))``: the default
ramp (warmup 10) is unchanged, and ``ema_warmup`` reaches it from the module and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers_train import cli_printed
from torch import nn

from lcm.models import BaseLCMConfig
from lcm.train.module import BaseLCMModule
from lcm.train.optim import EMA

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _scalar_ema(decay: float, warmup: int | None, weights: list[float]) -> list[float]:
    """The EMA of a one-number network that starts at 0 and then takes each of ``weights``."""
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.zero_()
    ema = EMA(net, decay) if warmup is None else EMA(net, decay, warmup)
    out = []
    for w in weights:
        with torch.no_grad():
            net.weight.fill_(w)
        ema.update(net)
        out.append(ema.model.weight.item())
    return out


def test_default_ramp_values():
    # d = 1/10, 2/11, then 3/12 = 0.25 capped at 0.2
    assert _scalar_ema(0.2, None, [1.0, 2.0, 3.0]) == pytest.approx([0.9, 1.8, 2.76], abs=1e-6)
    assert _scalar_ema(0.2, 10, [1.0, 2.0, 3.0]) == pytest.approx([0.9, 1.8, 2.76], abs=1e-6)


def test_no_ramp_and_equal_average_ramp_values():
    # warmup 1: d = decay from the first update
    assert _scalar_ema(0.5, 1, [1.0, 2.0, 3.0]) == pytest.approx([0.5, 1.25, 2.125], abs=1e-6)
    # warmup 2: the plain mean of the start (0) and every update so far, until the ramp meets
    # the decay after (2 * 0.9 - 1) / (1 - 0.9) = 8 updates; then d = 0.9: 0.9 * 4.5 + 0.1 * 10
    got = _scalar_ema(0.9, 2, [float(k) for k in range(1, 11)])
    means = [k / 2 for k in range(1, 10)]
    assert got == pytest.approx([*means, 5.05], abs=1e-5)
    ema = EMA(nn.Linear(1, 1), 0.995, warmup=2)
    assert ema.decay_at(197) < 0.995 and ema.decay_at(198) == 0.995


def test_default_ramp_is_bit_identical_to_the_old_formula():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    ema = EMA(net, 0.995)
    ref = [p.detach().clone() for p in net.parameters()]
    for n in range(40):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update(net)
        d = min(0.995, (1 + n) / (10 + n))  # the ramp before ema_warmup existed
        torch._foreach_lerp_(ref, [p.detach() for p in net.parameters()], 1.0 - d)
    assert int(ema.num_updates) == 40
    for got, want in zip(ema.model.parameters(), ref):
        assert torch.equal(got, want)


def test_the_default_ramp_hides_the_decay_in_1200_steps_and_a_short_ramp_does_not():
    # h38: every ema_decay >= 0.993 gave the same weights in the 1,200-step main job.
    for decay in (0.993, 0.995, 0.998):
        ramp = EMA(nn.Linear(1, 1), decay)
        assert all(ramp.decay_at(n) == (1 + n) / (10 + n) for n in range(1200))
    assert EMA(nn.Linear(1, 1), 0.995).decay_at(1199) == pytest.approx(0.99256, abs=1e-5)
    short = [EMA(nn.Linear(1, 1), d, warmup=2).decay_at(1199) for d in (0.995, 0.998)]
    assert short == [0.995, 0.998]


@pytest.mark.parametrize("warmup", [0, -3, 1.5, True])
def test_bad_warmup_is_refused(warmup):
    with pytest.raises(ValueError, match="ema_warmup"):
        EMA(nn.Linear(1, 1), 0.99, warmup)
    with pytest.raises(ValueError, match="ema_warmup"):
        BaseLCMModule(
            arch=BaseLCMConfig.from_name("tiny", sonar_dim=8), ema_decay=0.99, ema_warmup=warmup
        )


def test_module_passes_ema_warmup_and_records_it():
    arch = BaseLCMConfig.from_name("tiny", sonar_dim=8)
    module = BaseLCMModule(arch=arch, ema_decay=0.995, ema_warmup=2)
    assert module.ema_model.warmup == 2 and module.ema_model.decay == 0.995
    assert module.hparams["ema_warmup"] == 2
    default = BaseLCMModule(arch=arch, ema_decay=0.995)
    assert default.ema_model.warmup == 10 and default.hparams["ema_warmup"] == 10
    assert BaseLCMModule(arch=arch, ema_warmup=0).ema_model is None  # unused without a decay


def test_cli_parses_ema_warmup_and_documents_it(capsys):
    args = [
        "fit",
        "--config",
        str(CONFIGS / "trainer" / "default.yaml"),
        "--config",
        str(CONFIGS / "base_lcm" / "sft_source_lead.yaml"),
        "--model.init_args.ema_decay=0.995",
    ]
    printed = cli_printed(capsys, [*args, "--model.init_args.ema_warmup=2", "--print_config"])
    init = yaml.safe_load(printed)["model"]["init_args"]
    assert init["ema_warmup"] == 2 and init["ema_decay"] == 0.995
    printed = cli_printed(capsys, [*args, "--print_config"])
    assert yaml.safe_load(printed)["model"]["init_args"]["ema_warmup"] == 10
    wrong_type = [*args, "--model.init_args.ema_warmup=1.5", "--print_config"]
    cli_printed(capsys, wrong_type, ok=False)  # typed int
    help_text = " ".join(cli_printed(capsys, ["fit", "--model.help", "BaseLCMModule"]).split())
    assert "--model.ema_warmup EMA_WARMUP" in help_text  # the docstring is the help
    assert "1 turns the ramp off (the initialization keeps weight" in help_text
    assert "(type: int, default: 10)" in help_text
