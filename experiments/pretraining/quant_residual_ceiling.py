"""How much of CA a Quant-LCM can reach at best, with and without a context-mean residual.

Quant-LCM predicts the residual-quantization codes of the next concept; its prediction is the
sum of the chosen code vectors, so even a network that picks the best codes every time is held
to the quantized gold concept. This measures that ceiling on an evaluation set (teacher-forced
layout of :mod:`experiments.pretraining.report`: windows of ``window`` concepts, every position
but a window's first scored, the CA pool every concept of the set), for:

- ``plain``: ``Q(x_i)``, the gold quantized with the trained Quant-LCM checkpoint's own RVQ
  (fitted on training concepts when it was trained);
- ``residual``: ``base_i + Q_r(x_i - base_i)`` with ``base_i`` the context mean of ``x_0 ..
  x_{i-1}`` (:func:`lcm.objectives.base.residual_base`) and ``Q_r`` an RVQ of the same size
  fitted here on such residuals of training windows (the same number of fit samples);
- ``context_mean``: ``base_i`` alone (the report's context-mean baseline, as a check).

All in the checkpoint's normalized space, CA in raw space as the report scores it. The result
is an upper bound on what the network can do, not what it does.

    python -m experiments.pretraining.quant_residual_ceiling \\
        --ckpt .../quant_lcm/checkpoints/last.ckpt --train_dir shards --eval_dir ood --out x.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor

from experiments.pretraining.report import load_eval_set, read_prepared
from lcm.metrics import sequence_contrastive_accuracy
from lcm.objectives.base import residual_base, shift_right
from lcm.quant import RVQ


def training_residuals(train_dir: str, normalize, window: int, n: int) -> Tensor:
    """(n, D) residuals ``x_{i} - mean(x_0 .. x_{i-1})`` (normalized space) of consecutive
    ``window``-concept windows of the training documents, in shard order."""
    parts, total = [], 0
    for _, _, v in read_prepared(train_dir):
        for start in range(0, v.shape[0], window):
            z = normalize(v[start : start + window])[None]  # (1, T, D)
            if z.shape[1] < 2:
                continue
            base = residual_base(z, None, "context_mean")  # (1, T, D) base of concept t+1
            parts.append(z[0, 1:] - base[0, :-1])
            total += z.shape[1] - 1
        if total >= n:
            break
    return torch.cat(parts)[:n]


def ceilings(
    z: Tensor, mask: Tensor, plain: RVQ, residual: RVQ
) -> tuple[dict[str, Tensor], Tensor]:
    """The three oracle predictions (B, T, D) of the gold z (B, T, D) (normalized), aligned to
    targets, and the positions scored (B, T)."""
    base = shift_right(residual_base(z, mask, "context_mean"))  # (B, T, D) base of concept i
    flat = z.reshape(-1, z.shape[-1])
    plain_hat = plain.decode(plain.encode(flat)).reshape(z.shape)
    res_hat = base + residual.decode(residual.encode((z - base).reshape(-1, z.shape[-1]))).reshape(
        z.shape
    )
    weight = mask.clone()
    weight[:, 0] = False
    return {"plain": plain_hat, "residual": res_hat, "context_mean": base}, weight


def main(
    ckpt: str,
    train_dir: str,
    eval_dir: str,
    out: str,
    window: int = 64,
    fit_samples: int = 20_000,
    niter: int = 10,
    seed: int = 0,
) -> dict:
    """Fit the residual RVQ, score the three ceilings, write ``out`` (JSON).

    Args:
        ckpt: A trained Quant-LCM checkpoint (its normalizer and RVQ are used).
        train_dir: The ``lcm prepare`` folder it was trained on.
        eval_dir: The evaluation set (an ``lcm prepare`` folder).
        out: Where the JSON goes.
        window: Concepts per window (the report's 64).
        fit_samples: Residuals the residual RVQ is fitted on (the checkpoint's own was fitted on
            20,000 concepts in the report's runs).
        niter: k-means iterations per codebook.
        seed: k-means seed.
    """
    from lcm.train.module import load_module

    t0 = time.perf_counter()
    module = load_module(ckpt).eval()
    norm = module.normalizer
    plain = module.objective.model.rvq
    res = training_residuals(train_dir, norm.normalize, window, fit_samples)
    residual = RVQ(res.shape[1], plain.n_codebooks, plain.n_units, plain.beam_size)
    residual.fit(res, niter=niter, seed=seed)
    es = load_eval_set(Path(eval_dir).name, eval_dir, window)
    with torch.no_grad():
        z = norm.normalize(es.x)
        preds, weight = ceilings(z, es.mask, plain, residual)
        result: dict = {
            "ckpt": ckpt,
            "eval_dir": eval_dir,
            "window": window,
            "codebooks": plain.n_codebooks,
            "units": plain.n_units,
            "fit_samples": len(res),
            "scored_positions": int(weight.sum()),
            "residual_rvq_train_relative_error": residual.reconstruction_error(res)["relative"],
        }
        for name, p in preds.items():
            ca = sequence_contrastive_accuracy(norm.denormalize(p), es.x, weight, es.mask, 1)
            err = (p - z)[weight].pow(2).sum() / z[weight].pow(2).sum()
            result[name] = {
                "ca": float(ca[weight].mean()),
                "relative_error_of_concept": float(err),
            }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    import sys

    from jsonargparse import CLI

    print(json.dumps(CLI(main, args=sys.argv[1:], as_positional=False), indent=2))
