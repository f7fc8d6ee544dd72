"""Tests of the latent-trajectory inspection (experiments.refinement.inspect): classification of
constructed trajectories, PCA on data with a known spectrum, and the files of a run on a tiny
refiner. CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments.refinement.inspect import (
    CLASSES,
    PCA,
    TrajectoryThresholds,
    classify_trajectory,
    inspect_trajectories,
)
from lcm.models.refiner import RefinerConfig
from lcm.objectives.refiner import ExitRule, RefinerObjective

D = 16


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def embed(points2d: torch.Tensor, dim: int = 12, seed: int = 0) -> torch.Tensor:
    """Place (n, k) points in a random k-dim subspace of R^dim, around a random centre."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen(seed), dtype=torch.float64))
    centre = 3.0 * torch.randn(dim, generator=gen(seed + 1), dtype=torch.float64)
    return centre + points2d.double() @ q[:, : points2d.shape[1]].T


def circle(n: int, period: float, radius: float = 1.0) -> torch.Tensor:
    a = 2 * math.pi * torch.arange(n, dtype=torch.float64) / period
    return radius * torch.stack((a.cos(), a.sin()), dim=1)  # (n, 2)


# ---- classification ----------------------------------------------------------------------------


def test_fixed_points_converged_or_contracting():
    i = torch.arange(32, dtype=torch.float64)[:, None]
    spiral = circle(32, 7.0) * 0.6**i  # contracting spiral into the centre
    assert classify_trajectory(embed(spiral))[0] == "fixed_point"
    straight_in = torch.cat((0.5**i, 0 * i), dim=1)  # geometric approach along a line
    cls, stats = classify_trajectory(embed(straight_in))
    assert cls == "fixed_point" and stats["step_ratio"] == pytest.approx(0.5**7)
    reached = torch.cat((torch.linspace(0, 1, 10), torch.ones(22))).double()[:, None]
    cls, stats = classify_trajectory(embed(torch.cat((reached, reached), dim=1)))
    assert cls == "fixed_point" and stats["last_step"] == 0.0


def test_orbits_cycle_without_converging():
    for period in (2.0, 3.0, 5.0):
        cls, stats = classify_trajectory(embed(circle(40, period)))
        assert cls == "orbit", (period, stats)
        assert stats["straightness"] < 0.5 and stats["last_step"] > 1e-3
    # A two-cycle is an orbit even with a tiny radius, as long as it moves more than fixed_tol.
    cls, _ = classify_trajectory(embed(circle(40, 2.0, radius=0.05)))
    assert cls == "orbit"
    # ... and a fixed point once its movement drops below fixed_tol.
    cls, _ = classify_trajectory(embed(circle(40, 2.0, radius=1e-6)))
    assert cls == "fixed_point"


def test_sliders_drift_in_one_direction():
    i = torch.arange(32, dtype=torch.float64)[:, None]
    line = torch.cat((0.1 * i, 0.02 * torch.sin(i)), dim=1)  # steady drift, small wobble
    cls, stats = classify_trajectory(embed(line))
    assert cls == "slider" and stats["straightness"] > 0.9
    # A drifting helix: circles of period 5 around an axis it slides along.
    helix = torch.cat((circle(48, 5.0, 0.2), 0.3 * torch.arange(48.0)[:, None]), dim=1)
    assert classify_trajectory(embed(helix))[0] == "slider"
    # A slow orbit looks straight inside a short window, and is an orbit in a long one.
    slow = circle(64, 48.0)
    assert classify_trajectory(embed(slow), TrajectoryThresholds(window=4))[0] == "slider"
    assert classify_trajectory(embed(slow), TrajectoryThresholds(window=48))[0] == "orbit"


def test_classification_is_scale_free_and_validates():
    c = embed(circle(40, 3.0))
    assert classify_trajectory(1000 * c)[0] == classify_trajectory(c)[0] == "orbit"
    with pytest.raises(ValueError):
        classify_trajectory(torch.randn(2, 4))
    with pytest.raises(ValueError):
        TrajectoryThresholds(window=1)
    with pytest.raises(ValueError):
        TrajectoryThresholds(drift_min=0.0)


# ---- PCA -------------------------------------------------------------------------------------


def test_pca_recovers_variance_ordering_and_directions():
    stds = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    z = torch.randn(20000, 5, generator=gen(3), dtype=torch.float64) * stds
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen(4), dtype=torch.float64))
    data = z[:, [2, 0, 4, 1, 3]] @ q.T + 7.0  # shuffled axes, rotated, shifted
    pca = PCA.fit(data, 3)
    var = stds.pow(2)
    torch.testing.assert_close(
        pca.explained_variance, var[:3], rtol=0.05, atol=0
    )  # 25, 9, 1 in that order
    torch.testing.assert_close(pca.explained_variance_ratio, var[:3] / var.sum(), rtol=0.05, atol=0)
    # Component j is the rotated axis that carries std[j] (up to sign, fixed by the convention).
    axes = q[:, [1, 3, 0]].T  # original columns 0, 1, 2 of z sit at 1, 3, 0 after the shuffle
    cos = (pca.components * axes).sum(dim=1).abs()
    assert (cos > 0.99).all()
    proj = pca.transform(data)
    assert proj.shape == (20000, 3)
    torch.testing.assert_close(
        proj.mean(dim=0), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0
    )
    assert PCA.fit(data[:2], 3).components.shape[0] == 2  # k capped by the sample count


# ---- a tiny refiner --------------------------------------------------------------------------


def tiny_objective(**kw) -> RefinerObjective:
    torch.manual_seed(0)
    model = RefinerConfig.from_name("tiny", sonar_dim=D).build()
    return RefinerObjective(model, **kw).eval()


def test_inspect_writes_pictures_and_consistent_json(tmp_path):
    obj = tiny_objective(
        exit_rule=ExitRule(exit_threshold=1e-3, exit_patience=2, max_iterations=64)
    )
    x = torch.randn(2, 5, D, generator=gen(1))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    info = inspect_trajectories(obj, x, mask, tmp_path / "out", num_iterations=12, generator=gen(2))
    names = {"state_2d.png", "state_3d.png", "pred_2d.png", "pred_3d.png", "movement.png"}
    for name in names | {"trajectories.json"}:
        assert (tmp_path / "out" / name).stat().st_size > 1000 or name.endswith(".json")
    saved = json.loads((tmp_path / "out" / "trajectories.json").read_text())
    assert saved["classes"] == info["classes"]
    P = 5 + 3  # every real position of both rows
    assert saved["positions"][:2] == [[0, 0], [0, 1]] and len(saved["positions"]) == P
    for space in ("state", "pred"):
        c2 = torch.tensor(saved[space]["coords_2d"])
        c3 = torch.tensor(saved[space]["coords_3d"])
        assert c2.shape == (P, 12, 2) and c3.shape == (P, 12, 3)
        torch.testing.assert_close(c2, c3[..., :2])
        evr = saved[space]["explained_variance_ratio"]
        assert evr == sorted(evr, reverse=True) and 0 < sum(evr) <= 1 + 1e-9
    assert set(saved["classes"]) <= set(CLASSES)
    assert sum(saved["class_counts"].values()) == P
    # Exit steps are the objective's rule applied to the very same trajectory.
    traj = obj.trajectory(x, mask, 12, gen(2))
    ref = ExitRule(1e-3, 2, 64).exit_steps(traj.preds)  # (B, T)
    assert saved["exit_steps"] == [int(ref[b, t]) for b, t in saved["positions"]]
    # Overrides and a subset of positions with labels.
    sub = inspect_trajectories(
        obj,
        x,
        mask,
        tmp_path / "sub",
        num_iterations=6,
        positions=[4, (1, 2)],
        labels=["last of doc 0", "last of doc 1"],
        exit_threshold=10.0,  # everything counts as settled: exit at patience + 1
        exit_patience=1,
        generator=gen(2),
        plots=False,
    )
    assert sub["positions"] == [[0, 4], [1, 2]] and sub["exit_steps"] == [2, 2]
    assert sub["labels"] == ["last of doc 0", "last of doc 1"]
    assert not (tmp_path / "sub" / "state_2d.png").exists()
    with pytest.raises(ValueError):
        inspect_trajectories(obj, x, mask, tmp_path / "bad", positions=[(2, 0)])
    with pytest.raises(ValueError):
        inspect_trajectories(obj, x, mask, tmp_path / "bad", num_iterations=2)


def test_a_core_that_ignores_its_state_is_a_fixed_point(tmp_path):
    """With the adapter's state half zeroed, every iteration computes the same s from the
    injection and the context alone: s_1 = s_2 = ..., a fixed point that exits at m + 1."""
    obj = tiny_objective(
        exit_rule=ExitRule(exit_threshold=1e-4, exit_patience=2, max_iterations=64)
    )
    d = obj.model.config.d_model
    with torch.no_grad():
        obj.model.adapter.weight[:, :d] = 0.0
    x = torch.randn(1, 4, D, generator=gen(5))
    info = inspect_trajectories(
        obj, x, None, tmp_path, num_iterations=10, generator=gen(6), plots=False
    )
    assert info["classes"] == ["fixed_point"] * 4
    assert info["exit_steps"] == [3] * 4
    assert max(s["last_step"] for s in info["stats"]) < 1e-5


def test_lcm_inspect_on_a_refiner_checkpoint(tmp_path):
    """`python -m experiments.refinement.inspect` as a user runs it: a trained refiner
    checkpoint, raw documents in a jsonl."""
    import json

    from helpers_train import make_shards

    from experiments.refinement.inspect import main as inspect_main
    from lcm.cli import run

    shards = make_shards(tmp_path / "data", n_docs=30)
    root = tmp_path / "run"
    run(
        ["fit", "--config", "configs/trainer/default.yaml", "--config",
         "configs/refiner/tiny.yaml", f"--data.data_dir={shards}",
         f"--trainer.default_root_dir={root}", "--data.val_fraction=0.2",
         "--trainer.max_steps=3", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false"]
    )  # fmt: skip
    docs = tmp_path / "docs.jsonl"
    rows = [{"text": "Token 3 is here. Token 16 is here. Token 9 is here."},
            {"text": "Token 5 is here. Token 22 is here."}]  # fmt: skip
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "inspect"
    result = inspect_main(
        [f"--checkpoint={root / 'checkpoints' / 'last.ckpt'}", f"--inputs={docs}",
         f"--out_dir={out}", "--codec=helpers_train.HashCodec", "--num_iterations=6"]
    )  # fmt: skip
    # One trajectory per sentence position: 3 + 2, labelled by the sentence each predicts.
    assert result["labels"] == ["d0 s1", "d0 s2", "d0 s3", "d1 s1", "d1 s2"]
    assert len(result["exit_steps"]) == 5 and all(1 <= s <= 6 for s in result["exit_steps"])
    assert sum(result["class_counts"].values()) == 5
    assert len(result["state"]["coords_2d"][0]) == 6  # 6 iterates per trajectory
    for name in ("state_2d.png", "state_3d.png", "pred_2d.png", "movement.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "trajectories.json").read_text())["labels"] == result["labels"]
    with pytest.raises(ValueError, match="no documents"):
        inspect_main([f"--checkpoint={root / 'checkpoints' / 'last.ckpt'}",
             "--codec=helpers_train.HashCodec"])  # fmt: skip


def test_pictures_have_a_colour_legend_and_the_variance_on_each_axis(tmp_path):
    import matplotlib.pyplot as plt

    from experiments.refinement.inspect import axis_label, plot_trajectories, trajectory_figure

    assert axis_label(0, 0.2307) == "PC1 (23.1% var.)"
    assert axis_label(2, 0.00042) == "PC3 (0.042% var.)"  # small shares are not rounded to 0%
    obj = tiny_objective()
    x = torch.randn(4, 5, D, generator=gen(3))
    info = inspect_trajectories(obj, x, None, tmp_path, num_iterations=6, generator=gen(4))
    P = 20  # more positions than can be named: colours are the classes
    evr = info["state"]["explained_variance_ratio"]
    coords = torch.tensor(info["state"]["coords_3d"])
    fig = trajectory_figure(coords, info["exit_steps"], info["labels"], info["classes"], evr,
                            "t", 3)  # fmt: skip
    ax = fig.axes[0]
    assert [ax.get_xlabel(), ax.get_ylabel(), ax.get_zlabel()] == [
        axis_label(k, evr[k]) for k in range(3)
    ]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    counts = info["class_counts"]
    assert legend[:3] == [f"{c.replace('_', ' ')} ({counts[c]})" for c in CLASSES]
    assert sum(counts.values()) == P and "adaptive exit" in legend
    plt.close(fig)
    # few positions: one legend entry per trajectory, by its label
    fig = trajectory_figure(coords[:3, :, :2], info["exit_steps"][:3], ["a", "b", "c"],
                            info["classes"][:3], evr, "t", 2)  # fmt: skip
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][:3] == ["a", "b", "c"]
    plt.close(fig)
    # the saved JSON alone redraws every picture
    files = plot_trajectories(json.loads((tmp_path / "trajectories.json").read_text()), tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in files] == [
        "state_2d.png",
        "state_3d.png",
        "pred_2d.png",
        "pred_3d.png",
        "movement.png",
    ]
