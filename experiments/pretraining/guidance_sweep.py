"""The pre-training report's diffusion systems at several guidance scales.

    python -m experiments.pretraining.guidance_sweep \\
        --run_dir /work/data/h11/pretraining_runs/runs_full_steps400_d128_seed0 \\
        --out_dir reports/pretraining/guidance_sweep

The report (:mod:`experiments.pretraining.report`) scores each diffusion system at its
checkpoint's guidance and at guidance 1. This sweep scores the same checkpoints, teacher-forced
on the same evaluation sets and windows, at every scale of ``--scales``: CA and l2 with 95%
bootstrap intervals over documents, the paired difference "CA - context-mean" on the same
resamples, and the mean norm of the predictions. The scale is chosen per system on
``--select_on`` (the in-domain test set by default) and read on the other sets, so the held-out
number of the chosen scale was not used to choose it. Writes ``results.json``, ``table.md`` and
``ca_vs_guidance.png`` to ``--out_dir``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from experiments.pretraining.report import (
    PRESETS,
    bootstrap,
    context_mean,
    fmt,
    load_eval_set,
    model_predictions,
    per_document,
    position_metrics,
    system_label,
)

DEFAULT_SYSTEMS = ["two_tower+context_mean", "one_tower+context_mean", "two_tower", "one_tower"]


def sweep(
    run_dir: str,
    eval_dirs: dict[str, str],
    systems: list[str],
    scales: list[float],
    select_on: str,
    window: int = 64,
    draws_n: int = 1000,
    seed: int = 0,
) -> dict:
    """Score ``systems`` (checkpoints ``<run_dir>/<system>/checkpoints/last.ckpt``) at each of
    ``scales`` on each set of ``eval_dirs``; returns the results tree (see the module)."""
    if select_on not in eval_dirs:
        raise ValueError(f"--select_on {select_on!r} is not a set of {sorted(eval_dirs)}")
    ckpts = {s: Path(run_dir) / s / "checkpoints" / "last.ckpt" for s in systems}
    missing = [str(c) for c in ckpts.values() if not c.exists()]
    if missing:
        raise FileNotFoundError(f"no checkpoint {missing[0]} (train it with the report first)")
    rng = np.random.default_rng(seed)
    res: dict = {"sets": {}, "scales": scales, "select_on": select_on, "seconds": {}}
    for set_name, folder in eval_dirs.items():
        es = load_eval_set(set_name, folder, window)
        n_docs = len(es.doc_ids)
        draws = rng.integers(0, n_docs, size=(draws_n, n_docs))

        def scores(pred, defined, es=es, n_docs=n_docs):
            pm = position_metrics(pred, es, defined, None)
            return {m: per_document(pm[m], es.doc, n_docs) for m in ("l2", "ca")}

        base = scores(*context_mean(es.x, es.mask))
        rows = {"context_mean": {m: bootstrap(*base[m], draws) for m in ("l2", "ca")}}
        for system, ckpt in ckpts.items():
            rows[system] = {}
            for scale in scales:
                t = time.perf_counter()
                pred = model_predictions(ckpt, es, guidance_scale=scale)
                res["seconds"][f"{system} g{scale:g} {set_name}"] = round(
                    time.perf_counter() - t, 1
                )
                got = scores(pred, es.mask.clone())
                scored = es.mask.clone()
                scored[:, 0] = False
                rows[system][f"{scale:g}"] = {
                    "l2": bootstrap(*got["l2"], draws),
                    "ca": bootstrap(*got["ca"], draws),
                    "ca_minus_context_mean": bootstrap(*got["ca"], draws, base=base["ca"]),
                    "mean_norm": float(pred[scored].norm(dim=-1).mean()),
                }
        res["sets"][set_name] = {"folder": folder, "documents": n_docs, "systems": rows}
    chosen = {}
    for system in systems:
        by_scale = res["sets"][select_on]["systems"][system]
        best = max(scales, key=lambda s: by_scale[f"{s:g}"]["ca"]["mean"])
        chosen[system] = {
            "scale": best,
            **{
                set_name: st["systems"][system][f"{best:g}"]["ca_minus_context_mean"]
                for set_name, st in res["sets"].items()
            },
        }
    res["chosen"] = chosen
    return res


def markdown(res: dict) -> str:
    """The sweep as markdown: per set, CA (and CA - context-mean) per system and scale."""
    scales = [f"{s:g}" for s in res["scales"]]
    lines = []
    for set_name, st in res["sets"].items():
        lines += [f"### {set_name} ({st['documents']} documents)", ""]
        lines.append(f"context-mean CA: {fmt(st['systems']['context_mean']['ca'])}")
        lines.append("")
        lines.append("| system | " + " | ".join(f"guidance {s}" for s in scales) + " |")
        lines.append("|---|" + "---|" * len(scales))
        for system, by_scale in st["systems"].items():
            if system == "context_mean":
                continue
            cells = [
                f"{fmt(c['ca'])}<br>vs ctx-mean {fmt(c['ca_minus_context_mean'])}"
                for c in (by_scale[s] for s in scales)
            ]
            lines.append(f"| {system_label(system)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Scale chosen per system on {res['select_on']} (highest CA):", ""]
    for system, c in res["chosen"].items():
        diffs = "; ".join(
            f"{name}: CA - context-mean {fmt(c[name])}" for name in res["sets"] if name in c
        )
        lines.append(f"- {system_label(system)}: guidance {c['scale']:g} ({diffs})")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(res["sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    scales = res["scales"]
    for ax, set_name in zip(axes[0], sets):
        rows = res["sets"][set_name]["systems"]
        ref = rows["context_mean"]["ca"]
        ax.axhspan(ref["lo"], ref["hi"], color="grey", alpha=0.2)
        ax.axhline(ref["mean"], color="grey", label="context-mean (95% CI band)")
        for system, by_scale in rows.items():
            if system == "context_mean":
                continue
            cells = [by_scale[f"{s:g}"]["ca"] for s in scales]
            mean = np.array([c["mean"] for c in cells])
            err = np.array(
                [[c["mean"] - c["lo"] for c in cells], [c["hi"] - c["mean"] for c in cells]]
            )
            ax.errorbar(scales, mean, yerr=err, marker="o", capsize=3, label=system_label(system))
        ax.set_title(set_name)
        ax.set_xlabel("guidance scale")
        ax.set_ylabel("CA (95% CI over documents)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(
    run_dir: str,
    out_dir: str = "reports/pretraining/guidance_sweep",
    eval_dirs: dict[str, str] | None = None,
    systems: list[str] | None = None,
    scales: list[float] = [1.0, 2.0, 3.0, 4.0, 6.0],  # noqa: B006
    select_on: str = "in-domain test",
    window: int = 64,
    bootstrap_draws: int = 1000,
    seed: int = 0,
) -> dict:
    """Score the diffusion systems of a report run at several guidance scales.

    Args:
        run_dir: a report's training runs (``<work_dir>/runs_<preset>_steps…``), one folder per
            system.
        out_dir: where results.json, table.md and the plot go.
        eval_dirs: evaluation sets (name: prepared folder); default: the ``full`` preset's.
        systems: diffusion systems to sweep (default: Two-Tower and One-Tower, plain and
            +ctx-mean).
        scales: guidance scales.
        select_on: the set the scale is chosen on (highest CA).
        window: concepts per evaluation window (the report's).
        bootstrap_draws: bootstrap resamples.
        seed: seed of the resamples.
    """
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    res = sweep(
        run_dir,
        dict(eval_dirs or PRESETS["full"].eval_dirs),
        list(systems or DEFAULT_SYSTEMS),
        list(scales),
        select_on,
        window,
        bootstrap_draws,
        seed,
    )
    res["run_dir"] = run_dir
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "table.md").write_text(markdown(res))
    plot(res, out / "ca_vs_guidance.png")
    print(markdown(res))
    return res


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, args=sys.argv[1:], as_positional=False)
