"""Training at scale on CPU: the FSDP unit is a transformer layer for every family, activation
checkpointing changes no number, and FSDP (FSDP2 on gloo, 2 processes) trains to the same
weights as DDP with a checkpoint that loads anywhere."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcm.models import FAMILIES, TRANSFORMER_LAYERS
from lcm.nn.attention import MultiheadAttention
from lcm.train.scale import _entry_points, _layer_units, checkpoint_layers

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_attention_of_every_family_sits_in_a_layer_unit(family):
    net = FAMILIES[family].from_name("tiny", sonar_dim=16).build()
    inside = {
        id(m)
        for layer in net.modules()
        if isinstance(layer, TRANSFORMER_LAYERS)
        for m in layer.modules()
    }
    attentions = [m for m in net.modules() if isinstance(m, MultiheadAttention)]
    assert attentions and all(id(m) in inside for m in attentions)
    units = _layer_units(net)
    assert len(units) == sum(isinstance(m, TRANSFORMER_LAYERS) for m in net.modules())
    entry = set(_entry_points(net))
    assert "forward" not in entry and "reset_parameters" not in entry
    if family == "two_tower":
        assert {"contextualize", "denoise", "precompute_cross_kv"} <= entry


def _base_lcm_grads(net, x, mask):
    net.zero_grad()
    loss = net(x, mask).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def _two_tower_grads(net, x, mask):
    net.zero_grad()
    t = torch.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2]) % 50
    loss = net(x, x + 0.1 * torch.ones_like(x), t, mask).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize(
    "family,grads", [("base_lcm", _base_lcm_grads), ("two_tower", _two_tower_grads)]
)
def test_activation_checkpointing_gives_the_same_loss_gradients_and_state_dict(family, grads):
    torch.manual_seed(0)
    cfg = FAMILIES[family].from_name("tiny", sonar_dim=16, dropout=0.1)
    net = cfg.build().train()
    x = torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 5:] = False
    wrapped = copy.deepcopy(net)
    assert checkpoint_layers(wrapped) == len(_layer_units(net))
    assert len(_layer_units(wrapped)) == len(_layer_units(net))  # the wrapper is the unit now
    torch.manual_seed(1)  # dropout masks: the recomputation replays the same RNG state
    loss_a, grads_a = grads(net, x, mask)
    torch.manual_seed(1)
    loss_b, grads_b = grads(wrapped, x, mask)
    assert torch.equal(loss_a, loss_b)
    assert len(grads_a) == len(grads_b)  # parameter names carry the wrapper: compare in order
    for (name, a), b in zip(grads_a.items(), grads_b.values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert list(wrapped.state_dict()) == list(net.state_dict())  # checkpoints are unchanged


def test_the_activation_checkpointing_callback_trains_to_the_same_weights(tmp_path, monkeypatch):
    from helpers_train import make_shards

    from lcm.train.cli import cli_main

    monkeypatch.setattr(sys, "argv", ["lcm"])
    shards = make_shards(tmp_path / "data", n_docs=20)

    def fit(root, *extra):
        cli = cli_main(
            ["fit", "--config", "configs/trainer/default.yaml", "--config",
             "configs/two_tower/tiny.yaml", f"--data.data_dir={shards}",
             f"--trainer.default_root_dir={root}", "--data.val_fraction=0", "--data.max_seq_len=8",
             "--data.max_concepts_per_batch=32", "--trainer.max_steps=3",
             "--trainer.enable_progress_bar=false", "--trainer.logger=false",
             "--model.init_args.arch.dropout=0.1", *extra]
        )  # fmt: skip
        wrapped = [m for m in cli.model.modules() if hasattr(m, "_checkpoint_wrapped_module")]
        assert len(wrapped) == (4 if extra else 0)  # tiny Two-Tower: 2 context + 2 denoiser
        return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

    plain = fit(tmp_path / "plain")
    checkpointed = fit(
        tmp_path / "ac", "--trainer.callbacks+=lcm.train.scale.ActivationCheckpointing"
    )
    assert list(plain) == list(checkpointed)
    for name, value in plain.items():
        torch.testing.assert_close(value, checkpointed[name], atol=1e-6, rtol=1e-5, msg=name)


def _fit(shards: Path, root: Path, *extra: str) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    args = [
        "fit", "--config", "configs/trainer/default.yaml", "--config",
        "configs/base_lcm/tiny.yaml", f"--data.data_dir={shards}",
        f"--trainer.default_root_dir={root}", "--data.val_fraction=0.2",
        "--data.max_seq_len=8", "--data.max_concepts_per_batch=40",
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.max_steps=4",
        "--trainer.val_check_interval=4", "--checkpoint.every_n_train_steps=4",
        "--model.init_args.optim.warmup_steps=2", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "lcm.train.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_fsdp_on_two_processes_trains_like_ddp(tmp_path):
    from helpers_train import HashCodec, make_shards

    from lcm.api import ConceptModel

    shards = make_shards(tmp_path / "data", n_docs=30)
    _fit(shards, tmp_path / "ddp", "--trainer.strategy=ddp")
    _fit(
        shards,
        tmp_path / "fsdp",
        "--trainer.strategy=lcm.train.scale.LCMFSDPStrategy",
        "--trainer.strategy.activation_checkpointing=true",
    )
    a = torch.load(tmp_path / "ddp/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "fsdp/checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    assert list(a["state_dict"]) == list(b["state_dict"])  # one full state dict, plain names
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][name], atol=1e-5, rtol=1e-4, msg=name)
    # the sharded run's checkpoint serves the API like any other
    model = ConceptModel.load(tmp_path / "fsdp/checkpoints/last.ckpt", codec=HashCodec())
    assert model.predict_concepts(["Token 3 is here."], "eng_Latn").concepts[0].shape[-1] == 16
