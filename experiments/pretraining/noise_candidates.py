"""Train the noise-augmentation candidates of ``reports/pretraining/noise_augmentation`` and
choose sigma on validation (no test or held-out data is read).

Each system (default: Base-LCM and Base-LCM +ctx-mean) is trained at the ``full`` preset's
settings (32.5k sentences, 400 steps, d128, seed 0) once per ``--model.input_noise`` sigma, with
the report's own :func:`~experiments.pretraining.report.train_family`, so the run folders are
the ones ``python -m experiments.pretraining.report --input_noise sigma --work_dir root`` reuses
(``runs_full_steps400_d128_seed0[_noise<sigma>]/<system>``). Then, per system, the rule of
``reports/pretraining/noise_augmentation/RULE.md`` (:func:`choose`) picks sigma from each run's
validation CA at its last check, and ``selection.json`` records the curves and the choice.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from experiments.pretraining.report import PRESETS, runs_name, train_family, val_curves


def choose(scores: dict[float, float], margin: float = 0.002) -> float:
    """The chosen sigma: the highest score, where a sigma > 0 must beat sigma 0 by at least
    ``margin`` (else 0 is kept); a tie for the highest goes to the smaller sigma.

    Args:
        scores: ``{sigma: validation CA at the last check}``; must hold sigma 0.
        margin: What a sigma > 0 must gain over sigma 0.
    """
    if 0.0 not in scores:
        raise ValueError(f"the rule compares with sigma 0, which has no score: {scores}")
    best = max(sorted(scores), key=lambda s: scores[s])  # max keeps the first (smallest) tie
    return best if best == 0.0 or scores[best] >= scores[0.0] + margin else 0.0


def main(
    root: str = "runs/pretraining/noise",
    sigmas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8),
    systems: tuple[str, ...] = ("base_lcm", "base_lcm+context_mean"),
    train_dir: str | None = None,
    selection: str = "reports/pretraining/noise_augmentation/selection.json",
    steps: int | None = None,
) -> dict:
    """Train every (system, sigma) run (a run whose checkpoint exists is reused when its fit
    record matches), then write ``selection``.

    Args:
        root: the report's ``--work_dir`` for these runs; ``train_seconds.json`` goes there
            (the seconds of the runs trained fresh, by system, sigma and steps).
        sigmas: the candidates (0 included: the comparison of the rule).
        systems: report systems (``base_lcm``, ``two_tower+context_mean``, ...).
        train_dir: the training shards (default: the ``full`` preset's, built when missing).
        selection: where the validation curves and the choices are written.
        steps: optimizer steps per run (default: the preset's 400).
    """
    base = PRESETS["full"]
    if steps is not None:
        base = replace(base, steps=steps)
    if train_dir is None:
        from experiments.pretraining.inputs import build_inputs

        build_inputs(base.inputs, ("train",))
        train_dir = base.train_dir
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    times_path = out / "train_seconds.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    curves: dict[str, dict[str, list]] = {s: {} for s in systems}
    for sigma in sigmas:
        p = replace(base, input_noise=float(sigma), train_dir=train_dir)
        runs = runs_name("full", p)
        for system in systems:
            key = f"{system} noise{sigma:g} steps{p.steps}"
            t = time.perf_counter()
            fresh = not (out / runs / system / "checkpoints" / "last.ckpt").exists()
            ckpt = train_family(system, p, train_dir, out / runs)
            if fresh:
                times[key] = round(time.perf_counter() - t, 1)
                times_path.write_text(json.dumps(times, indent=1))
            curves[system][f"{sigma:g}"] = val_curves(ckpt.parent.parent)
            print(key, times.get(key), curves[system][f"{sigma:g}"][-1:], flush=True)
    ours = {f"{s} noise{x:g} steps{base.steps}" for s in systems for x in sigmas}
    last = {s: {k: c[-1][1] for k, c in cs.items()} for s, cs in curves.items()}
    chosen = {s: choose({float(k): v for k, v in sc.items()}) for s, sc in last.items()}
    result = {
        "rule": "reports/pretraining/noise_augmentation/RULE.md",
        "train_dir": str(Path(train_dir).resolve()),
        "work_dir": str(out.resolve()),
        "steps": base.steps,
        "val_ca_vs_steps": curves,
        "val_ca_last": {s: {k: round(v, 4) for k, v in sc.items()} for s, sc in last.items()},
        "chosen_sigma": chosen,
        "train_seconds": {k: v for k, v in times.items() if k in ours},
    }
    Path(selection).parent.mkdir(parents=True, exist_ok=True)
    Path(selection).write_text(json.dumps(result, indent=1))
    print(json.dumps({"val_ca_last": result["val_ca_last"], "chosen": chosen}, indent=1))
    return result


def plot(selection: str = "reports/pretraining/noise_augmentation/selection.json") -> None:
    """``val_ca_candidates.png`` beside ``selection``: validation CA against steps, one line per
    sigma, one panel per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = json.loads(Path(selection).read_text())
    curves = s["val_ca_vs_steps"]
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.8), squeeze=False)
    for ax, (system, by_sigma) in zip(axes[0], curves.items()):
        for i, (sigma, pts) in enumerate(by_sigma.items()):
            chosen = float(sigma) == s["chosen_sigma"][system]
            ax.plot(
                [q[0] for q in pts], [q[1] for q in pts], color=f"C{i}", marker=".",
                lw=2.5 if chosen else 1.2, label=f"sigma {sigma}" + (" (chosen)" if chosen else ""),
            )  # fmt: skip
        ax.set_title(system)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation CA (pool: each validation batch)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(selection).parent / "val_ca_candidates.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import sys

    from jsonargparse import CLI

    CLI(main, args=sys.argv[1:], as_positional=False)
