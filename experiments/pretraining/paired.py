"""Paired CA differences between trained systems of different report runs.

:mod:`experiments.pretraining.report` gives each system's CA minus the copy-previous and
context-mean baselines, paired over resampled documents, but no interval between two trained
systems, e.g. the same system trained with and without an option (two report runs). This scores
the given checkpoints teacher-forced on the report's evaluation windows and gives each one's CA
and every asked difference ``CA(a) - CA(b)``, with the report's bootstrap: the same document
draws (``numpy.random.default_rng(seed)``, one (bootstrap, documents) draw per set, in the order
of ``eval_dirs``), so each system's CA cell equals the report's.

    python -m experiments.pretraining.paired \\
        --ckpts '{"a": "runs_x/base_lcm/checkpoints/last.ckpt", "b": "runs_y/..."}' \\
        --pairs '[[a, b]]' --eval_dirs '{"held-out python-doc": "shards/ood"}' --out x.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.pretraining.report import (
    bootstrap,
    load_eval_set,
    model_predictions,
    per_document,
    position_metrics,
)


def paired_ca(
    ckpts: dict[str, str],
    pairs: list[tuple[str, str]],
    eval_dirs: dict[str, str],
    window: int = 64,
    bootstrap_draws: int = 1000,
    seed: int = 0,
) -> dict:
    """CA of every checkpoint and the paired difference of every pair, on every set.

    Args:
        ckpts: ``{name: checkpoint}``.
        pairs: ``(a, b)`` names: CA(a) - CA(b) on the same resampled documents.
        eval_dirs: ``{set name: lcm prepare folder}``, in the report's order.
        window: concepts per evaluation window (the report's ``window``).
        bootstrap_draws: resamples (the report's ``bootstrap``).
        seed: seed of the document draws (the report's ``seed``).

    Returns:
        ``{"sets": {set: {"ca": {name: cell}, "differences": {"a - b": cell}}}, "setup": ...}``,
        cells as the report's (mean, lo, hi, n).
    """
    for a, b in pairs:
        for name in (a, b):
            if name not in ckpts:
                raise ValueError(f"pair ({a}, {b}): no checkpoint named {name!r}")
    rng = np.random.default_rng(seed)
    sets = {}
    for set_name, folder in eval_dirs.items():
        es = load_eval_set(set_name, folder, window)
        n_docs = len(es.doc_ids)
        draws = rng.integers(0, n_docs, size=(bootstrap_draws, n_docs))
        ca = {}
        for name, ckpt in ckpts.items():
            pred = model_predictions(Path(ckpt), es)
            ca[name] = per_document(
                position_metrics(pred, es, es.mask.clone(), None)["ca"], es.doc, n_docs
            )
        sets[set_name] = {
            "ca": {name: bootstrap(*v, draws) for name, v in ca.items()},
            "differences": {f"{a} - {b}": bootstrap(*ca[a], draws, base=ca[b]) for a, b in pairs},
        }
    setup = dict(
        ckpts=ckpts, pairs=[list(p) for p in pairs], eval_dirs=eval_dirs, window=window,
        bootstrap=bootstrap_draws, seed=seed,
    )  # fmt: skip
    return {"sets": sets, "setup": setup}


def main(
    ckpts: dict[str, str],
    pairs: list[list[str]],
    eval_dirs: dict[str, str],
    out: str,
    window: int = 64,
    bootstrap_draws: int = 1000,
    seed: int = 0,
) -> dict:
    """Score the checkpoints and write the JSON of :func:`paired_ca` to ``out``.

    Args:
        ckpts: ``{name: checkpoint}``.
        pairs: ``[[a, b], ...]``: CA(a) - CA(b), paired.
        eval_dirs: ``{set name: lcm prepare folder}`` (the report's, in its order).
        out: the JSON file to write.
        window: the report's ``window``.
        bootstrap_draws: the report's ``bootstrap``.
        seed: the report's ``seed``.
    """
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"every pair names two checkpoints: {pairs}")
    res = paired_ca(ckpts, [(a, b) for a, b in pairs], eval_dirs, window, bootstrap_draws, seed)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=1) + "\n")
    for set_name, st in res["sets"].items():
        for diff, c in st["differences"].items():
            print(f"{set_name}: {diff} {c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]")
    return res


if __name__ == "__main__":
    import sys

    from jsonargparse import CLI

    CLI(main, args=sys.argv[1:], as_positional=False)
