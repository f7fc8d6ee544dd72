"""Concept-space metrics the training loop needs (so the core does not import ``eval``).

CA, the LCM paper's contrastive accuracy (section 2.4.1): "the ratio of embeddings in a batch that
are further away (in terms of l2) from the predicted embedding x̂_n than the ground truth x_n (for
each n, we exclude x_n and its two neighboring ground truth embeddings from the comparison)".
:mod:`eval.metrics.concepts` re-exports these beside l2, round-trip l2, PAR and MI.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

#: Pool size from which ``backend="auto"`` counts with faiss instead of a dense distance matrix.
FAISS_MIN_POOL = 8192
#: Largest (queries x pool) block held at once: 16M distances (128 MiB in float64).
_MAX_BLOCK = 1 << 24


def contrastive_accuracy(
    pred: Tensor,
    pool: Tensor,
    gold_index: Tensor,
    exclude: Tensor | None = None,
    backend: Literal["auto", "torch", "faiss"] = "auto",
    chunk: int = 1024,
) -> Tensor:
    """Paper section 2.4.1 "CA": per prediction, the share of pool concepts that lie strictly
    farther (l2) from it than its gold concept does.

    The gold itself and every index in ``exclude`` are left out of both the count and the
    denominator. Ties (for example a repeated sentence with the very same vector) are not
    farther. With ``pool = gold``, ``gold_index = arange(N)`` and no exclusions this equals
    :func:`lcm.objectives.base.contrastive_accuracy`.

    Args:
        pred: (N, D) predictions, raw codec space.
        pool: (M, D) concepts to rank against (the paper: every gold concept of the batch).
        gold_index: (N,) long, row of ``pool`` holding each prediction's gold concept.
        exclude: (N, E) long, further pool rows to leave out per prediction (the paper: the
            gold's two neighbours in its document); -1 pads.
        backend: "torch" (float64 distances, chunked), "faiss" (``IndexFlatL2`` range search
            in float32: about 2x faster at M = 20k, D = 1024 on 2 cores when predictions are
            good, as fast when they are random; near-ties within float32 error may count
            differently), or "auto": faiss once M >= ``FAISS_MIN_POOL``.
        chunk: predictions per distance block.

    Returns:
        (N,) float32 in [0, 1]; NaN for a prediction with nothing left to compare with.
    """
    n, m = pred.shape[0], pool.shape[0]
    if gold_index.shape != (n,):
        raise ValueError(f"gold_index must be ({n},), got {tuple(gold_index.shape)}")
    gold_index = gold_index.long().cpu()
    if exclude is None:
        exclude = torch.full((n, 0), -1, dtype=torch.long)
    excl = torch.cat([gold_index[:, None], exclude.long().cpu()], dim=1)  # (N, 1+E)
    # Count each excluded row once: duplicates in ``exclude`` (or the gold repeated) don't count.
    excl_sorted = excl.sort(dim=1).values
    first = torch.ones_like(excl_sorted, dtype=torch.bool)
    first[:, 1:] = excl_sorted[:, 1:] != excl_sorted[:, :-1]
    n_excluded = ((excl_sorted >= 0) & first).sum(dim=1)  # (N,)
    denom = (m - n_excluded).double()  # (N,)
    if backend == "auto":
        backend = "faiss" if m >= FAISS_MIN_POOL else "torch"
    if backend == "torch":
        not_farther = _not_farther_torch(pred, pool, gold_index, excl, chunk)
    elif backend == "faiss":
        not_farther = _not_farther_faiss(pred, pool, gold_index, excl, chunk)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    ca = (denom - not_farther.double()) / denom
    return torch.where(denom > 0, ca, torch.nan).float()


def _not_farther_torch(
    pred: Tensor, pool: Tensor, gold_index: Tensor, excl: Tensor, chunk: int
) -> Tensor:
    """(N,) count of non-excluded pool rows with distance <= the gold's distance."""
    pool64 = pool.detach().double().cpu()
    out = torch.empty(pred.shape[0], dtype=torch.long)
    chunk = max(1, min(chunk, _MAX_BLOCK // max(pool.shape[0], 1)))
    for s in range(0, pred.shape[0], chunk):
        q = pred[s : s + chunk].detach().double().cpu()  # (C, D)
        dist = torch.cdist(q, pool64, compute_mode="use_mm_for_euclid_dist")  # (C, M)
        rows = torch.arange(q.shape[0])
        own = dist[rows, gold_index[s : s + chunk]]  # (C,)
        # a repeated sentence must tie with the gold even if the GEMM rounds it differently
        close = dist <= own[:, None] * (1 + 1e-12)  # (C, M)
        e = excl[s : s + chunk]  # (C, 1+E)
        valid = e >= 0
        close[rows[:, None].expand_as(e)[valid], e[valid]] = False  # drop gold and neighbours
        out[s : s + chunk] = close.sum(dim=1)
    return out


def _not_farther_faiss(
    pred: Tensor, pool: Tensor, gold_index: Tensor, excl: Tensor, chunk: int
) -> Tensor:
    """Same count as :func:`_not_farther_torch` with a faiss range search.

    The gold's own distance is taken from the same faiss search (it is in the pool), so ties
    such as duplicated sentences compare bit-for-bit. Queries are sorted by their gold distance
    so that one search radius per chunk (its largest gold distance) returns few extra hits.
    """
    import faiss

    pool32 = np.ascontiguousarray(pool.detach().float().cpu().numpy())
    q_all = np.ascontiguousarray(pred.detach().float().cpu().numpy())
    gold = gold_index.numpy()
    own_exact = ((q_all.astype(np.float64) - pool32[gold].astype(np.float64)) ** 2).sum(1)
    index = faiss.IndexFlatL2(pool32.shape[1])
    index.add(pool32)
    order = np.argsort(own_exact)
    chunk = max(1, min(chunk, _MAX_BLOCK // max(len(pool32), 1)))  # bounds the hits per search
    excl_np = excl.numpy()
    out = np.empty(len(q_all), dtype=np.int64)
    for s in range(0, len(order), chunk):
        ids = order[s : s + chunk]  # (C,)
        # A margin over the exact squared distance keeps the gold inside despite float32 error.
        radius = float(own_exact[ids].max()) * (1 + 1e-3) + 1e-6
        lims, dist, hit = index.range_search(q_all[ids], radius)
        qrow = np.repeat(np.arange(len(ids)), np.diff(lims.astype(np.int64)))  # (H,) query per hit
        is_gold = hit == gold[ids][qrow]
        own = np.full(len(ids), np.nan, dtype=np.float32)
        own[qrow[is_gold]] = dist[is_gold]
        if np.isnan(own).any():
            raise RuntimeError("faiss range search missed a gold concept; use backend='torch'")
        excluded = (hit[:, None] == excl_np[ids][qrow]).any(axis=1)  # (H,)
        keep = (dist <= own[qrow]) & ~excluded
        out[ids] = np.bincount(qrow[keep], minlength=len(ids))
    return torch.from_numpy(out)


def sequence_contrastive_accuracy(
    pred: Tensor,
    x: Tensor,
    weight: Tensor,
    mask: Tensor | None = None,
    neighbours: int = 1,
    backend: Literal["auto", "torch", "faiss"] = "auto",
) -> Tensor:
    """CA over a batch of documents in the objective layout (paper section 2.4.1).

    The pool is every real concept of the batch (``x[mask]``); for a prediction at (b, n) the
    gold ``x[b, n]`` and the real concepts ``x[b, n±1..neighbours]`` are excluded (the paper:
    ``neighbours=1``, i.e. "its two neighboring ground truth embeddings").

    Args:
        pred: (B, T, D) raw-space predictions aligned to targets.
        x: (B, T, D) gold concepts.
        weight: (B, T) bool, positions scored.
        mask: (B, T) bool, real concepts; default all.
        neighbours: how many positions on each side of the gold to exclude.
        backend: see :func:`contrastive_accuracy`.

    Returns:
        (B, T) CA, NaN where not scored.
    """
    b, t, _ = x.shape
    mask = torch.ones(b, t, dtype=torch.bool) if mask is None else mask.bool().cpu()
    weight = weight.bool().cpu() & mask
    flat_id = torch.full((b, t), -1, dtype=torch.long)
    flat_id[mask] = torch.arange(int(mask.sum()))  # (B, T) pool row of each real concept
    pool = x.detach().cpu()[mask]  # (M, D)
    bi, ni = weight.nonzero(as_tuple=True)  # (N,), (N,)
    offsets = [o for k in range(1, neighbours + 1) for o in (-k, k)]
    cols = []
    for o in offsets:
        pos = ni + o
        inside = (pos >= 0) & (pos < t)
        cols.append(torch.where(inside, flat_id[bi, pos.clamp(0, t - 1)], -1))
    exclude = torch.stack(cols, dim=1) if cols else torch.full((len(bi), 0), -1)  # (N, 2k)
    ca = contrastive_accuracy(pred.detach().cpu()[bi, ni], pool, flat_id[bi, ni], exclude, backend)
    out = torch.full((b, t), torch.nan)
    out[bi, ni] = ca
    return out
