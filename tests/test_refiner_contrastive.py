"""The refiner's ``contrastive_weight``: the InfoNCE term of Base-LCM
(:class:`lcm.objectives.mse.ContrastiveTerm`) added to its MSE on the prediction the MSE regresses
(readout after r iterations, plus the base with a residual). Off by default, and then the old loss
bit for bit."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from test_contrastive_weight import _batch as contrastive_batch

from lcm.models.refiner import RefinerConfig
from lcm.objectives.base import masked_mse, residual_base, shift_right, target_weight
from lcm.objectives.mse import ContrastiveTerm, MSEObjective, regression_loss
from lcm.objectives.refiner import RefinerObjective

pytestmark = pytest.mark.usefixtures("plain_argv")

D = 8


_batch = partial(contrastive_batch, dim=D)  # Base-LCM's batch, at this file's width


def _objective(weight: float = 0.0, residual: str = "none", **kw) -> RefinerObjective:
    torch.manual_seed(0)
    model = RefinerConfig.from_name("tiny", sonar_dim=D).build()
    return RefinerObjective(
        model, backprop_depth=2, residual=residual, contrastive_weight=weight, **kw
    )


def _by_hand(obj: RefinerObjective, batch, r: int, seed: int):
    """The refiner's loss as it was before the option (module docstring): prediction aligned to
    targets, weight, masked MSE; the random initial state from generator(seed)."""
    model, x, mask = obj.model, batch["x"], batch["mask"]
    T = x.shape[1]
    inject, ctx = model.contextualize(x, mask)
    kv = model.precompute_cross_kv(ctx)
    cmask = model.cross_mask(mask, T, T, x.device)
    g = torch.Generator().manual_seed(seed)
    state = model.init_state(tuple(inject.shape[:-1]), g, device=x.device, dtype=inject.dtype)
    k = min(obj.backprop_depth, r)
    with torch.no_grad():
        state = model.iterate(state, inject, kv, r - k, cmask)
    state = model.iterate(state.detach(), inject, kv, k, cmask)
    y = model.readout(state)
    base = residual_base(x, mask, obj.residual)
    pred = shift_right(y if base is None else y + base)
    weight = target_weight(batch).clone()
    weight[:, 0] = False
    return pred, weight, masked_mse(pred, x, weight)


def _grads(obj):
    return [p.grad.clone() if p.grad is not None else None for p in obj.parameters()]


@pytest.mark.parametrize("residual", ["none", "context_mean"])
def test_default_off_is_the_old_loss_bit_for_bit_with_the_same_gradient(residual):
    batch = _batch()
    obj = _objective(residual=residual)  # contrastive_weight not given
    assert (obj.contrastive_weight, obj.contrastive_queue, obj.temperature) == (0.0, 0, 0.05)
    out = obj.loss(batch, torch.Generator().manual_seed(7), num_iterations=5)
    pred, weight, mse = _by_hand(obj, batch, 5, 7)
    assert torch.equal(out.pred, pred) and torch.equal(out.weight, weight)
    assert torch.equal(out.loss, mse)
    out.loss.backward()
    got = _grads(obj)
    obj.zero_grad()
    _by_hand(obj, batch, 5, 7)[2].backward()
    for a, p in zip(got, obj.parameters(), strict=True):
        assert (a is None and p.grad is None) or torch.equal(a, p.grad)
    # the drawn r and the random state use the generator exactly as before
    a = obj.loss(batch, torch.Generator().manual_seed(3))
    b = _objective(residual=residual).loss(batch, torch.Generator().manual_seed(3))
    assert a.num_iterations == b.num_iterations and torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("residual", ["none", "context_mean"])
def test_weighted_term_is_infonce_of_the_regressed_prediction(residual):
    batch, w = _batch(1), 0.5
    on = _objective(w, residual, temperature=0.1)
    off = _objective(0.0, residual, temperature=0.1)
    out_on = on.loss(batch, torch.Generator().manual_seed(2), num_iterations=6)
    out_off = off.loss(batch, torch.Generator().manual_seed(2), num_iterations=6)
    pred, weight, mse = _by_hand(on, batch, 6, 2)
    assert torch.equal(out_on.pred, pred)  # the term changes no prediction
    term = regression_loss(pred, batch["x"], weight, "infonce", 0.1)
    assert term.item() > 0.1  # an untrained network ranks far from perfectly
    torch.testing.assert_close(out_on.loss, mse + w * term)
    torch.testing.assert_close(out_on.loss - out_off.loss, w * term)
    # the term's gradient reaches the postnet and, through the last k, the prenet
    on.zero_grad()
    (out_on.loss - mse).backward()
    grads = dict(on.model.named_parameters())
    reached = [n for n, p in grads.items() if p.grad is not None and p.grad.abs().sum() > 0]
    assert "postnet.weight" in reached and "prenet.weight" in reached, reached
    assert len(reached) >= len(grads) // 2


def test_the_term_scores_in_decoder_space_when_given():
    batch = _batch(2)
    obj = _objective(1.0, temperature=0.2)
    space = lambda v: 3.0 * v + torch.linspace(-1.0, 1.0, D)  # noqa: E731 (an affine map)
    obj.to_decoder_space = space
    out = obj.loss(batch, torch.Generator().manual_seed(0), num_iterations=3)
    pred, weight, mse = _by_hand(obj, batch, 3, 0)
    mapped = regression_loss(pred, batch["x"], weight, "infonce", 0.2, space)
    torch.testing.assert_close(out.loss, mse + mapped)
    plain = regression_loss(pred, batch["x"], weight, "infonce", 0.2)
    assert abs(mapped.item() - plain.item()) > 1e-3  # the map matters


def test_the_queue_adds_earlier_training_targets_only_in_training():
    first, second = _batch(4), _batch(5)
    obj = _objective(0.5, contrastive_queue=20).train()
    obj.loss(first, torch.Generator().manual_seed(0), num_iterations=2)
    w1 = target_weight(first).clone()
    w1[:, 0] = False
    assert torch.equal(obj.queue, first["x"][w1])  # 13 targets, under the cap
    out = obj.loss(second, torch.Generator().manual_seed(1), num_iterations=2)
    pred, weight, mse = _by_hand(obj, second, 2, 1)
    term = regression_loss(pred, second["x"], weight, "infonce", 0.05, negatives=first["x"][w1])
    torch.testing.assert_close(out.loss, mse + 0.5 * term)
    assert torch.equal(obj.queue, torch.cat([second["x"][weight], first["x"][w1]])[:20])
    obj.eval()
    before = obj.queue.clone()
    out = obj.loss(second, torch.Generator().manual_seed(1), num_iterations=2)
    no_queue = regression_loss(pred, second["x"], weight, "infonce", 0.05)
    torch.testing.assert_close(out.loss, mse + 0.5 * no_queue)
    assert torch.equal(obj.queue, before)


def test_both_objectives_share_the_term_and_its_checks():
    assert issubclass(RefinerObjective, ContrastiveTerm) and issubclass(
        MSEObjective, ContrastiveTerm
    )
    for kw, msg in [
        ({"weight": -0.1}, "contrastive_weight must be >= 0"),
        ({"contrastive_queue": -1}, "contrastive_queue must be >= 0"),
        ({"temperature": 0.0}, "temperature must be > 0"),
    ]:
        with pytest.raises(ValueError, match=msg):
            _objective(**kw)


def test_module_passes_the_options_and_the_cli_reaches_them(shards, tmp_path):
    from lcm.train import load_module
    from lcm.train.cli import cli_main
    from lcm.train.module import RefinerModule

    module = RefinerModule(contrastive_weight=0.25, temperature=0.07, contrastive_queue=9)
    obj = module.objective
    assert (obj.contrastive_weight, obj.temperature, obj.contrastive_queue) == (0.25, 0.07, 9)
    assert obj.to_decoder_space == module.normalizer.denormalize
    assert RefinerModule().objective.contrastive_weight == 0.0
    root = tmp_path / "run"
    cli_main(
        [
            "fit",
            "--config", "configs/trainer/default.yaml",
            "--config", "configs/refiner/tiny.yaml",
            f"--data.data_dir={shards}",
            f"--data.cache_dir={tmp_path / 'cache'}",
            f"--trainer.default_root_dir={root}",
            "--data.max_concepts_per_batch=64",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--model.residual=context_mean",
            "--model.contrastive_weight=0.1",
            "--model.temperature=0.2",
        ]
    )  # fmt: skip
    loaded = load_module(str(root / "checkpoints" / "last.ckpt"))
    assert loaded.hparams["contrastive_weight"] == 0.1 and loaded.hparams["temperature"] == 0.2
    assert loaded.objective.contrastive_weight == 0.1 and loaded.objective.temperature == 0.2
    assert loaded.objective.to_decoder_space == loaded.normalizer.denormalize


def test_report_passes_the_weight_to_base_lcm_and_refiner_only(monkeypatch, tmp_path):
    from dataclasses import replace

    import lcm.train.cli
    from experiments.pretraining.report import PRESETS, train_family

    seen = []

    def fake_cli(args):
        seen.append(args)
        root = args[args.index("--trainer.default_root_dir") + 1]
        (tmp_path / root / "checkpoints").mkdir(parents=True)
        (tmp_path / root / "checkpoints" / "last.ckpt").write_bytes(b"")

    monkeypatch.setattr(lcm.train.cli, "cli_main", fake_cli)
    p = replace(PRESETS["ci"], contrastive_weight=0.1, temperature=0.05)
    for system in ("refiner+context_mean", "base_lcm"):
        train_family(system, p, "data", tmp_path / "runs")
        args = seen[-1]
        assert args[args.index("--model.contrastive_weight") + 1] == "0.1"
        assert args[args.index("--model.temperature") + 1] == "0.05"
    with pytest.raises(ValueError, match="Base-LCM and refiner option"):
        train_family("one_tower+context_mean", p, "data", tmp_path / "runs")
    train_family("refiner", replace(p, contrastive_weight=0.0), "data", tmp_path / "r0")
    assert "--model.contrastive_weight" not in seen[-1]


def test_a_reused_checkpoint_must_have_been_trained_on_the_same_data(monkeypatch, tmp_path, capsys):
    """The report reuses a system's checkpoint only when its fit record matches: another
    training folder (or changed data in it) under the same run folder is an error naming
    what differs, never a silent reuse; a record-less checkpoint is reused with a warning."""
    import lcm.train.cli
    from experiments.pretraining.report import FIT_RECORD, PRESETS, train_family

    fits = []

    def fake_cli(args):
        fits.append(args)
        root = Path(args[args.index("--trainer.default_root_dir") + 1])
        (root / "checkpoints").mkdir(parents=True, exist_ok=True)
        (root / "checkpoints" / "last.ckpt").write_bytes(b"")

    monkeypatch.setattr(lcm.train.cli, "cli_main", fake_cli)
    p = PRESETS["ci"]
    data = tmp_path / "data"
    data.mkdir()
    (data / "summary.json").write_text('{"documents": 3, "seconds": 1.0}')
    shards = {"shard-00000.parquet": {"rows": 3, "bytes": 10, "sha256": "a"}}
    (data / "manifest.json").write_text(json.dumps({"shards": shards}))
    ckpt = train_family("base_lcm", p, str(data), tmp_path / "runs")
    assert len(fits) == 1 and (ckpt.parent.parent / FIT_RECORD).exists()
    assert train_family("base_lcm", p, str(data), tmp_path / "runs") == ckpt  # same: reused
    assert len(fits) == 1
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="train_dir") as err:
        train_family("base_lcm", p, str(other), tmp_path / "runs")
    assert "another --work_dir" in str(err.value)
    (data / "summary.json").write_text('{"documents": 3, "seconds": 2.0}')  # a resumed prepare
    assert train_family("base_lcm", p, str(data), tmp_path / "runs") == ckpt  # same shards
    shards["shard-00000.parquet"]["sha256"] = "b"  # the data changed in place
    (data / "manifest.json").write_text(json.dumps({"shards": shards}))
    with pytest.raises(ValueError, match="train_shards_sha256"):
        train_family("base_lcm", p, str(data), tmp_path / "runs")
    (ckpt.parent.parent / FIT_RECORD).unlink()  # a checkpoint from before fit records
    assert train_family("base_lcm", p, str(data), tmp_path / "runs") == ckpt
    assert "cannot be checked" in capsys.readouterr().out and len(fits) == 1
