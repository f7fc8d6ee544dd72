"""Does recurrent refinement help? Evidence on a synthetic task (issue #5).

    python -m experiments.refinement.report --out_dir reports/refinement            # full run (CPU)
    python -m experiments.refinement.report --out_dir /tmp/r --preset ci            # seconds

Three models are trained with Lightning (:mod:`experiments.refinement.tasks.train`) on the
*training* difficulties only, each with the same curriculum rule, batch size and number of steps:

(a) the recurrent refiner (:class:`~lcm.objectives.refiner.RefinerObjective`);
(b) an equal-parameter fixed-depth Base-LCM: the layer count whose parameter count is nearest
    to the refiner's;
(c) an equal-FLOPs deeper untied Base-LCM: the layer count whose forward FLOPs per concept
    position are nearest to the refiner's at its *mean training* iteration count (both counted
    with ``torch.utils.flop_counter`` on a teacher-forced forward pass of a task batch).

Then, on held-out examples of every test difficulty (training ones and harder ones, i.e.
extrapolation), it reports the refiner's accuracy at fixed r in ``r_values``, its accuracy with
the adaptive exit over several thresholds tau against the mean exit step, the baselines'
accuracy, and the Spearman rank correlation (ties averaged) between the exit step and the
difficulty. The refiner's *headline* number, fixed before any result is seen, is the adaptive
exit with ``headline_tau``, patience ``patience`` and cap ``max_iterations``; the fixed-r columns
are shown beside it, never picked per difficulty.

Outputs in ``out_dir``: ``report.md`` (tables and verdict), ``results.json`` (every number),
``acc_vs_r.png``, ``acc_vs_exit.png``, ``exit_steps.png``, ``training.png``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from experiments.refinement.inspect import CLASSES, inspect_trajectories
from experiments.refinement.tasks import ChainToRoot, OperatorComposition, Task, TaskBatch, score
from experiments.refinement.tasks.curriculum import CurriculumConfig
from experiments.refinement.tasks.train import (
    CurriculumCallback,
    TaskDataModule,
    TaskModule,
    build_objective,
    fit_on_task,
)
from lcm.objectives.refiner import ExitRule, RefinerObjective
from lcm.train.module import derive_seed

TaskName = Literal["chain_to_root", "operator_composition"]


@dataclass(frozen=True)
class ReportConfig:
    """Everything a report run depends on (the presets in :data:`PRESETS`).

    Attributes:
        task: ``chain_to_root`` (hops) or ``operator_composition`` (k).
        dim: Concept dimension D.
        n_items: Chain: nodes per example.
        encoding: Chain: ``slots`` (child and parent in consecutive concepts) or ``edges``
            (one concept per link), :class:`~experiments.refinement.tasks.chain.ChainToRoot`.
        n_ops: Composition: number of operators.
        max_level: Largest difficulty the task object builds (chain: sets the distractor chain
            lengths, the same for training and test examples).
        train_levels: Difficulties trained on (the curriculum's levels, easiest first).
        test_levels: Difficulties evaluated; those not in ``train_levels`` are extrapolation.
        steps: Optimizer steps per model.
        batch_size: Training examples per step.
        lr: Peak learning rate (AdamW, warmup then cosine to 10%).
        warmup_steps: Linear warmup steps.
        refiner_overrides: RefinerConfig fields on top of its ``tiny`` preset.
        baseline_overrides: BaseLCMConfig fields on top of its ``tiny`` preset (besides the
            layer count, which the matching chooses); should mirror ``refiner_overrides``.
        mean_iterations: Refiner's mean training iteration count.
        backprop_depth: Refiner's truncated-backprop depth k.
        max_train_iterations: Cap on the refiner's drawn training r.
        init: Refiner's initial state (``embed`` = warm start from the query's embedding).
        threshold: Curriculum: probe accuracy of the newest level that unlocks the next one.
        min_steps: Curriculum: least steps per stage.
        max_steps: Curriculum: most steps per stage.
        newest_share: Curriculum: share of each batch from the newest level.
        probe_every: Curriculum probe period (steps).
        probe_size: Curriculum probe examples.
        eval_size: Held-out test examples per difficulty.
        r_values: Fixed iteration counts evaluated.
        taus: Exit thresholds swept.
        headline_tau: Exit threshold of the headline refiner number (fixed in advance).
        patience: Exit patience m.
        max_iterations: Exit cap r_max (also the longest trajectory evaluated).
        inspect_size: Test examples per difficulty whose latent trajectories are classified
            (fixed point / orbit / slider, :mod:`experiments.refinement.inspect`).
        seed: Seed of models, data and evaluation.
    """

    task: TaskName = "chain_to_root"
    dim: int = 16
    n_items: int = 12
    encoding: Literal["slots", "edges"] = "slots"
    n_ops: int = 4
    max_level: int = 6
    train_levels: tuple[int, ...] = (1, 2, 3)
    test_levels: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    steps: int = 4000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 200
    refiner_overrides: dict[str, Any] = field(default_factory=dict)
    baseline_overrides: dict[str, Any] = field(default_factory=dict)
    mean_iterations: float = 8.0
    backprop_depth: int = 4
    max_train_iterations: int = 32
    init: str = "embed"
    threshold: float = 0.9
    min_steps: int = 200
    max_steps: int = 1500
    newest_share: float = 0.5
    probe_every: int = 100
    probe_size: int = 256
    eval_size: int = 1000
    r_values: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    taus: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
    headline_tau: float = 1e-3
    patience: int = 2
    max_iterations: int = 32
    inspect_size: int = 200
    seed: int = 0


_WIDE = dict(d_model=64, n_heads=2, ffn_dim=256)  # 32-dim heads: one head can match a code

PRESETS: dict[str, ReportConfig] = {
    # Seconds: the whole pipeline on a toy budget (tests).
    "ci": ReportConfig(
        dim=8,
        n_items=5,
        encoding="edges",
        max_level=3,
        train_levels=(1, 2),
        test_levels=(1, 2, 3),
        steps=12,
        batch_size=16,
        warmup_steps=2,
        refiner_overrides=dict(ctx_layers=0),
        mean_iterations=3.0,
        backprop_depth=2,
        max_train_iterations=6,
        min_steps=2,
        max_steps=4,
        probe_every=2,
        probe_size=16,
        eval_size=24,
        r_values=(1, 2, 4),
        taus=(1e-2, 1e-3),
        headline_tau=1e-3,
        max_iterations=6,
        inspect_size=4,
    ),
    # The committed run (reports/refinement): one concept per link, so that following a link is
    # one content lookup; the refiner has no contextualizer layer, so its context positions are
    # the raw edges and every hop has to be an iteration of the core. Trained on 1-3 hops, tested
    # up to 8. About 10 minutes on one CPU core.
    "full": ReportConfig(
        dim=32,
        n_items=16,
        encoding="edges",
        max_level=8,
        train_levels=(1, 2, 3),
        test_levels=(1, 2, 3, 4, 5, 6, 7, 8),
        steps=3000,
        batch_size=96,
        lr=2e-3,
        warmup_steps=200,
        refiner_overrides=dict(_WIDE, ctx_layers=0, core_layers=1),
        baseline_overrides=_WIDE,
        mean_iterations=6.0,
        backprop_depth=6,
        max_train_iterations=24,
        threshold=0.9,
        min_steps=300,
        max_steps=1000,
        eval_size=1000,
    ),
    # The first committed run (reports/refinement_slots), a negative result: child and parent in
    # consecutive concepts, a 2-layer contextualizer. About 30-40 minutes on one CPU core.
    "slots": ReportConfig(
        dim=16,
        n_items=10,
        max_level=6,
        train_levels=(1, 2, 3),
        test_levels=(1, 2, 3, 4, 5, 6),
        steps=6000,
        batch_size=96,
        lr=4e-3,
        warmup_steps=300,
        mean_iterations=6.0,
        backprop_depth=6,
        max_train_iterations=24,
        threshold=0.8,
        min_steps=300,
        max_steps=2000,
        eval_size=1000,
    ),
}


# ------------------------------------------------------------------------------ statistics
def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, ties given the mean of the ranks they span (float64)."""
    v = values.double()
    order = torch.argsort(v, stable=True)
    ranks = torch.empty_like(v)
    sorted_v = v[order]
    i, n = 0, len(v)
    while i < n:
        j = i
        while j + 1 < n and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two 1-D tensors (nan if either is constant)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = a.norm() * b.norm()
    return float((a @ b) / den) if den > 0 else float("nan")


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation: Pearson of the average ranks (ties averaged)."""
    return pearson(average_ranks(a), average_ranks(b))


def duration(seconds: float) -> str:
    """'42 s' or '3.5 min'."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def stderr(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p over n examples."""
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


# ------------------------------------------------------------------------------ matching
def make_task(cfg: ReportConfig) -> Task:
    if cfg.task == "chain_to_root":
        return ChainToRoot(
            cfg.dim, n_items=cfg.n_items, max_hops=cfg.max_level, encoding=cfg.encoding
        )
    return OperatorComposition(cfg.dim, n_ops=cfg.n_ops, max_k=cfg.max_level, seed=cfg.seed)


def forward_flops(objective, batch: dict[str, Tensor], num_iterations: int | None = None) -> float:
    """FLOPs of one teacher-forced forward pass per concept position (valid or not)."""
    x, mask = batch["x"], batch["mask"]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if num_iterations is None:
            objective.model(x, mask)
        else:
            objective.model(x, mask, num_iterations, generator=torch.Generator().manual_seed(0))
    return counter.get_total_flops() / (x.shape[0] * x.shape[1])


def match_baselines(cfg: ReportConfig, task: Task, max_layers: int = 48) -> dict[str, Any]:
    """Layer counts of the equal-parameter and equal-FLOPs Base-LCMs (module docstring)."""
    refiner = build_objective("refiner", "tiny", cfg.dim, cfg.refiner_overrides, _refiner_args(cfg))
    batch = task.sample(4, difficulty=cfg.train_levels[-1], generator=torch.Generator()).batch()
    r_mean = cfg.mean_iterations
    # FLOPs are affine in r: measure r = 1 and 2, then evaluate at the (non-integer) mean.
    f1, f2 = forward_flops(refiner, batch, 1), forward_flops(refiner, batch, 2)
    ref_flops = f1 + (r_mean - 1) * (f2 - f1)
    ref_params = refiner.model.param_count()

    def base(n_layers: int):
        overrides = {**cfg.baseline_overrides, "n_layers": n_layers}
        return build_objective("base_lcm", "tiny", cfg.dim, overrides)

    b1, b2 = base(1), base(2)
    p1, p2 = b1.model.param_count(), b2.model.param_count()
    g1, g2 = forward_flops(b1, batch), forward_flops(b2, batch)
    layers = range(1, max_layers + 1)
    n_params = min(layers, key=lambda n: abs(p1 + (n - 1) * (p2 - p1) - ref_params))
    n_flops = min(layers, key=lambda n: abs(g1 + (n - 1) * (g2 - g1) - ref_flops))
    return dict(
        refiner_params=ref_params,
        refiner_flops_per_position_at_mean_r=ref_flops,
        refiner_flops_per_iteration=f2 - f1,
        mean_training_r=r_mean,
        equal_params_layers=n_params,
        equal_params_params=p1 + (n_params - 1) * (p2 - p1),
        equal_params_flops=g1 + (n_params - 1) * (g2 - g1),
        equal_flops_layers=n_flops,
        equal_flops_params=p1 + (n_flops - 1) * (p2 - p1),
        equal_flops_flops=g1 + (n_flops - 1) * (g2 - g1),
    )


def _refiner_args(cfg: ReportConfig) -> dict[str, Any]:
    return dict(
        mean_iterations=cfg.mean_iterations,
        backprop_depth=cfg.backprop_depth,
        max_train_iterations=cfg.max_train_iterations,
        init=cfg.init,
        exit_rule=ExitRule(cfg.headline_tau, cfg.patience, cfg.max_iterations),
    )


# ------------------------------------------------------------------------------ training
def train_model(
    name: str, cfg: ReportConfig, task: Task, family: str, overrides: dict[str, Any]
) -> tuple[TaskModule, dict[str, Any]]:
    """Train one model with the curriculum on the training levels; returns it and a log."""
    torch.manual_seed(derive_seed(cfg.seed, 100))  # same init seed for every model
    curriculum = CurriculumConfig(
        levels=tuple(float(v) for v in cfg.train_levels),
        threshold=cfg.threshold,
        min_steps=cfg.min_steps,
        max_steps=cfg.max_steps,
        newest_share=cfg.newest_share,
    )
    data = TaskDataModule(task, cfg.batch_size, curriculum, seed=cfg.seed)
    if family == "refiner":
        objective = build_objective("refiner", "tiny", cfg.dim, overrides, _refiner_args(cfg))
    else:
        objective = build_objective("base_lcm", "tiny", cfg.dim, overrides)
    module = TaskModule(
        family,  # type: ignore[arg-type]
        sonar_dim=cfg.dim,
        model_overrides=overrides,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        seed=cfg.seed,
        objective=objective,
        # Curriculum probes of the refiner use the headline exit rule (its default rule).
        eval_args={},
    )
    probe = CurriculumCallback(cfg.probe_every, cfg.probe_size, seed=cfg.seed)
    t0 = time.perf_counter()
    fit_on_task(module, data, cfg.steps, callbacks=[probe])
    seconds = time.perf_counter() - t0
    module.eval()
    reached = [f"{h['level']:g}@{h['step']}" for h in data.curriculum.history]
    print(
        f"[refinement_report] {name}: {cfg.steps} steps in {duration(seconds)}, "
        f"levels unlocked at steps {reached or 'none'}",
        flush=True,
    )
    log = dict(
        name=name,
        family=family,
        overrides=overrides,
        params=module.network.param_count(),
        train_seconds=seconds,
        curriculum=data.curriculum.history,
        final_stage_levels=list(data.curriculum.unlocked),
        probes=probe.probes,
    )
    return module, log


# ------------------------------------------------------------------------------ evaluation
def held_out_sets(cfg: ReportConfig, task: Task) -> dict[int, TaskBatch]:
    """Fixed held-out examples per test difficulty (a seed no training batch uses)."""
    out = {}
    for level in cfg.test_levels:
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, 9000, level))
        out[level] = task.sample(cfg.eval_size, difficulty=level, generator=g)
    return out


@torch.no_grad()
def refiner_iterates(module: TaskModule, tb: TaskBatch, n: int, seed: int) -> Tensor:
    """(n, B, D) predictions y_1..y_n of each example's answer (prompt only, answer hidden)."""
    objective: RefinerObjective = module.objective  # type: ignore[assignment]
    x, mask = tb.prompt()
    g = torch.Generator().manual_seed(seed)
    traj = objective.trajectory(x, mask, n, g)  # preds (n, B, T, D), position t -> t+1
    query = tb.answer_position - 1  # (B,) the position that predicts the answer
    return traj.preds[:, torch.arange(len(tb)), query]  # (n, B, D)


def evaluate_refiner(
    module: TaskModule, cfg: ReportConfig, sets: dict[int, TaskBatch]
) -> dict[str, Any]:
    """Accuracy at every fixed r and for every exit threshold, per difficulty."""
    fixed: dict[int, dict[int, float]] = {r: {} for r in cfg.r_values}
    exit_res: dict[float, dict[str, Any]] = {}
    n_max = max(cfg.max_iterations, max(cfg.r_values))
    exits_at_headline: dict[int, list[int]] = {}
    taus = sorted(set(cfg.taus) | {cfg.headline_tau}, reverse=True)
    per_tau_level: dict[float, dict[int, dict[str, float]]] = {t: {} for t in taus}
    for level, tb in sets.items():
        preds = refiner_iterates(module, tb, n_max, derive_seed(cfg.seed, 9100, level))
        for r in cfg.r_values:
            fixed[r][level] = score(preds[r - 1], tb).accuracy
        for tau in taus:
            rule = ExitRule(tau, cfg.patience, cfg.max_iterations)
            steps = rule.exit_steps(preds)  # (B,) 1-based
            chosen = preds[steps - 1, torch.arange(len(tb))]  # (B, D)
            s = score(chosen, tb)
            per_tau_level[tau][level] = dict(
                accuracy=s.accuracy,
                mean_exit=float(steps.float().mean()),
                median_exit=float(steps.float().median()),
                at_cap=float((steps >= cfg.max_iterations).float().mean()),
            )
            if tau == cfg.headline_tau:
                exits_at_headline[level] = steps.tolist()
    for tau in taus:
        rows = per_tau_level[tau]
        n = sum(len(sets[v]) for v in rows)
        exit_res[tau] = dict(
            accuracy=sum(rows[v]["accuracy"] * len(sets[v]) for v in rows) / n,
            mean_exit=sum(rows[v]["mean_exit"] * len(sets[v]) for v in rows) / n,
            per_level=rows,
        )
    levels = torch.tensor([v for v, s in exits_at_headline.items() for _ in s], dtype=torch.float)
    steps = torch.tensor([x for s in exits_at_headline.values() for x in s], dtype=torch.float)
    return dict(
        fixed_r=fixed,
        exit=exit_res,
        headline=per_tau_level[cfg.headline_tau],
        exit_steps=exits_at_headline,
        spearman_exit_vs_difficulty=spearman(steps, levels),
        pearson_exit_vs_difficulty=pearson(steps, levels),
    )


@torch.no_grad()
def inspect_refiner(
    module: TaskModule, cfg: ReportConfig, sets: dict[int, TaskBatch], out: Path
) -> dict[str, Any]:
    """Classify the latent trajectories of ``inspect_size`` answers per difficulty and draw
    the PCA pictures of one answer per difficulty (``trajectories/``)."""
    objective: RefinerObjective = module.objective  # type: ignore[assignment]
    n = max(cfg.max_iterations, 3)
    counts: dict[int, dict[str, int]] = {}
    for level, tb in sets.items():
        k = min(cfg.inspect_size, len(tb))
        x, mask = tb.prompt()
        query = (tb.answer_position - 1)[:k].tolist()
        with tempfile.TemporaryDirectory() as tmp:  # only the counts are kept (the JSON is MBs)
            info = inspect_trajectories(
                objective,
                x[:k],
                mask[:k],
                tmp,
                num_iterations=n,
                positions=[(b, q) for b, q in enumerate(query)],
                generator=torch.Generator().manual_seed(derive_seed(cfg.seed, 9200, level)),
                plots=False,
            )
        counts[level] = info["class_counts"]
    # One answer per difficulty in the same picture (the first example of each set).
    xs, ms, pos, labels = [], [], [], []
    for i, (level, tb) in enumerate(sets.items()):
        x, mask = tb.prompt()
        xs.append(x[:1])
        ms.append(mask[:1])
        pos.append((i, int(tb.answer_position[0]) - 1))
        one = _first(tb)
        ok = bool(score(refiner_iterates(module, one, n, 0)[-1], one).correct[0])
        labels.append(f"difficulty {level} ({'right' if ok else 'wrong'} at r={n})")
    pics = inspect_trajectories(
        objective,
        torch.cat(xs),
        torch.cat(ms),
        out / "trajectories",
        num_iterations=n,
        positions=pos,
        labels=labels,
        generator=torch.Generator().manual_seed(derive_seed(cfg.seed, 9300)),
    )
    return dict(
        class_counts=counts,
        pictures=[str(Path(f).relative_to(out)) for f in pics["files"]],
        picture_classes=pics["classes"],
    )


def _first(tb: TaskBatch) -> TaskBatch:
    from dataclasses import fields

    return TaskBatch(**{f.name: getattr(tb, f.name)[:1] for f in fields(TaskBatch)})


@torch.no_grad()
def evaluate_fixed(module: TaskModule, sets: dict[int, TaskBatch]) -> dict[int, float]:
    return {level: module.task_scores(tb).accuracy for level, tb in sets.items()}


def floors(cfg: ReportConfig, task: Task, sets: dict[int, TaskBatch]) -> dict[str, Any]:
    out: dict[str, Any] = {"chance": task.chance}
    if isinstance(task, ChainToRoot):
        out["no_chasing"] = {v: task.no_chasing_accuracy(tb) for v, tb in sets.items()}
    return out


# ------------------------------------------------------------------------------ report
def _plots(res: dict[str, Any], cfg: ReportConfig, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    levels = list(cfg.test_levels)
    ref = res["refiner"]
    eqp, eqf = res["equal_params"]["accuracy"], res["equal_flops"]["accuracy"]
    names = res["names"]
    floor = res["floors"].get("no_chasing", {})

    cols = min(3, len(levels))
    rows = math.ceil(len(levels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, level in zip(axes.flat, levels):
        rs = list(cfg.r_values)
        ax.plot(rs, [ref["fixed_r"][r][level] for r in rs], "o-", color="C0", label="refiner")
        ax.axhline(eqp[level], color="C1", ls="--", label=names["equal_params"])
        ax.axhline(eqf[level], color="C2", ls="-.", label=names["equal_flops"])
        if level in floor:
            ax.axhline(floor[level], color="grey", ls=":", label="no-chasing shortcut")
        ax.axhline(res["floors"]["chance"], color="k", ls=":", lw=0.8, label="chance")
        split = "train" if level in cfg.train_levels else "extrapolation"
        ax.set_title(f"difficulty {level} ({split})", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xticks(rs, [str(r) for r in rs])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("iterations r")
        ax.set_ylabel("accuracy")
    for ax in list(axes.flat)[len(levels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path = out / "acc_vs_r.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    taus = sorted(ref["exit"], key=float, reverse=True)
    xs = [ref["exit"][t]["mean_exit"] for t in taus]
    ys = [ref["exit"][t]["accuracy"] for t in taus]
    ax.plot(xs, ys, "o-", color="C0", label="adaptive exit (all test levels)")
    for t, x, y in zip(taus, xs, ys):
        ax.annotate(
            f"tau={float(t):g}", (x, y), fontsize=7, xytext=(3, -9), textcoords="offset points"
        )
    n_all = {v: cfg.eval_size for v in levels}
    fixed_all = [
        sum(ref["fixed_r"][r][v] * n_all[v] for v in levels) / sum(n_all.values())
        for r in cfg.r_values
    ]
    ax.plot(list(cfg.r_values), fixed_all, "s--", color="C3", label="fixed r")
    for level in levels:
        px = [ref["exit"][t]["per_level"][level]["mean_exit"] for t in taus]
        py = [ref["exit"][t]["per_level"][level]["accuracy"] for t in taus]
        ax.plot(px, py, "-", lw=0.8, alpha=0.6, label=f"difficulty {level}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("mean iterations")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "acc_vs_exit.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)

    fig, ax = plt.subplots(figsize=(6, 4))
    data = [ref["exit_steps"][v] for v in levels]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(levels) + 1), [str(v) for v in levels])
    ax.set_xlabel("difficulty")
    ax.set_ylabel("exit step")
    rho = ref["spearman_exit_vs_difficulty"]
    ax.set_title(
        f"exit step at tau={cfg.headline_tau:g}, m={cfg.patience}, cap {cfg.max_iterations}; "
        f"Spearman {rho:.2f}",
        fontsize=9,
    )
    fig.tight_layout()
    path = out / "exit_steps.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, colour in (("refiner", "C0"), ("equal_params", "C1"), ("equal_flops", "C2")):
        probes = res["training"][key]["probes"]
        if probes:
            ax.plot(
                [p["step"] for p in probes],
                [p["accuracy"] for p in probes],
                ".-",
                lw=0.8,
                color=colour,
                label=names[key],
            )
    ax.set_xlabel("training step")
    ax.set_ylabel("probe accuracy, newest level")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "training.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)
    return files


def _override_flags(preset: str, cfg: ReportConfig) -> str:
    """The command-line overrides of `run_report` that changed the preset, e.g. ' --seed 1'."""
    base = PRESETS[preset]
    changed = [n for n in ("steps", "eval_size", "seed") if getattr(cfg, n) != getattr(base, n)]
    return "".join(f" --{n} {getattr(cfg, n)}" for n in changed)


def _markdown(res: dict[str, Any], cfg: ReportConfig) -> str:
    ref, names = res["refiner"], res["names"]
    eqp, eqf = res["equal_params"]["accuracy"], res["equal_flops"]["accuracy"]
    m = res["matching"]
    floor = res["floors"].get("no_chasing", {})
    n = cfg.eval_size
    lines = [
        "# Recurrent refinement: evidence on a synthetic task",
        "",
        f"Generated by `python -m experiments.refinement.report --preset {res['preset']}"
        f"{_override_flags(res['preset'], cfg)}` in "
        f"{duration(res['wall_seconds'])} on {res['machine']} (torch threads: "
        f"{res['threads']}). Every number below is in `results.json`.",
        "",
        "## Set-up",
        "",
        f"- Task `{cfg.task}`, D={cfg.dim}"
        + (
            f", {cfg.n_items} items per example, encoding `{cfg.encoding}`"
            if cfg.task == "chain_to_root"
            else ""
        )
        + f". Trained on difficulties {list(cfg.train_levels)} only; tested on "
        f"{list(cfg.test_levels)} ({n} held-out examples each; the binomial standard error of an "
        f"accuracy near 0.5 is {stderr(0.5, n):.3f}).",
        f"- Each model: {cfg.steps} AdamW steps of {cfg.batch_size} fresh examples, lr "
        f"{cfg.lr:g}, the same curriculum rule (start at the easiest level, unlock the next when "
        f"the newest level's probe accuracy reaches {cfg.threshold:g} after at least "
        f"{cfg.min_steps} steps, or after {cfg.max_steps} steps; {cfg.newest_share:.0%} of each "
        f"batch from the newest level).",
        f"- (a) **{names['refiner']}**: {m['refiner_params']:,} parameters; training r ~ "
        f"log-normal Poisson, mean {cfg.mean_iterations:g}, backprop through the last "
        f"{cfg.backprop_depth}, init `{cfg.init}`; overrides of the `tiny` preset "
        f"{cfg.refiner_overrides or 'none'}.",
        f"- Both Base-LCMs: the `tiny` preset with {cfg.baseline_overrides or 'no overrides'} "
        "besides the layer count.",
        f"- (b) **{names['equal_params']}**: {m['equal_params_params']:,} parameters "
        f"(nearest layer count to the refiner's parameter count).",
        f"- (c) **{names['equal_flops']}**: {m['equal_flops_params']:,} parameters; "
        f"{m['equal_flops_flops'] / 1e3:.1f} kFLOP per concept position against the refiner's "
        f"{m['refiner_flops_per_position_at_mean_r'] / 1e3:.1f} kFLOP at its **mean training r = "
        f"{cfg.mean_iterations:g}** (FLOPs matched at the mean training r, counted with "
        f"torch.utils.flop_counter on a teacher-forced forward pass).",
        f"- Headline refiner number (fixed before the run): adaptive exit with tau = "
        f"{cfg.headline_tau:g}, patience {cfg.patience}, cap {cfg.max_iterations}.",
        "- Training wall time: "
        + ", ".join(
            f"{names[k]} {duration(res['training'][k]['train_seconds'])}"
            for k in ("refiner", "equal_params", "equal_flops")
        )
        + ".",
        "",
        "## Accuracy per difficulty",
        "",
    ]
    head = ["difficulty", "split"] + [f"r={r}" for r in cfg.r_values]
    head += ["refiner exit (mean step)", names["equal_params"], names["equal_flops"]]
    head += ["no-chasing floor"] if floor else []
    head += ["chance"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for level in cfg.test_levels:
        h = ref["headline"][level]
        row = [str(level), "train" if level in cfg.train_levels else "**extrap.**"]
        row += [f"{ref['fixed_r'][r][level]:.3f}" for r in cfg.r_values]
        row += [f"**{h['accuracy']:.3f}** ({h['mean_exit']:.1f})"]
        row += [f"{eqp[level]:.3f}", f"{eqf[level]:.3f}"]
        row += [f"{floor[level]:.3f}"] if floor else []
        row += [f"{res['floors']['chance']:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "## Adaptive exit: accuracy against mean iterations (all test difficulties)",
        "",
        "| tau | mean exit step | accuracy | "
        + " | ".join(f"exit @ {v}" for v in cfg.test_levels)
        + " |",
        "|" + "---|" * (3 + len(cfg.test_levels)),
    ]
    for tau in sorted(ref["exit"], key=float, reverse=True):
        e = ref["exit"][tau]
        lines.append(
            f"| {float(tau):g} | {e['mean_exit']:.2f} | {e['accuracy']:.3f} | "
            + " | ".join(f"{e['per_level'][v]['mean_exit']:.1f}" for v in cfg.test_levels)
            + " |"
        )
    lines += [
        "",
        f"## Exit step against difficulty (tau = {cfg.headline_tau:g})",
        "",
        "| difficulty | mean | median | share at the cap |",
        "|---|---|---|---|",
    ]
    for level in cfg.test_levels:
        h = ref["headline"][level]
        lines.append(
            f"| {level} | {h['mean_exit']:.2f} | {h['median_exit']:.1f} | {h['at_cap']:.2f} |"
        )
    lines += [
        "",
        f"Spearman rank correlation (ties averaged) between exit step and difficulty over all "
        f"{n * len(cfg.test_levels)} test examples: **{ref['spearman_exit_vs_difficulty']:.3f}** "
        f"(Pearson {ref['pearson_exit_vs_difficulty']:.3f}).",
        "",
        f"## Latent trajectories (first {cfg.inspect_size} test answers per difficulty, "
        f"{cfg.max_iterations} iterations)",
        "",
        "Classified from the last 8 iterations of the latent state by "
        "`experiments.refinement.inspect` (fixed "
        "point: converged or contracting; orbit: moving without net drift; slider: drifting "
        "in one direction). PCA pictures of one answer per difficulty: `trajectories/`.",
        "",
        "| difficulty | " + " | ".join(CLASSES) + " |",
        "|" + "---|" * (1 + len(CLASSES)),
        *[
            f"| {level} | "
            + " | ".join(str(ref["trajectories"]["class_counts"][level][c]) for c in CLASSES)
            + " |"
            for level in cfg.test_levels
        ],
        "",
        "## Verdict against the issue's bar",
        "",
    ]
    v = res["verdict"]
    for level, d in v["extrapolation"].items():
        lines.append(
            f"- Difficulty {level}: refiner {d['refiner']:.3f} vs equal-parameter "
            f"{d['equal_params']:.3f} (difference {d['diff']:+.3f}, {d['z']:+.1f} standard "
            f"errors) and equal-FLOPs {d['equal_flops']:.3f}."
        )
    lines += [
        f"- Beats the equal-parameter fixed-depth baseline beyond the training difficulties "
        f"(every extrapolation level, by more than 2 standard errors): "
        f"**{'yes' if v['beats_equal_params_beyond_training'] else 'no'}**.",
        f"- Mean exit step grows with difficulty (non-decreasing over the test levels and "
        f"Spearman > 0): **{'yes' if v['exit_grows_with_difficulty'] else 'no'}** "
        f"(mean exit per level: "
        + ", ".join(f"{ref['headline'][lv]['mean_exit']:.1f}" for lv in cfg.test_levels)
        + ").",
        "",
        "## Figures",
        "",
        "- `acc_vs_r.png`: refiner accuracy against r per difficulty, baselines as lines.",
        "- `acc_vs_exit.png`: accuracy against mean iterations over tau (and fixed r).",
        "- `exit_steps.png`: exit-step distribution per difficulty.",
        "- `training.png`: curriculum probe accuracy during training.",
        "- `trajectories/state_2d.png` (and `_3d`, `pred_*`, `movement.png`): PCA of the "
        "latent trajectories of one test answer per difficulty; o start, square end, * exit.",
        "",
    ]
    return "\n".join(lines)


def verdict(res: dict[str, Any], cfg: ReportConfig) -> dict[str, Any]:
    ref = res["refiner"]
    extra = [v for v in cfg.test_levels if v not in cfg.train_levels]
    out: dict[str, Any] = {"extrapolation": {}}
    wins = []
    for level in extra:
        a = ref["headline"][level]["accuracy"]
        b = res["equal_params"]["accuracy"][level]
        se = math.sqrt(stderr(a, cfg.eval_size) ** 2 + stderr(b, cfg.eval_size) ** 2)
        z = (a - b) / se if se > 0 else 0.0
        wins.append(z > 2)
        out["extrapolation"][level] = dict(
            refiner=a,
            equal_params=b,
            equal_flops=res["equal_flops"]["accuracy"][level],
            diff=a - b,
            z=z,
        )
    means = [ref["headline"][v]["mean_exit"] for v in cfg.test_levels]
    out["beats_equal_params_beyond_training"] = bool(wins) and all(wins)
    out["exit_grows_with_difficulty"] = (
        all(b >= a for a, b in zip(means, means[1:])) and ref["spearman_exit_vs_difficulty"] > 0
    )
    return out


def run_report(
    out_dir: str = "reports/refinement",
    preset: Literal["ci", "full", "slots"] = "full",
    steps: int | None = None,
    eval_size: int | None = None,
    seed: int | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Train the refiner and its two fixed-depth baselines on a synthetic task and write the
    evidence report (module docstring).

    Args:
        out_dir: Folder for report.md, results.json and the PNG plots.
        preset: ``full`` (the committed run in reports/refinement, about 10 min on one CPU
            core), ``slots`` (the earlier negative run in reports/refinement_slots, 30-40 min)
            or ``ci`` (seconds, for tests).
        steps: Override the training steps per model.
        eval_size: Override the held-out examples per difficulty.
        seed: Override the seed.
        threads: torch CPU threads.
    """
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    cfg = PRESETS[preset]
    overrides = {k: v for k, v in dict(steps=steps, eval_size=eval_size, seed=seed).items()}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = make_task(cfg)
    matching = match_baselines(cfg, task)
    names = dict(
        refiner="refiner (tied core x r)",
        equal_params=f"equal-params Base-LCM ({matching['equal_params_layers']} layers)",
        equal_flops=f"equal-FLOPs Base-LCM ({matching['equal_flops_layers']} layers)",
    )
    sets = held_out_sets(cfg, task)
    res: dict[str, Any] = dict(
        preset=preset,
        config=asdict(cfg),
        matching=matching,
        names=names,
        floors=floors(cfg, task, sets),
        training={},
        machine=f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
        threads=threads,
    )
    refiner, log = train_model("refiner", cfg, task, "refiner", cfg.refiner_overrides)
    res["training"]["refiner"] = log
    res["refiner"] = evaluate_refiner(refiner, cfg, sets)
    res["refiner"]["trajectories"] = inspect_refiner(refiner, cfg, sets, out)
    for key in ("equal_params", "equal_flops"):
        overrides = {**cfg.baseline_overrides, "n_layers": matching[f"{key}_layers"]}
        module, log = train_model(key, cfg, task, "base_lcm", overrides)
        res["training"][key] = log
        res[key] = {"accuracy": evaluate_fixed(module, sets)}
    res["verdict"] = verdict(res, cfg)
    res["wall_seconds"] = time.perf_counter() - t0
    res["figures"] = _plots(res, cfg, out)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "report.md").write_text(_markdown(res, cfg))
    return res


def main(args: list[str] | None = None) -> None:
    from jsonargparse import CLI

    res = CLI(run_report, args=args, as_positional=False)
    v = res["verdict"]
    print(
        f"wrote {res['figures']} and report.md; beats equal-params beyond training: "
        f"{v['beats_equal_params_beyond_training']}, exit grows with difficulty: "
        f"{v['exit_grows_with_difficulty']}; {duration(res['wall_seconds'])}"
    )


if __name__ == "__main__":
    main()
