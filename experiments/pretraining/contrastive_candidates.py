"""Train the contrastive candidates of ``reports/pretraining/contrastive`` (no evaluation).

Base-LCM and Base-LCM +ctx-mean with ``contrastive_weight`` 1.0 and 0.1 (temperature 0.05) at
the ``full`` preset (32.5k sentences, 400 steps, d128, seed 0), under ``root`` (the committed
runs: /work/data/h32); the selection reads their validation CA
(``reports/pretraining/contrastive/RULE.md``). The preset's inputs are built first when they
are missing (:func:`experiments.pretraining.inputs.build_inputs`).
"""

import json
import time
from dataclasses import replace
from pathlib import Path

from experiments.pretraining.inputs import build_inputs
from experiments.pretraining.report import PRESETS, runs_name, train_family


def main(root: str = "runs/pretraining/contrastive") -> None:
    """Train the four candidates; a run whose last checkpoint exists is reused.

    Args:
        root: folder of the four training runs and ``train_seconds.json``.
    """
    base = PRESETS["full"]
    build_inputs(base.inputs, ("train",))
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    for w in (1.0, 0.1):
        p = replace(base, contrastive_weight=w, temperature=0.05)
        run = out / runs_name("full", p)  # runs_full_steps400_d128_seed0_cw<w>_t0.05
        for system in ("base_lcm", "base_lcm+context_mean"):
            t = time.perf_counter()
            train_family(system, p, p.train_dir, run)
            times[f"{system} cw{w:g}"] = round(time.perf_counter() - t, 1)
            print(system, w, times[f"{system} cw{w:g}"], flush=True)
            (out / "train_seconds.json").write_text(json.dumps(times, indent=1))


def plot_candidates(selection: str = "reports/pretraining/contrastive/selection.json") -> None:
    """``val_ca_candidates.png`` beside ``selection.json``: validation CA against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = json.loads(Path(selection).read_text())
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"base_lcm": "Base-LCM", "base_lcm+context_mean": "Base-LCM +ctx-mean"}
    styles = {"0.0": "-", "0.1": "--", "1.0": ":"}
    for i, (system, curves) in enumerate(s["val_ca_vs_steps"].items()):
        for w, pts in curves.items():
            ax.plot(
                [q[0] for q in pts], [q[1] for q in pts], styles[w], color=f"C{i}", marker="o",
                label=f"{labels[system]}, contrastive_weight {w}",
            )  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("validation CA (pool: each validation batch)")
    ax.set_title("32.5k sentences, d128, seed 0; temperature 0.05")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(selection).parent / "val_ca_candidates.png", dpi=120)


if __name__ == "__main__":
    import sys

    from jsonargparse import CLI

    CLI(main, args=sys.argv[1:], as_positional=False)
    plot_candidates()
