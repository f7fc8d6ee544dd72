"""Latent-trajectory inspection of the recurrent refiner: PCA pictures and a verdict per concept.

    from experiments.refinement.inspect import inspect_trajectories
    info = inspect_trajectories(objective, x, mask, "runs/inspect", num_iterations=32)
    info["classes"]        # ["fixed_point", "orbit", ...], one per inspected position
    info["exit_steps"]     # adaptive exit step of each (the objective's exit rule)

``x`` is (B, T, D) in the model's *normalized* concept space (loading a checkpoint and encoding
text is the CLI's job). The refiner is run for ``num_iterations`` iterations with
:meth:`~lcm.objectives.refiner.RefinerObjective.trajectory`; position t of row b is the
refinement of the prediction of concept t+1 (network positions, not target-aligned).

What is written to ``out_dir``:
- ``state_2d.png`` / ``state_3d.png``: the latent states s_1..s_n of every inspected position,
  projected on the first 2 / 3 principal components of all those iterates together; one line
  per position, coloured from light (early) to dark (late), start marked ``o``, end ``s``
  (square), the adaptive exit step ``*``.
- ``pred_2d.png`` / ``pred_3d.png``: the same for the predictions y_i = readout(s_i).
- ``movement.png``: 1 - cos(y_i, y_{i-1}) per iteration (log scale) with the exit threshold.
- ``trajectories.json``: the projected coordinates, explained variance, exit steps, classes
  and the movement statistics behind each class (:func:`classify_trajectory`).

Classes (Geiping et al. 2025 describe all three in their recurrent-depth model), decided from the
last ``window`` steps of a trajectory (:class:`TrajectoryThresholds`, all distances relative to
the mean norm of the trajectory's iterates so that the thresholds do not depend on the scale):

- ``fixed_point``: converged. Its last step is shorter than ``fixed_tol``, or the steps shrink
  geometrically: the last step is at most ``contraction`` times the first step of the window.
- ``orbit``: still moving but going nowhere: the net displacement over the window is less than
  ``drift_min`` times the path length (it turns back, cycles around a bounded set).
- ``slider``: still moving in a consistent direction: net displacement at least ``drift_min``
  times the path length, without the contraction of a fixed point.

An orbit whose period is much longer than the window looks locally straight and is called a
slider; use a larger ``window`` (and more iterations) to tell those apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from encoders.base import SentenceCodec
from lcm.objectives.refiner import ExitRule, RefinerObjective, movement

CLASSES = ("fixed_point", "orbit", "slider")


@dataclass(frozen=True)
class TrajectoryThresholds:
    """Thresholds of the fixed point / orbit / slider classification (module docstring).

    Attributes:
        window: Trailing steps looked at (fewer if the trajectory is shorter).
        fixed_tol: Last step / mean iterate norm below this = converged.
        contraction: Last step / first step of the window at most this = converging
            geometrically (a fixed point not reached yet).
        drift_min: Net displacement / path length over the window at least this = drifting in
            one direction (slider), below it = turning back (orbit).
    """

    window: int = 8
    fixed_tol: float = 1e-3
    contraction: float = 0.1
    drift_min: float = 0.5

    def __post_init__(self) -> None:
        if self.window < 2 or self.fixed_tol < 0 or not 0 <= self.contraction < 1:
            raise ValueError(f"invalid thresholds {self}")
        if not 0 < self.drift_min <= 1:
            raise ValueError(f"drift_min must be in (0, 1], got {self.drift_min}")


def classify_trajectory(
    points: Tensor, thresholds: TrajectoryThresholds | None = None
) -> tuple[str, dict[str, float]]:
    """Classify one trajectory (n, F), n >= 3 iterates in order, as fixed point, orbit or slider.

    Returns:
        (class, stats) with stats ``last_step`` (relative to the mean iterate norm),
        ``step_ratio`` (last / first step of the window), ``straightness`` (net displacement /
        path length over the window) and ``window`` (steps used).
    """
    th = thresholds or TrajectoryThresholds()
    p = points.double()
    if p.ndim != 2 or p.shape[0] < 3:
        raise ValueError(f"need (n >= 3, F) iterates, got {tuple(points.shape)}")
    w = min(th.window, p.shape[0] - 1)
    tail = p[-(w + 1) :]  # (w + 1, F)
    steps = (tail[1:] - tail[:-1]).norm(dim=-1)  # (w,)
    scale = p.norm(dim=-1).mean().clamp(min=1e-12)
    path = steps.sum()
    last = float(steps[-1] / scale)
    ratio = float(steps[-1] / steps[0]) if steps[0] > 0 else (0.0 if steps[-1] == 0 else math.inf)
    straight = float((tail[-1] - tail[0]).norm() / path) if path > 0 else 0.0
    stats = dict(last_step=last, step_ratio=ratio, straightness=straight, window=float(w))
    if last < th.fixed_tol or ratio <= th.contraction:
        return "fixed_point", stats
    return ("slider" if straight >= th.drift_min else "orbit"), stats


@dataclass
class PCA:
    """A principal-component projection fitted by SVD of the centred data.

    Attributes:
        mean: (F,) the data mean.
        components: (k, F) orthonormal directions, largest variance first.
        explained_variance: (k,) variance along each component (unbiased, n - 1).
        explained_variance_ratio: (k,) share of the total variance.
    """

    mean: Tensor
    components: Tensor
    explained_variance: Tensor
    explained_variance_ratio: Tensor

    @classmethod
    def fit(cls, data: Tensor, k: int) -> PCA:
        """Fit on data (N, F); k is capped at min(N, F)."""
        data = data.double()
        n = data.shape[0]
        k = min(k, n, data.shape[1])
        mean = data.mean(dim=0)
        _, s, vh = torch.linalg.svd(data - mean, full_matrices=False)  # s (min(N, F),)
        var = s.pow(2) / max(n - 1, 1)
        total = var.sum().clamp(min=1e-30)
        # Fix the sign of each direction (largest |loading| positive) so pictures are stable.
        comps = vh[:k]
        sign = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
        comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
        return cls(mean, comps, var[:k], var[:k] / total)

    def transform(self, data: Tensor) -> Tensor:
        """(..., F) -> (..., k) coordinates."""
        return (data.double() - self.mean) @ self.components.T


def _selected(
    mask: Tensor | None, shape: tuple[int, int], positions: Sequence[Sequence[int]] | None
) -> list[tuple[int, int]]:
    B, T = shape
    if positions is None:
        if mask is None:
            return [(b, t) for b in range(B) for t in range(T)]
        return [(int(b), int(t)) for b, t in mask.nonzero().tolist()]
    out = []
    for pos in positions:
        b, t = (0, int(pos)) if isinstance(pos, int) else (int(pos[0]), int(pos[1]))
        if not (0 <= b < B and 0 <= t < T):
            raise ValueError(f"position {(b, t)} outside the batch of shape {(B, T)}")
        out.append((b, t))
    return out


#: Colours of the trajectory classes when there are too many positions to name each one.
CLASS_COLOURS = {"fixed_point": "tab:blue", "orbit": "tab:orange", "slider": "tab:green"}
#: Positions up to which every trajectory has its own colour and legend entry.
MAX_NAMED = 12


def axis_label(k: int, ratio: float) -> str:
    """``PC1 (23.1% var.)``: the component and the share of variance it explains (small shares
    keep two significant digits instead of rounding to 0%)."""
    pct = 100 * ratio
    share = f"{pct:.1f}%" if pct >= 1 else f"{pct:.2g}%"
    return f"PC{k + 1} ({share} var.)"


def trajectory_figure(
    coords: Tensor,
    exit_steps: list[int],
    labels: list[str],
    classes: list[str],
    explained: Sequence[float],
    title: str,
    dim: int,
):
    """The figure of (P, n, dim) coordinates: light-to-dark by iteration, o start, s end,
    * exit; each axis names the variance its component explains. The legend names each
    trajectory's colour (up to ``MAX_NAMED`` positions; beyond, the colour is the class) and
    the markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    P, n, _ = coords.shape
    named = P <= MAX_NAMED
    fig = plt.figure(figsize=(8.5, 6))
    ax = fig.add_subplot(projection="3d") if dim == 3 else fig.add_subplot()
    palette = plt.get_cmap("tab10" if P <= 10 else "tab20")
    shade = torch.linspace(0.25, 1.0, n)[:, None]  # (n, 1) early iterates lighter
    for i in range(P):
        c = coords[i].numpy()
        if named:
            base = palette(i % palette.N)
        else:
            base = matplotlib.colors.to_rgba(CLASS_COLOURS.get(classes[i], "tab:gray"))
        colour = torch.tensor(base)  # (4,) RGBA
        tints = (1 - shade) * torch.ones(4) + shade * colour  # blend with white
        tints = tints.clamp(0.0, 1.0)
        tints[:, 3] = 1.0
        colour = tuple(colour.tolist())
        cols = [c[:, j] for j in range(dim)]
        ax.plot(*cols, color=colour, lw=0.8, alpha=0.6)
        ax.scatter(*cols, c=tints.numpy(), s=10)
        ax.scatter(*[[v[0]] for v in cols], marker="o", s=60, facecolors="none", edgecolors="k")
        ax.scatter(*[[v[-1]] for v in cols], marker="s", s=50, color=colour, edgecolors="k")
        e = min(exit_steps[i], n) - 1
        ax.scatter(*[[v[e]] for v in cols], marker="*", s=140, color=colour, edgecolors="k")
    if named:
        handles = [
            Line2D([], [], color=palette(i % palette.N), lw=2, label=labels[i]) for i in range(P)
        ]
    else:
        handles = [
            Line2D([], [], color=col, lw=2, label=f"{cls.replace('_', ' ')} ({classes.count(cls)})")
            for cls, col in CLASS_COLOURS.items()
        ]
    handles += [
        Line2D([], [], ls="", marker="o", mfc="none", mec="k", label="start (iteration 1)"),
        Line2D([], [], ls="", marker="s", color="gray", mec="k", label=f"end (iteration {n})"),
        Line2D([], [], ls="", marker="*", ms=12, color="gray", mec="k", label="adaptive exit"),
        Line2D([], [], ls="", marker=".", color="lightgray", label="light -> dark: later"),
    ]
    ax.legend(
        handles=handles,
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02 if dim == 2 else 1.08, 1.0),
        title=None if named else "class (count)",
        title_fontsize=7,
    )
    setters = [ax.set_xlabel, ax.set_ylabel] + ([ax.set_zlabel] if dim == 3 else [])
    for k, set_label in enumerate(setters):
        set_label(axis_label(k, explained[k]) if k < len(explained) else f"PC{k + 1} (0% var.)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _plot(
    coords: Tensor,
    exit_steps: list[int],
    labels: list[str],
    classes: list[str],
    explained: Sequence[float],
    title: str,
    path: Path,
    dim: int,
) -> None:
    import matplotlib.pyplot as plt

    fig = trajectory_figure(coords, exit_steps, labels, classes, explained, title, dim)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plot_movement(move: Tensor, labels: list[str], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = list(range(2, move.shape[1] + 2))
    for i in range(move.shape[0]):
        ax.plot(steps, move[i].clamp(min=1e-12).numpy(), lw=1, label=labels[i])
    ax.axhline(threshold, color="k", ls="--", lw=1, label=f"exit threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration i")
    ax.set_ylabel("1 - cos(y_i, y_{i-1})")
    if move.shape[0] <= MAX_NAMED:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:  # too many lines to name: say what they are
        ax.legend(
            handles=ax.get_legend_handles_labels()[0][-1:],
            title=f"{move.shape[0]} positions, one line each",
            fontsize=7,
            title_fontsize=7,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_trajectories(result: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Draw the PNGs of an inspection from its result (what ``trajectories.json`` holds), so
    saved results can be drawn again without the model. Returns the files written."""
    out = Path(out_dir)
    files = []
    for space in ("state", "pred"):
        block = result[space]
        evr = block["explained_variance_ratio"]
        what = "latent state s_i" if space == "state" else "prediction y_i"
        coords = torch.tensor(block["coords_3d"])  # (P, n, 3)
        for dim in (2, 3):
            path = out / f"{space}_{dim}d.png"
            shown = sum(evr[:dim])
            title = f"{what}: PCA over all iterates; these {dim} axes explain {100 * shown:.3g}%"
            _plot(coords[..., :dim], result["exit_steps"], result["labels"], result["classes"],
                  evr, title, path, dim)  # fmt: skip
            files.append(str(path))
    path = out / "movement.png"
    rule = result["exit_rule"]
    threshold = rule.get("exit_threshold", rule.get("threshold"))  # older JSON: "threshold"
    _plot_movement(torch.tensor(result["movement"]), result["labels"], threshold, path)
    files.append(str(path))
    return files


@torch.no_grad()
def inspect_trajectories(
    objective: RefinerObjective,
    x: Tensor,
    mask: Tensor | None,
    out_dir: str | Path,
    num_iterations: int = 32,
    positions: Sequence[int | Sequence[int]] | None = None,
    labels: Sequence[str] | None = None,
    exit_threshold: float | None = None,
    exit_patience: int | None = None,
    max_iterations: int | None = None,
    generator: torch.Generator | None = None,
    thresholds: TrajectoryThresholds | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Run the refiner for ``num_iterations`` and picture and classify the latent trajectories.

    Args:
        objective: A refiner objective (its network in eval mode gives deterministic pictures).
        x: (B, T, D) concepts in the model's normalized space.
        mask: (B, T) bool, True = real concept; None = all real.
        out_dir: Folder for the PNGs and ``trajectories.json`` (created).
        num_iterations: Iterations to run (>= 3, for the classification).
        positions: Which network positions to inspect: ints t (row 0) or pairs (b, t); None =
            every real position. Position t refines the prediction of concept t+1.
        labels: One label per inspected position (default ``"b{b} t{t}"``).
        exit_threshold: Exit-rule threshold override (default: the objective's rule).
        exit_patience: Exit-rule patience override.
        max_iterations: Exit-rule cap override (exit steps are also capped by
            ``num_iterations``).
        generator: Random initial state (``init="random"``).
        thresholds: Classification thresholds (:class:`TrajectoryThresholds`).
        plots: Write the PNGs (the JSON is always written).

    Returns:
        The dict written to ``trajectories.json``: ``positions``, ``labels``, ``exit_steps``,
        ``classes``, ``class_counts``, ``stats`` (per position), ``exit_rule``, ``thresholds``,
        and per space (``state``, ``pred``) the ``explained_variance_ratio`` (3 components) and
        ``coords_2d`` / ``coords_3d`` (position, iteration, component); ``files``.
    """
    if num_iterations < 3:
        raise ValueError(f"num_iterations must be >= 3 to classify, got {num_iterations}")
    if x.ndim != 3:
        raise ValueError(f"x must be (B, T, D), got {tuple(x.shape)}")
    th = thresholds or TrajectoryThresholds()
    overrides = dict(
        exit_threshold=exit_threshold, exit_patience=exit_patience, max_iterations=max_iterations
    )
    rule: ExitRule = replace(
        objective.exit_rule, **{k: v for k, v in overrides.items() if v is not None}
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    was_training = objective.training
    objective.eval()
    try:
        traj = objective.trajectory(x, mask, num_iterations, generator)
    finally:
        objective.train(was_training)
    sel = _selected(mask, tuple(x.shape[:2]), positions)
    if not sel:
        raise ValueError("no position to inspect")
    names = list(labels) if labels is not None else [f"b{b} t{t}" for b, t in sel]
    if len(names) != len(sel):
        raise ValueError(f"{len(names)} labels for {len(sel)} positions")
    bi = torch.tensor([b for b, _ in sel])
    ti = torch.tensor([t for _, t in sel])
    states = traj.states[:, bi, ti].transpose(0, 1).float().cpu()  # (P, n, d)
    preds = traj.preds[:, bi, ti].transpose(0, 1).float().cpu()  # (P, n, D)

    exit_steps = rule.exit_steps(preds.transpose(0, 1)).tolist()  # (P,) 1-based
    move = movement(preds[:, 1:], preds[:, :-1])  # (P, n - 1): steps 2..n
    classes, stats = [], []
    for i in range(len(sel)):
        c, s = classify_trajectory(states[i], th)
        classes.append(c)
        stats.append(s)

    result: dict[str, Any] = dict(
        num_iterations=num_iterations,
        positions=[list(p) for p in sel],
        labels=names,
        exit_steps=exit_steps,
        classes=classes,
        class_counts={c: classes.count(c) for c in CLASSES},
        stats=stats,
        movement=move.tolist(),
        exit_rule=asdict(rule),
        thresholds=asdict(th),
        files=[],
    )
    for space, data in (("state", states), ("pred", preds)):
        P, n, F = data.shape
        pca = PCA.fit(data.reshape(P * n, F), 3)
        proj = pca.transform(data).float()  # (P, n, k<=3)
        if proj.shape[-1] < 3:  # degenerate data: pad so 3-D pictures still work
            proj = torch.cat((proj, proj.new_zeros(P, n, 3 - proj.shape[-1])), dim=-1)
        result[space] = dict(
            explained_variance_ratio=pca.explained_variance_ratio.tolist(),
            coords_2d=proj[..., :2].tolist(),
            coords_3d=proj.tolist(),
        )
    if plots:
        result["files"] += plot_trajectories(result, out)
    json_path = out / "trajectories.json"
    result["files"].append(str(json_path))
    json_path.write_text(json.dumps(result, indent=1))
    return result


def inspect_checkpoint(
    checkpoint: str,
    out_dir: str = "runs/inspect",
    texts: list[str] | None = None,
    inputs: str | None = None,
    text_field: str = "text",
    lang: str = "eng_Latn",
    max_documents: int = 4,
    num_iterations: int = 32,
    add_separator: bool | None = None,
    exit_threshold: float | None = None,
    exit_patience: int | None = None,
    max_iterations: int | None = None,
    seed: int = 0,
    codec: SentenceCodec | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """``python -m experiments.refinement.inspect``: the latent trajectories of a refiner
    checkpoint on documents.

    Every sentence position of every document is refined for ``num_iterations`` iterations,
    projected by PCA and classified (fixed point, orbit, slider); see
    :func:`inspect_trajectories` for the files written. The label ``d<i> s<k>`` names the
    prediction of sentence k (counted from 0) of document i; the document's last position
    predicts the sentence that would follow it.

    Args:
        checkpoint: A refiner checkpoint written by ``lcm fit``.
        out_dir: Where the pictures and ``trajectories.json`` go.
        texts: Documents as strings (split into sentences with the model's splitter).
        inputs: Or a jsonl file of documents (``text_field``); the first ``max_documents``.
        text_field: The document field of ``inputs``.
        lang: FLORES-200 code of the documents.
        max_documents: Most documents read from ``inputs``.
        num_iterations: Iterations to run (>= 3).
        add_separator: Append the summarization separator, so that the last position predicts
            the first summary sentence (default: when the checkpoint is a summarizer).
        exit_threshold: Exit-rule threshold override (default: the checkpoint's).
        exit_patience: Exit-rule patience override.
        max_iterations: Exit-rule cap override.
        seed: Seed of the random initial states.
        codec: Sentence codec (default: the one the model was trained with).
        device: ``cpu`` or ``cuda``.
    """
    from torch.nn.utils.rnn import pad_sequence

    from lcm.api import ConceptModel

    docs = list(texts or [])
    if inputs is not None:
        with open(inputs, encoding="utf-8") as f:
            for row, line in enumerate(f):
                if len(docs) >= max_documents:
                    break
                if not line.strip():
                    continue
                text = json.loads(line).get(text_field)
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"{inputs} row {row}: missing or empty field {text_field!r}")
                docs.append(text)
    if not docs:
        raise ValueError("no documents: pass texts or inputs")
    model = ConceptModel.load(checkpoint, codec=codec, device=device)
    objective = model.module.eval_objective()
    if not isinstance(objective, RefinerObjective):
        raise ValueError(
            f"{checkpoint} holds a {model.module.family} model; inspect needs a refiner"
        )
    model.codec.validate_lang(lang, "lang")
    sep = model.mode == "summarize" if add_separator is None else add_separator
    sep_raw = model.module.normalizer.denormalize(model.module.separator.detach())
    seqs, labels = [], []
    for i, doc in enumerate(docs):
        x = model.codec.encode(model._sentences(doc, lang), lang).to(model.module.device)
        if sep:
            x = torch.cat((x, sep_raw[None].to(x)), dim=0)
        seqs.append(model.module.normalizer.normalize(x))
        labels += [f"d{i} s{t + 1}" for t in range(len(x))]
    x = pad_sequence(seqs, batch_first=True)  # (B, T, D), right-padded
    lengths = torch.tensor([len(q) for q in seqs], device=x.device)
    mask = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]  # (B, T)
    generator = torch.Generator(device=model.module.device).manual_seed(seed)
    return inspect_trajectories(
        objective,
        x,
        mask,
        out_dir,
        num_iterations=num_iterations,
        labels=labels,
        exit_threshold=exit_threshold,
        exit_patience=exit_patience,
        max_iterations=max_iterations,
        generator=generator,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m experiments.refinement.inspect --checkpoint ... --inputs docs.jsonl``."""
    from jsonargparse import CLI

    result = CLI(inspect_checkpoint, args=argv, as_positional=False)
    print(json.dumps({k: result[k] for k in ("class_counts", "exit_steps", "files")}))
    return result


if __name__ == "__main__":
    main()
