"""Training layer: data module, objectives, LightningModules, LightningCLI and configs.

Toy data comes from the real ``lcm prepare`` with a hash codec (tests/helpers_train.py); its
documents follow a fixed sentence chain, so next-concept prediction is learnable.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lcm.models import BaseLCMConfig, OneTowerConfig, TwoTowerConfig
from lcm.normalizer import RobustNormalizer
from lcm.objectives import (
    MSEObjective,
    OneTowerDiffusion,
    TwoTowerDiffusion,
    masked_mse,
)
from lcm.train import FAMILY_MODULES, ConceptDataModule, TwoTowerModule, load_module
from lcm.train.cli import cli_main
from lcm.train.data import (
    ConceptBatches,
    plan_batches,
    pretrain_examples,
    split_documents,
    window_starts,
)
from lcm.train.optim import OptimConfig, warmup_cosine

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TRAINER_YAML = CONFIGS / "trainer" / "default.yaml"
D = 16  # HashCodec dim


pytestmark = pytest.mark.usefixtures("plain_argv")  # shards, sft_shards: tests/conftest.py


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("arrow-cache"))


def _dm(folder: Path, cache_dir: str, **kw) -> ConceptDataModule:
    """A set-up data module over ``folder``; ``kw``: its options."""
    dm = ConceptDataModule(str(folder), cache_dir=cache_dir, **kw)
    dm.setup()
    return dm


def parquet_vectors(folder: Path, field: str = "text") -> dict[str, np.ndarray]:
    """id -> (n, D) float32 straight from the shards, for checking the data module."""
    out = {}
    for f in sorted((folder / "shards").glob("*.parquet")):
        t = pq.read_table(f, columns=["id", f"{field}_embeddings"]).to_pydict()
        for i, emb in zip(t["id"], t[f"{field}_embeddings"]):
            out[i] = np.asarray(emb, dtype=np.float32).reshape(-1, D)
    return out


# ------------------------------------------------------------------------------------------ data
@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 11, 12, 30])
def test_windows_make_every_concept_a_target_exactly_once(n):
    L_ = 6
    lengths = np.array([n])
    ex = pretrain_examples(np.array([0]), lengths, L_)
    assert (ex.src_len <= L_).all() and (ex.src_len >= 1).all()
    starts = window_starts(n, L_)
    assert ex.src_start.tolist() == starts
    targets = []
    for s, length, first in zip(ex.src_start, ex.src_len, ex.first_is_target):
        targets += list(range(s if first else s + 1, s + length))
    assert sorted(targets) == list(range(n))  # each concept once, none dropped
    transitions = [
        (s + j, s + j + 1) for s, length in zip(ex.src_start, ex.src_len) for j in range(length - 1)
    ]
    assert sorted(transitions) == [(i, i + 1) for i in range(n - 1)]


def test_plan_batches_bounds_concepts_and_keeps_every_example():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 17, size=300)
    for shuffle in (False, True):
        plan = plan_batches(lengths, max_concepts=64, shuffle=shuffle, seed=3, sort_pool=50)
        assert sorted(np.concatenate(plan).tolist()) == list(range(300))
        assert all(len(b) * lengths[b].max() <= 64 for b in plan)
        assert plan_batches(lengths, 64, shuffle=shuffle, seed=3, sort_pool=50)[0].tolist() == (
            plan[0].tolist()
        )
    capped = plan_batches(lengths, max_concepts=10_000, max_batch_size=7)
    assert max(len(b) for b in capped) == 7
    with pytest.raises(ValueError, match="exceeds"):
        plan_batches(np.array([65]), max_concepts=64)


def test_split_is_by_document_seeded_and_id_based():
    ids = [f"d{i}" for i in range(50)]
    train, val = split_documents(ids, 0.2, seed=0)
    assert len(val) == 10 and len(train) == 40 and not set(train) & set(val)
    assert split_documents(ids, 0.2, seed=0)[1].tolist() == val.tolist()
    assert split_documents(ids, 0.2, seed=1)[1].tolist() != val.tolist()
    # The split follows ids, not order: reversing the files keeps the same held-out documents.
    rev_train, rev_val = split_documents(ids[::-1], 0.2, seed=0)
    assert sorted(ids[::-1][i] for i in rev_val) == sorted(ids[i] for i in val)
    assert len(split_documents(ids[:3], 0.01, seed=0)[1]) == 1  # at least one when asked


def test_pretrain_batches_hold_the_normalized_shard_vectors(shards, cache_dir):
    dm = _dm(shards, cache_dir, val_fraction=0.25, max_seq_len=5, max_concepts_per_batch=20)
    assert dm.dim == D
    raw = parquet_vectors(shards)
    norm = RobustNormalizer.load(shards / "normalizer.pt")
    seen: dict[str, list[int]] = {}
    docs = {}
    for split, shuffle in (("train", True), ("val", False)):
        batches = dm.batches(split, shuffle=shuffle)
        store, ex = batches.store, batches.examples
        n_batches = 0
        for batch in batches:
            n_batches += 1
            B, T, _ = batch["x"].shape
            assert B * T <= 20
            assert (batch["loss_mask"] <= batch["mask"]).all() and not batch["sep_mask"].any()
            for b, i in enumerate(batch["index"].tolist()):
                doc_id = store.ids[int(ex.doc[i])]
                docs.setdefault(split, set()).add(doc_id)
                start, n = int(ex.src_start[i]), int(ex.src_len[i])
                assert batch["mask"][b].sum() == n
                want = norm.normalize(torch.from_numpy(raw[doc_id][start : start + n]))
                torch.testing.assert_close(batch["x"][b, :n], want)
                assert (batch["x"][b, n:] == 0).all()
                seen.setdefault(doc_id, []).extend(
                    start + j for j in range(n) if batch["loss_mask"][b, j]
                )
        assert n_batches == len(batches)
    assert not docs["train"] & docs["val"] and docs["train"] | docs["val"] == set(raw)
    for doc_id, targets in seen.items():  # every concept of every document, exactly once
        assert sorted(targets) == list(range(len(raw[doc_id]))), doc_id
    assert dm.stats["train"]["windowed_documents"] > 0


def test_summarize_layout_and_counted_source_cuts(sft_shards, cache_dir):
    dm = _dm(
        sft_shards,
        cache_dir,
        mode="summarize",
        val_fraction=0.0,
        max_seq_len=9,
        max_concepts_per_batch=36,
    )
    assert dm.target_field == "summary"
    src = parquet_vectors(sft_shards, "text")
    tgt = parquet_vectors(sft_shards, "summary")
    norm = RobustNormalizer.load(sft_shards / "normalizer.pt")
    batches = dm.batches("train")
    cut = 0
    for batch in batches:
        for b, i in enumerate(batch["index"].tolist()):
            doc_id = batches.store.ids[int(batches.examples.doc[i])]
            n_src, n_tgt = len(src[doc_id]), len(tgt[doc_id])
            keep = min(n_src, 9 - 1 - n_tgt)
            cut += keep < n_src
            length = keep + 1 + n_tgt
            sep = batch["sep_mask"][b]
            assert sep.nonzero().flatten().tolist() == [keep]
            assert batch["loss_mask"][b].nonzero().flatten().tolist() == list(
                range(keep + 1, length)
            )
            assert batch["mask"][b].sum() == length
            x = batch["x"][b]
            torch.testing.assert_close(
                x[:keep], norm.normalize(torch.from_numpy(src[doc_id][:keep]))
            )
            torch.testing.assert_close(
                x[keep + 1 : length], norm.normalize(torch.from_numpy(tgt[doc_id]))
            )
            assert (x[keep] == 0).all()  # the module fills the separator
    assert cut > 0 and dm.stats["train"]["truncated_sources"] == cut
    with pytest.raises(ValueError, match="do not fit"):
        ConceptDataModule(
            str(sft_shards),
            mode="summarize",
            max_seq_len=4,
            max_concepts_per_batch=36,
            cache_dir=cache_dir,
        ).setup()


def test_distributed_ranks_split_the_same_plan_without_double_counting(shards, cache_dir):
    dm = _dm(shards, cache_dir, val_fraction=0.0, max_seq_len=6, max_concepts_per_batch=18)
    one = dm.batches("train", shuffle=True)
    plan = one.plan(0)
    world = next(w for w in (3, 5, 7, 11) if len(plan) % w)  # exercises the padding batch
    ranks = [
        ConceptBatches(
            one.store, one.examples, "text", None, None, 18, shuffle=True, rank=r, world_size=world
        )
        for r in range(world)
    ]
    lengths = [len(r) for r in ranks]
    assert len(set(lengths)) == 1 and lengths[0] == math.ceil(len(plan) / world)
    counted = []
    for r in ranks:
        for batch in r:
            if batch["loss_mask"].any():
                counted += batch["index"].tolist()
            else:
                assert (batch["index"] == -1).all() and int(batch["batch_id"]) == -1
    assert sorted(counted) == list(range(len(one.examples)))


# ------------------------------------------------------------------------------------ objectives
def _objectives():
    torch.manual_seed(0)
    return [
        MSEObjective(BaseLCMConfig.from_name("tiny", sonar_dim=D).build()),
        TwoTowerDiffusion(TwoTowerConfig.from_name("tiny", sonar_dim=D).build()),
        OneTowerDiffusion(OneTowerConfig.from_name("tiny", sonar_dim=D).build()),
    ]


def _perturb(objective):
    # AdaLN is zero-initialized (the denoiser starts as identity); make every path matter.
    with torch.no_grad():
        for p in objective.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return objective.eval()


def test_loss_ignores_padding_and_non_target_positions():
    torch.manual_seed(1)
    x = torch.randn(3, 6, D)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    loss_mask = mask.clone()
    loss_mask[0, :3] = False
    for obj in _objectives():
        _perturb(obj)
        batch = {"x": x, "mask": mask, "loss_mask": loss_mask}
        out = obj.loss(batch, torch.Generator().manual_seed(0))
        junk = x.clone()
        junk[~mask] = 1e3  # padding content must not matter
        out2 = obj.loss({**batch, "x": junk}, torch.Generator().manual_seed(0))
        torch.testing.assert_close(out.loss, out2.loss)
        assert not out.weight[0, :3].any() and not out.weight[~mask].any()
        # Recompute from the aligned predictions: the loss is their mean over weighted positions.
        manual = ((out.pred - out.target) ** 2).mean(-1)[out.weight].mean()
        torch.testing.assert_close(out.loss, manual)
    empty = masked_mse(
        torch.ones(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool)
    )
    assert empty.item() == 0.0


def test_mse_objective_pairs_output_t_with_concept_t_plus_1():
    obj = _objectives()[0]
    x = torch.randn(2, 5, D)
    batch = {"x": x, "mask": torch.ones(2, 5, dtype=torch.bool)}
    out = obj.loss(batch)
    y = obj.model(x)
    torch.testing.assert_close(out.pred[:, 1:], y[:, :-1])
    assert not out.weight[:, 0].any() and out.weight[:, 1:].all()
    torch.testing.assert_close(out.loss, ((y[:, :-1] - x[:, 1:]) ** 2).mean())


def test_cfg_dropout_drops_about_the_configured_share():
    obj = _objectives()[1]
    seen = {}
    forward = obj.model.forward

    def spy(x, x_t, t, mask, drop):
        seen["drop"], seen["t"] = drop, t
        return forward(x, x_t, t, mask, drop)

    obj.model.forward = spy
    x = torch.randn(64, 32, D)
    obj.loss(
        {"x": x, "mask": torch.ones(64, 32, dtype=torch.bool)}, torch.Generator().manual_seed(0)
    )
    share = seen["drop"].float().mean().item()
    assert 0.12 < share < 0.18
    assert seen["t"].min() >= 0 and seen["t"].max() <= 99 and seen["t"].unique().numel() > 90


@pytest.mark.parametrize("index", [1, 2], ids=["two_tower", "one_tower"])
def test_diffusion_predict_next_is_padding_invariant_and_matches_predict_all(index):
    obj = _perturb(_objectives()[index])
    torch.manual_seed(2)
    x = torch.randn(3, 5, D)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    # init_noise_scale=0 makes DDIM (eta=0) deterministic, so results can be compared exactly.
    kw = dict(init_noise_scale=0.0, num_inference_steps=6)
    batched = obj.predict_next(x, mask, **kw)
    alone = torch.cat(
        [obj.predict_next(x[i : i + 1, : int(mask[i].sum())], **kw) for i in range(3)]
    )
    torch.testing.assert_close(batched, alone, atol=2e-5, rtol=1e-4)
    full = obj.predict_all({"x": x, "mask": torch.ones(3, 5, dtype=torch.bool)}, **kw)
    torch.testing.assert_close(full[1, 3], alone[1], atol=2e-5, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1])
    assert obj.sampling.guidance_scale == 3.0  # the paper's default, so `batched` was guided
    unguided = obj.predict_next(x, mask, guidance_scale=1.0, **kw)
    assert not torch.allclose(unguided, batched, atol=1e-3)


# --------------------------------------------------------------------------------------- module
def test_optimizer_groups_and_warmup_cosine():
    module = TwoTowerModule(
        arch=TwoTowerConfig.from_name("tiny", sonar_dim=D),
        optim=OptimConfig(weight_decay=0.1, decay_steps=100),
        learn_separator=True,
        ema_decay=0.99,
    )
    optimizer = module.configure_optimizers()["optimizer"]
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert len(decay) == len(trainable)  # the EMA copy is not optimized
    for name, p in trainable:
        assert decay[id(p)] == (0.1 if p.ndim >= 2 else 0.0), name
    assert id(module.separator) in decay
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["eps"] == 1e-5
    assert warmup_cosine(0, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 110, 0.1) == pytest.approx(0.1)


def _conditional_loss(module, dm) -> float:
    """Mean training loss over the training set with the context always on (no CFG drop) and
    without each document's first concept (unconditional in the diffusion models)."""
    obj = module.objective
    drop = getattr(obj, "cfg_dropout", None)
    if drop is not None:
        obj.cfg_dropout = 0.0
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in dm.batches("train"):
            batch["loss_mask"][:, 0] = False
            out = obj.loss(batch, torch.Generator().manual_seed(0))
            n = int(out.weight.sum())
            total, count = total + out.loss.item() * n, count + n
    if drop is not None:
        obj.cfg_dropout = drop
    return total / count


@pytest.mark.parametrize(
    "family,steps",
    [
        ("base_lcm", 150),
        ("two_tower", 300),
        ("one_tower", 300),
        ("refiner", 300),
        ("quant_lcm", 300),
    ],
)
def test_tiny_preset_fits_a_small_set(family, steps, shards, cache_dir):
    torch.manual_seed(0)
    dm = _dm(shards, cache_dir, val_fraction=0.0, max_seq_len=16, max_concepts_per_batch=128)
    extra = {}
    if family == "quant_lcm":
        # The toy corpus has 23 distinct concepts: a first codebook of 64 units would store each
        # exactly, leaving all-zero residuals whose codes are arbitrary ties nobody can predict.
        extra = {"n_codebooks": 2, "n_units": 16}
    cls = FAMILY_MODULES[family]
    module = cls(
        arch=cls.arch_cls.from_name("tiny", sonar_dim=dm.dim, **extra),
        optim=OptimConfig(lr=3e-3, warmup_steps=20, weight_decay=0.0),
        **({"eval_inference_steps": 5} if family in ("two_tower", "one_tower") else {}),
    )
    module.normalizer.load_state_dict(dm.normalizer.state_dict())
    if family == "quant_lcm":  # fit would fit it at setup; the loss before needs it now
        module.rvq.fit(dm.sample_concepts("train", 10_000), niter=5)
    before = _conditional_loss(module, dm)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, dm)
    module.eval()
    after = _conditional_loss(module, dm)
    assert before > 0.5 and after < before / 10, (before, after)


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_every_config_parses(path, capsys):
    args = ["fit", "--config", str(TRAINER_YAML)]
    addon = path.parent.name == "trainer" and path != TRAINER_YAML  # e.g. trainer/compile.yaml
    if addon:
        args += ["--config", str(CONFIGS / "two_tower" / "tiny.yaml")]
    if path != TRAINER_YAML:
        args += ["--config", str(path)]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "trainer:" in printed and "checkpoint:" in printed
    addons = {
        "compile": "lcm.train.compile.CompileModel",
        "fsdp": "lcm.train.scale.LCMFSDPStrategy",
        "one_gpu": "lcm.train.scale.ActivationCheckpointing",
    }
    if addon:
        assert f"class_path: {addons[path.stem]}" in printed
    elif not addon and path != TRAINER_YAML:
        import dataclasses

        import yaml

        cls = FAMILY_MODULES[path.parent.name]
        assert f"lcm.train.module.{cls.__name__}" in printed
        # Every architecture field is spelled out; a preset recipe holds exactly the preset.
        arch = yaml.safe_load(printed)["model"]["init_args"]["arch"]
        fields = {f.name for f in dataclasses.fields(cls.arch_cls)} - {"sonar_dim"}
        assert fields <= set(arch), fields - set(arch)
        if path.stem in cls.arch_cls.presets:  # other recipes change the preset on purpose
            preset = dataclasses.asdict(cls.arch_cls.from_name(path.stem))
            assert {k: arch[k] for k in fields} == {k: preset[k] for k in fields}


@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
def test_model_help_lists_every_architecture_field(family, capsys):
    """``lcm fit --model.help <LightningModule>`` shows every field of the family's typed
    architecture config (with its docstring as help), not a preset name and a dict."""
    import dataclasses

    cls = FAMILY_MODULES[family]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--model.help", f"{cls.__module__}.{cls.__name__}"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    fields = [f.name for f in dataclasses.fields(cls.arch_cls)]
    missing = [f for f in fields if f"--model.arch.{f} " not in printed]
    assert fields and not missing, missing


def _fit_args(shards, cache_dir, root, family="two_tower", recipe="tiny", *extra):
    return [
        "--config",
        str(TRAINER_YAML),
        "--config",
        str(CONFIGS / family / f"{recipe}.yaml"),
        f"--data.data_dir={shards}",
        f"--data.cache_dir={cache_dir}",
        f"--trainer.default_root_dir={root}",
        "--data.val_fraction=0.2",
        "--data.max_seq_len=8",
        "--data.max_concepts_per_batch=64",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        *extra,
    ]


def test_resume_from_last_equals_an_uninterrupted_run(shards, cache_dir, tmp_path, monkeypatch):
    # Mid-epoch stop (6 batches per epoch), dropout on, EMA on, diffusion noise: everything
    # random must be restored or re-derived exactly.
    def fit(root, steps, *extra):
        cli_main(
            [
                "fit",
                *_fit_args(shards, cache_dir, root),
                f"--trainer.max_steps={steps}",
                "--trainer.val_check_interval=5",
                "--checkpoint.every_n_train_steps=4",
                "--model.init_args.optim.decay_steps=16",
                "--model.init_args.ema_decay=0.9",
                "--model.init_args.arch.dropout=0.1",
                *extra,
            ]
        )
        return torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)

    straight = fit(tmp_path / "a", 16)
    first = fit(tmp_path / "b", 8)
    assert first["global_step"] == 8
    assert first["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "consumed": 2}
    ]
    resumed = fit(tmp_path / "b", 16, "--ckpt_path=last")
    assert resumed["global_step"] == straight["global_step"] == 16
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    # Control: without the data loader's position the resumed run diverges.
    from lcm.train.data import ConceptLoader

    monkeypatch.setattr(ConceptLoader, "load_state_dict", lambda self, state: None)
    fit(tmp_path / "c", 8)
    diverged = fit(tmp_path / "c", 16, "--ckpt_path=last")
    assert not torch.equal(
        diverged["state_dict"]["objective.model.den_postnet.weight"],
        straight["state_dict"]["objective.model.den_postnet.weight"],
    )


def _csv_metrics(root: Path) -> list[dict[str, str]]:
    files = sorted((root / "csv").glob("version_*/metrics.csv"))
    assert files, f"no metrics.csv under {root}"
    with open(files[-1]) as f:
        return list(csv.DictReader(f))


def _last(rows, key) -> float:
    return float([r[key] for r in rows if r.get(key)][-1])


EXTRA_METRICS = {"refiner": "val/exit_step", "quant_lcm": "val/code_accuracy"}
NEXT_KWARGS = {
    "base_lcm": {},
    "refiner": {"max_iterations": 8},
    "quant_lcm": {"temperature": 0.5},
    "two_tower": {"num_inference_steps": 4},
    "one_tower": {"num_inference_steps": 4},
}


@pytest.mark.parametrize("family", ["base_lcm", "two_tower", "one_tower", "refiner", "quant_lcm"])
def test_cli_fit_validate_test_predict(family, shards, cache_dir, tmp_path):
    from lcm.cli import run

    root = tmp_path / "run"
    args = _fit_args(shards, cache_dir, root, family)
    fit = run(["fit", *args, "--trainer.max_steps=12", "--trainer.val_check_interval=6"])
    ckpt = root / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and (root / "tensorboard").is_dir()
    assert list(root.glob("tensorboard/version_*/config.yaml"))
    logged = _csv_metrics(root)
    assert {"train/loss", "val/loss", "val/mse", "val/l2", "val/ca"} <= set(logged[0])
    assert any(r.get("lr-AdamW/pg1") for r in logged)

    keys = ["val/loss", "val/mse", "val/l2", "val/ca"]
    if family in EXTRA_METRICS:
        keys.append(EXTRA_METRICS[family])
    val = cli_main(["validate", *args, "--ckpt_path=last"]).trainer.callback_metrics
    for key in keys:  # same weights, same seeded noise
        assert float(val[key]) == pytest.approx(_last(logged, key), rel=1e-5), key
    assert 0.0 <= float(val["val/ca"]) <= 1.0
    test = cli_main(["test", *args, "--ckpt_path=last"]).trainer.callback_metrics
    assert float(test["test/mse"]) == pytest.approx(float(val["val/mse"]), rel=1e-5)
    predict = cli_main(["predict", *args, "--ckpt_path=last"])
    preds = predict.trainer.predict_loop.predictions
    assert preds and preds[0]["pred"].shape[-1] == D and torch.isfinite(preds[0]["pred"]).all()
    # ... and writes them, with the document id and position of every vector.
    written = pq.read_table(root / "predictions" / "predictions-rank0.parquet").to_pylist()
    dm = predict.datamodule
    assert (
        len(written) == sum(len(p["index"]) for p in preds) == len(dm.batches("predict").examples)
    )
    store = dm._splits["predict"][0]
    for row in written:
        assert row["id"] in store.ids and len(row["pred"]) == len(row["is_target"]) >= 1
        assert len(row["pred"][0]) == D
    first = preds[0]
    n = int(first["weight"][0].shape[0])
    torch.testing.assert_close(
        torch.tensor(written[0]["pred"]), first["pred"][0, : len(written[0]["pred"])].float()
    )
    assert n >= len(written[0]["pred"])

    # The checkpoint is self-contained: family, hyper-parameters, normalizer statistics.
    module = load_module(str(ckpt))
    assert type(module) is type(fit.model) and module.arch.sonar_dim == D
    assert module.arch == fit.model.arch and module.optim == fit.model.optim
    norm = RobustNormalizer.load(shards / "normalizer.pt")
    torch.testing.assert_close(module.normalizer.center, norm.center)
    torch.testing.assert_close(module.normalizer.scale, norm.scale)
    x = torch.from_numpy(np.stack(list(parquet_vectors(shards).values())[0][:4]))[None]
    nxt = module.predict_next(x, generator=torch.Generator().manual_seed(0), **NEXT_KWARGS[family])
    assert nxt.shape == (1, D) and torch.isfinite(nxt).all()


def test_summarization_finetune_starts_from_the_pretrained_model(
    shards, sft_shards, cache_dir, tmp_path
):
    pre_root, sft_root = tmp_path / "pre", tmp_path / "sft"
    cli_main(
        [
            "fit",
            *_fit_args(shards, cache_dir, pre_root),
            "--trainer.max_steps=6",
            "--trainer.limit_val_batches=0",
        ]
    )
    pre_ckpt = pre_root / "checkpoints" / "last.ckpt"
    pretrained = torch.load(pre_ckpt, weights_only=False)["state_dict"]
    sft = cli_main(
        [
            "fit",
            *_fit_args(sft_shards, cache_dir, sft_root, "two_tower", "tiny_sft"),
            "--data.max_seq_len=12",
            f"--model.init_args.init_from={pre_ckpt}",
            "--trainer.max_steps=0",
            "--trainer.limit_val_batches=0",
        ]
    )
    module = sft.model
    for name, value in module.state_dict().items():
        if name.startswith("objective.model.") or name.startswith("normalizer."):
            assert torch.equal(value, pretrained[name]), name
    # The SFT data was prepared with its own normalizer; the model imposes its pretraining one.
    own = RobustNormalizer.load(sft_shards / "normalizer.pt")
    assert not torch.equal(own.center, module.normalizer.center)
    assert torch.equal(sft.datamodule.normalizer.center, module.normalizer.center)
    batch = next(iter(sft.datamodule.batches("train")))
    assert batch["sep_mask"].any()
    filled = module.insert_separator(batch)["x"][batch["sep_mask"]]
    assert torch.equal(filled, module.separator.expand_as(filled))
    # A learned separator is trained (it only enters through the context of the targets).
    sft2 = cli_main(
        [
            "fit",
            *_fit_args(sft_shards, cache_dir, tmp_path / "sft2", "two_tower", "tiny_sft"),
            "--data.max_seq_len=12",
            f"--model.init_args.init_from={pre_ckpt}",
            "--trainer.max_steps=30",
            "--trainer.limit_val_batches=0",
            "--model.init_args.learn_separator=true",
        ]
    )
    assert not torch.equal(sft2.model.separator.detach(), module.separator)


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_with_accumulation(shards, cache_dir, tmp_path):
    """DDP on CPU (gloo, 2 processes) sees batch r + 2k on rank r at step k; one process with
    accumulate_grad_batches=2 sees the same two batches per step. With the noise keyed by batch,
    both runs must end with the same weights and report the same validation metrics (DDP's
    validation includes an all-padding batch on one rank)."""
    dm = _dm(shards, cache_dir, val_fraction=0.2, max_seq_len=8, max_concepts_per_batch=40)
    train = dm.batches("train", shuffle=True)
    assert len(train.plan(0)) % 2 == 0 and len(train.plan(1)) % 2 == 0
    assert len(dm.batches("val").plan(0)) % 2 == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def fit(root, *extra):
        args = _fit_args(
            shards,
            cache_dir,
            root,
            "two_tower",
            "tiny",
            "--trainer.max_steps=6",
            "--trainer.val_check_interval=6",
            "--checkpoint.every_n_train_steps=6",
            "--model.init_args.optim.warmup_steps=2",
            "--data.max_concepts_per_batch=40",
            *extra,
        )
        proc = subprocess.run(
            [sys.executable, "-m", "lcm.train.cli", "fit", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc.stdout + proc.stderr

    log = fit(tmp_path / "ddp", "--trainer.strategy=ddp", "--trainer.devices=2")
    assert "Starting with 2 processes" in log
    fit(tmp_path / "one", "--trainer.accumulate_grad_batches=2")
    a = torch.load(tmp_path / "ddp/checkpoints/last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "one/checkpoints/last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][name], atol=1e-6, rtol=1e-5, msg=name)
    ddp_rows, one_rows = _csv_metrics(tmp_path / "ddp"), _csv_metrics(tmp_path / "one")
    for key in ("val/loss", "val/mse", "val/l2", "val/ca"):
        assert _last(ddp_rows, key) == pytest.approx(_last(one_rows, key), rel=1e-4), key


def test_worker_processes_yield_the_same_batches_in_order(shards, cache_dir):
    def batches(workers):
        dm = _dm(
            shards,
            cache_dir,
            val_fraction=0.0,
            max_seq_len=6,
            max_concepts_per_batch=24,
            num_workers=workers,
        )
        loader = dm.train_dataloader()
        assert len(loader) == len(dm.batches("train", shuffle=True))
        return [(b["index"].tolist(), b["x"]) for b in loader]

    alone, pooled = batches(0), batches(2)
    assert [i for i, _ in alone] == [i for i, _ in pooled]
    for (_, a), (_, b) in zip(alone, pooled):
        assert torch.equal(a, b)


def test_fit_without_validation_documents(shards, cache_dir):
    dm = ConceptDataModule(
        str(shards),
        val_fraction=0.0,
        max_seq_len=8,
        max_concepts_per_batch=64,
        cache_dir=cache_dir,
    )
    module = FAMILY_MODULES["base_lcm"](
        arch=BaseLCMConfig.from_name("tiny", sonar_dim=D), optim=OptimConfig(warmup_steps=1)
    )
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, dm)
    assert trainer.global_step == 3 and "val/loss" not in trainer.callback_metrics
    assert bool(module.normalizer_ready)
    torch.testing.assert_close(module.normalizer.center, dm.normalizer.center)


def test_progress_in_a_log_file_and_a_step_bounded_epoch_label(shards, cache_dir):
    import io
    from types import SimpleNamespace

    from lcm.train.progress import LogProgress, StepProgressBar

    dm = ConceptDataModule(
        str(shards), val_fraction=0.2, max_seq_len=8, max_concepts_per_batch=64,
        cache_dir=cache_dir,
    )  # fmt: skip
    module = FAMILY_MODULES["base_lcm"](arch=BaseLCMConfig.from_name("tiny", sonar_dim=D))
    log = io.StringIO()
    trainer = L.Trainer(
        max_steps=4, val_check_interval=4, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[LogProgress(interval=0.0, stream=log)],
    )  # fmt: skip
    trainer.fit(module, dm)
    lines = log.getvalue().splitlines()
    assert lines[0] == "[lcm fit] training from step 0 to 4"
    steps = [line for line in lines if line.startswith("[lcm fit] step ")]
    assert [s.split(",")[0] for s in steps] == [
        f"[lcm fit] step {i}/4 ({25 * i}%)" for i in (1, 2, 3, 4)
    ]
    assert all("steps/s" in s and "ETA" in s and "train/loss" in s for s in steps)
    assert any(line.startswith("[lcm fit] validation at step 4: val/ca ") for line in lines)
    assert lines[-1].startswith("[lcm fit] done at step 4 in ")

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=500, global_step=120)
    assert bar._get_train_description(9).strip() == "Epoch 9 · step 120/500"
    bar._trainer = SimpleNamespace(max_epochs=3, max_steps=-1, global_step=7)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"
