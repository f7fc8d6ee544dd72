"""The pre-training report's systems at several prediction-time scales: the diffusion
systems' guidance scale (``--knob guidance``, default), the residual systems' correction
scale (``--knob residual_scale``: ``base + s * (prediction - base)``,
:attr:`lcm.objectives.Objective.residual_scale`) or Quant-LCM's expected-decoding temperature
(``--knob expected_temperature``: s > 0 is ``decoding="expected"`` at temperature s over the
whole softmax, top_p 1, :class:`lcm.objectives.QuantObjective`; s = 0 is greedy codes, the
checkpoints' own validation decoding).

    python -m experiments.pretraining.guidance_sweep \\
        --run_dir /work/data/h11/pretraining_runs/runs_full_steps400_d128_seed0 \\
        --out_dir reports/pretraining/guidance_sweep
    python -m experiments.pretraining.guidance_sweep --knob residual_scale \\
        --run_dir /work/data/me/p200k/runs/runs_full_steps2000_d128_seed0 \\
        --validation_documents 500 --select_on "in-domain validation" --tie 0.002 \\
        --scales '[1, 1.5, 2, 3, 4]' --out_dir reports/pretraining/residual_scale
    python -m experiments.pretraining.guidance_sweep --knob expected_temperature \
        --run_dir /work/data/h39/runs/runs_full_steps200_d128_seed0 \
        --systems '[quant_lcm, quant_lcm+context_mean]' --scales '[0, 0.25, 0.5, 1]' \
        --validation_documents 500 --select_on "in-domain validation" --tie 0.002 --prefer 0 \
        --out_dir reports/pretraining/quant_decoding

The report (:mod:`experiments.pretraining.report`) scores each diffusion system at its
checkpoint's guidance and at guidance 1. This sweep scores the same checkpoints, teacher-forced
on the same evaluation sets and windows, at every scale of ``--scales``: CA and l2 with 95%
bootstrap intervals over documents, the paired differences "CA - context-mean" and "CA -
copy-previous" on the same resamples, the mean norm of the predictions and their mean cosine to
the context-mean prediction (how close a system comes to that baseline). The scale is chosen
per system on ``--select_on`` (the in-domain test set by default; ``--validation_documents``
adds the checkpoints' own in-domain validation documents as ``in-domain validation``): the
smallest scale whose CA is within ``--tie`` of the best (with ``--prefer g``: the tied scale
closest to g, e.g. the checkpoint's default guidance). It is read on the other sets, so their
number at the chosen scale was not used to choose it. Writes ``results.json``, ``table.md`` and
``ca_vs_<knob>.png`` to ``--out_dir``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch.nn.functional as F

from experiments.pretraining.report import BASELINES as REPORT_BASELINES
from experiments.pretraining.report import (
    PRESETS,
    bootstrap,
    context_mean,
    copy_previous,
    fmt,
    load_eval_set,
    load_validation_set,
    model_predictions,
    per_document,
    position_metrics,
    system_label,
)

DEFAULT_SYSTEMS = ["two_tower+context_mean", "one_tower+context_mean", "two_tower", "one_tower"]
Knob = Literal["guidance", "residual_scale", "expected_temperature"]
KNOB_LABEL = {
    "guidance": "guidance",
    "residual_scale": "residual scale",
    "expected_temperature": "expected decoding at temperature",
}
BASELINES = ("context_mean", "copy_previous")
VALIDATION = "in-domain validation"


def sweep(
    run_dir: str,
    eval_dirs: dict[str, str],
    systems: list[str],
    scales: list[float],
    select_on: str,
    window: int = 64,
    draws_n: int = 1000,
    seed: int = 0,
    knob: Knob = "guidance",
    tie: float = 0.0,
    validation_documents: int | None = None,
    prefer: float | None = None,
) -> dict:
    """Score ``systems`` (checkpoints ``<run_dir>/<system>/checkpoints/last.ckpt``) at each of
    ``scales`` of ``knob`` on each set of ``eval_dirs`` (and, with ``validation_documents``,
    on that many of the checkpoints' in-domain validation documents, first); returns the
    results tree (see the module)."""
    if knob not in KNOB_LABEL:
        raise ValueError(f"unknown knob {knob!r}; known: {sorted(KNOB_LABEL)}")
    if not tie >= 0:
        raise ValueError(f"tie must be >= 0, got {tie}")
    sets: dict[str, str | None] = dict(eval_dirs)
    if validation_documents is not None:
        sets = {VALIDATION: None, **sets}
    if select_on not in sets:
        raise ValueError(f"--select_on {select_on!r} is not a set of {sorted(sets)}")
    ckpts = {s: Path(run_dir) / s / "checkpoints" / "last.ckpt" for s in systems}
    missing = [str(c) for c in ckpts.values() if not c.exists()]
    if missing:
        raise FileNotFoundError(f"no checkpoint {missing[0]} (train it with the report first)")
    rng = np.random.default_rng(seed)
    res: dict = {"sets": {}, "scales": scales, "select_on": select_on, "knob": knob, "tie": tie}
    res["prefer"] = prefer
    res["seconds"] = {}
    for set_name, folder in sets.items():
        if folder is None:
            es = _validation_set(ckpts, window, validation_documents)
            folder = es.folder
        else:
            es = load_eval_set(set_name, folder, window)
        n_docs = len(es.doc_ids)
        draws = rng.integers(0, n_docs, size=(draws_n, n_docs))

        def scores(pred, defined, es=es, n_docs=n_docs):
            pm = position_metrics(pred, es, defined, None)
            return {m: per_document(pm[m], es.doc, n_docs) for m in ("l2", "ca")}

        cm_pred, cm_defined = context_mean(es.x, es.mask)
        refs = {
            "context_mean": scores(cm_pred, cm_defined),
            "copy_previous": scores(*copy_previous(es.x, es.mask)),
        }
        rows = {
            name: {m: bootstrap(*ref[m], draws) for m in ("l2", "ca")} for name, ref in refs.items()
        }
        for system, ckpt in ckpts.items():
            rows[system] = {}
            for scale in scales:
                t = time.perf_counter()
                pred = model_predictions(ckpt, es, **knob_options(knob, scale))
                res["seconds"][f"{system} {knob} {scale:g} {set_name}"] = round(
                    time.perf_counter() - t, 1
                )
                got = scores(pred, es.mask.clone())
                scored = es.mask.clone()
                scored[:, 0] = False
                near = scored & cm_defined
                rows[system][f"{scale:g}"] = {
                    "l2": bootstrap(*got["l2"], draws),
                    "ca": bootstrap(*got["ca"], draws),
                    **{
                        f"ca_minus_{name}": bootstrap(*got["ca"], draws, base=ref["ca"])
                        for name, ref in refs.items()
                    },
                    "mean_norm": float(pred[scored].norm(dim=-1).mean()),
                    "cos_context_mean": float(
                        F.cosine_similarity(pred[near], cm_pred[near], dim=-1).mean()
                    ),
                }
        res["sets"][set_name] = {
            "folder": folder,
            "documents": n_docs,
            "positions": int(rows["context_mean"]["ca"]["n"]),
            "systems": rows,
        }
    res["chosen"] = {
        system: choose(res, system, scales, select_on, tie, prefer) for system in systems
    }
    return res


def knob_options(knob: Knob, scale: float) -> dict:
    """The keywords of :func:`~experiments.pretraining.report.model_predictions` that set
    ``knob`` to ``scale`` (``expected_temperature`` 0: greedy codes, the checkpoints' own
    validation decoding; above 0: expected decoding at that temperature, top_p 1)."""
    if knob == "guidance":
        return {"guidance_scale": scale}
    if knob == "residual_scale":
        return {"residual_scale": scale}
    if scale < 0:
        raise ValueError(f"an expected-decoding temperature must be >= 0, got {scale}")
    decoding = ("sample", 0.0, 1.0) if scale == 0 else ("expected", float(scale), 1.0)
    return {"quant_decoding": decoding}


def _validation_set(ckpts: dict[str, Path], window: int, max_documents: int | None):
    """The in-domain validation documents shared by every checkpoint (the same training
    folder, validation share and split seed; a ValueError otherwise)."""
    from lcm.train.module import read_checkpoint

    keys = ("data_dir", "val_dir", "val_fraction", "split_seed")
    seen = {}
    for system, ckpt in ckpts.items():
        hp = read_checkpoint(ckpt).get("datamodule_hyper_parameters") or {}
        seen[system] = tuple(hp.get(k) for k in keys)
    if len(set(seen.values())) != 1:
        raise ValueError(f"the checkpoints were validated on different documents: {seen}")
    return load_validation_set(VALIDATION, next(iter(ckpts.values())), window, max_documents)


def choose(
    res: dict,
    system: str,
    scales: list[float],
    select_on: str,
    tie: float,
    prefer: float | None = None,
) -> dict:
    """The scale chosen for ``system`` among the ``scales`` whose CA on ``select_on`` is within
    ``tie`` of the best there: the smallest, or with ``prefer`` the one closest to it (the
    smaller on equal distance); with its cells on every set."""
    by_scale = res["sets"][select_on]["systems"][system]
    ca = {s: by_scale[f"{s:g}"]["ca"]["mean"] for s in scales}
    best = max(ca.values())
    tied = [s for s in scales if ca[s] >= best - tie]
    scale = min(tied) if prefer is None else min(tied, key=lambda s: (abs(s - prefer), s))
    return {
        "scale": scale,
        "best_scale": max(scales, key=lambda s: ca[s]),
        **{set_name: st["systems"][system][f"{scale:g}"] for set_name, st in res["sets"].items()},
    }


def markdown(res: dict) -> str:
    """The sweep as markdown: per set, CA (and CA - context-mean) per system and scale."""
    scales = [f"{s:g}" for s in res["scales"]]
    label = KNOB_LABEL[res.get("knob", "guidance")]
    lines = []
    for set_name, st in res["sets"].items():
        lines += [f"### {set_name} ({st['documents']} documents)", ""]
        for ref in BASELINES:
            if ref in st["systems"]:
                c = st["systems"][ref]
                lines.append(f"- {REPORT_BASELINES[ref]}: CA {fmt(c['ca'])}, l2 {fmt(c['l2'])}")
        lines.append("")
        lines.append("| system | " + " | ".join(f"{label} {s}" for s in scales) + " |")
        lines.append("|---|" + "---|" * len(scales))
        for system, by_scale in st["systems"].items():
            if system in BASELINES:
                continue
            cells = [
                f"{fmt(c['ca'])}<br>vs ctx-mean {fmt(c['ca_minus_context_mean'])}"
                + (
                    f"<br>vs copy-prev {fmt(c['ca_minus_copy_previous'])}"
                    if "ca_minus_copy_previous" in c
                    else ""
                )
                + f"<br>l2 {fmt(c['l2'])}, norm {c['mean_norm']:.2f}"
                + (
                    f", cos to ctx-mean {c['cos_context_mean']:.3f}"
                    if "cos_context_mean" in c
                    else ""
                )
                for c in (by_scale[s] for s in scales)
            ]
            lines.append(f"| {system_label(system)} | " + " | ".join(cells) + " |")
        lines.append("")
    tie, prefer = res.get("tie", 0.0), res.get("prefer")
    rule = "the smallest" if prefer is None else f"the closest to {prefer:g}"
    lines += [
        f"Scale chosen per system on {res['select_on']} (highest CA; of the scales within "
        f"{tie:g} of it, {rule}):",
        "",
    ]
    for system, c in res["chosen"].items():
        diffs = "; ".join(
            f"{name}: CA {fmt(c[name]['ca'])}, CA - context-mean "
            f"{fmt(c[name]['ca_minus_context_mean'])}"
            for name in res["sets"]
            if name in c and name != res["select_on"]
        )
        lines.append(f"- {system_label(system)}: {label} {c['scale']:g} ({diffs})")
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
        if "copy_previous" in rows:
            ax.axhline(
                rows["copy_previous"]["ca"]["mean"], color="grey", ls=":", label="copy-previous"
            )
        for system, by_scale in rows.items():
            if system in BASELINES:
                continue
            cells = [by_scale[f"{s:g}"]["ca"] for s in scales]
            mean = np.array([c["mean"] for c in cells])
            err = np.array(
                [[c["mean"] - c["lo"] for c in cells], [c["hi"] - c["mean"] for c in cells]]
            )
            ax.errorbar(scales, mean, yerr=err, marker="o", capsize=3, label=system_label(system))
        ax.set_title(set_name + (" (selection set)" if set_name == res["select_on"] else ""))
        ax.set_xlabel(f"{KNOB_LABEL[res.get('knob', 'guidance')]} s")
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
    knob: Knob = "guidance",
    tie: float = 0.0,
    validation_documents: int | None = None,
    prefer: float | None = None,
) -> dict:
    """Score the systems of a report run at several guidance (or residual) scales.

    Args:
        run_dir: a report's training runs (``<work_dir>/runs_<preset>_steps…``), one folder per
            system.
        out_dir: where results.json, table.md and the plot go.
        eval_dirs: evaluation sets (name: prepared folder); default: the ``full`` preset's.
        systems: systems to sweep (default: Two-Tower and One-Tower, plain and +ctx-mean;
            with ``knob=residual_scale``, systems with a residual).
        scales: the scales of ``knob``.
        select_on: the set the scale is chosen on (highest CA).
        window: concepts per evaluation window (the report's).
        bootstrap_draws: bootstrap resamples.
        seed: seed of the resamples.
        knob: what the scale is: ``guidance`` (diffusion classifier-free guidance),
            ``residual_scale`` (the factor on a residual system's correction to its base) or
            ``expected_temperature`` (Quant-LCM: the temperature of expected decoding, 0 =
            greedy codes; :func:`knob_options`).
        tie: the chosen scale is the smallest whose CA on ``select_on`` is within this of the
            best.
        validation_documents: also score this many of the checkpoints' own in-domain
            validation documents (the set ``in-domain validation``; None: not scored).
        prefer: of the scales tied within ``tie``, choose the one closest to this (e.g. the
            default guidance 3; None: the smallest).
    """
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
        knob,
        tie,
        validation_documents,
        prefer,
    )
    res["run_dir"] = run_dir
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "table.md").write_text(markdown(res))
    plot(res, out / f"ca_vs_{knob}.png")
    print(markdown(res))
    return res


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, args=sys.argv[1:], as_positional=False)
