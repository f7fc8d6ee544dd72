"""Reference points for the metrics: trivial summarizers and trivial next-concept predictors.

Text baselines work on a document's sentence list, e.g. the ``<field>_sentences`` column of an
``lcm prepare`` shard:

- :func:`lead_k`: the first k sentences (the classic CNN/DailyMail "Lead-3").
- :func:`random_k`: k sentences drawn without replacement with a seed, kept in document order.

Concept predictors use the objective layout of :mod:`lcm.objectives.base` (``pred[:, n]`` is the
guess of ``x[:, n]`` from ``x[:, :n]``) and return ``(pred, defined)`` where ``defined`` (B, T)
says where the predictor has an answer; score ``weight & defined`` only:

- :func:`copy_previous`: predict ``x_{n-1}``. Its l2 is the distance between consecutive
  sentences, and its PAR is ``1 / max_{m<n} CS(x_n, x_m)`` (>= 1): pure copying.
- :func:`context_mean`: the mean of the context ``x_<n``.
- :func:`constant_mean`: one fixed vector, e.g. the training-set mean concept: the best constant
  guess under l2.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import Tensor


def lead_k(sentences: Sequence[str], k: int = 3) -> list[str]:
    """The first ``k`` sentences (all of them if the document is shorter)."""
    if k < 0:
        raise ValueError("k must be >= 0")
    return list(sentences[:k])


def random_k(sentences: Sequence[str], k: int, seed: int | random.Random) -> list[str]:
    """``k`` distinct sentences chosen uniformly with ``seed``, in document order.

    Args:
        sentences: the document.
        k: how many (all if the document is shorter).
        seed: an int (the same int gives the same choice) or a ``random.Random`` to draw from.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    chosen = sorted(rng.sample(range(len(sentences)), min(k, len(sentences))))
    return [sentences[i] for i in chosen]


def pad_documents(docs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad documents of concepts into the batch layout.

    Args:
        docs: B tensors of shape (n_i, D).

    Returns:
        x (B, T, D) with zeros as padding, and mask (B, T) bool.
    """
    if not docs:
        raise ValueError("pad_documents() needs at least one document")
    t = max(d.shape[0] for d in docs)
    x = docs[0].new_zeros(len(docs), t, docs[0].shape[-1])  # (B, T, D)
    mask = torch.zeros(len(docs), t, dtype=torch.bool)  # (B, T)
    for i, d in enumerate(docs):
        x[i, : d.shape[0]] = d
        mask[i, : d.shape[0]] = True
    return x, mask


def _mask(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.bool()


def copy_previous(x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Predict each concept as the one before it.

    Args:
        x: (B, T, D) concepts.
        mask: (B, T) real concepts; default all.

    Returns:
        pred (B, T, D) with ``pred[:, n] = x[:, n-1]`` (zeros at n = 0), and defined (B, T):
        a real concept with a real predecessor.
    """
    mask = _mask(x, mask)
    pred = torch.zeros_like(x)
    pred[:, 1:] = x[:, :-1]
    defined = torch.zeros_like(mask)
    defined[:, 1:] = mask[:, 1:] & mask[:, :-1]
    return pred, defined


def context_mean(x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Predict each concept as the mean of the real concepts before it.

    Args:
        x: (B, T, D) concepts.
        mask: (B, T) real concepts; default all.

    Returns:
        pred (B, T, D) (zeros where there is no context) and defined (B, T).
    """
    mask = _mask(x, mask)
    m = mask.to(x.dtype)[..., None]  # (B, T, 1)
    csum = (x * m).cumsum(dim=1)  # (B, T, D) sum of x_0..x_n
    ccount = m.cumsum(dim=1)  # (B, T, 1)
    pred = torch.zeros_like(x)
    pred[:, 1:] = csum[:, :-1] / ccount[:, :-1].clamp(min=1)  # mean of x_<n
    defined = torch.zeros_like(mask)
    defined[:, 1:] = mask[:, 1:] & (ccount[:, :-1, 0] > 0)
    return pred, defined


def constant_mean(x: Tensor, mean: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Predict the same vector ``mean`` everywhere.

    Args:
        x: (B, T, D) concepts (for the shape).
        mean: (D,) the constant, e.g. the mean concept of the training shards (computing it on
            the evaluation documents themselves would leak the answer).
        mask: (B, T) real concepts; default all.

    Returns:
        pred (B, T, D) and defined (B, T) = mask.
    """
    mask = _mask(x, mask)
    pred = mean.to(x.dtype).expand_as(x).clone()  # (B, T, D)
    return pred, mask.clone()
