"""Next-concept metrics in the codec's (SONAR) space: l2, round-trip l2, PAR, CA and MI.

LCM paper (Barrault et al. 2024) section 2.4.1, "Pre-training evaluation": the model runs
teacher-forced over a document x_1..x_N and each prediction ``x̂_n`` (made from ``x_<n``) is
scored against the gold ``x_n``:

- l2 = ||x̂_n - x_n||_2.
- l2-r = ||encode(decode(x̂_n)) - x_n||_2 (round trip through text).
- CA: "the ratio of embeddings in a batch that are further away (in terms of l2) from the
  predicted embedding x̂_n than the ground truth x_n (for each n, we exclude x_n and its two
  neighboring ground truth embeddings from the comparison)".
- PAR = max_{m<n} CS(x̂_n, x_m) / max_{m<n} CS(x_n, x_m), CS the cosine similarity: > 1 means
  the prediction paraphrases the context more than the real next sentence does.
- MI = (1/|ŝ_n|) (log p_LM(ŝ_n | s_{n-k:n-1}) - log p_LM(ŝ_n)), ŝ_n = decode(x̂_n), k = 10,
  GPT-2 as LM, a newline prepended to ŝ_n, |ŝ_n| its token count; the dataset value is the
  token-weighted mean. The paper prints the two log terms in the other order, but its prose
  ("the difference between the unconditional perplexity of ŝ_n and its perplexity conditioned
  on the prompt") and Table 3 (diffusion models > 0, higher is better) fix the sign used here:
  positive when the context makes the sentence more likely.

All inputs must be in the codec's raw space: denormalize model outputs first
(:meth:`lcm.normalizer.RobustNormalizer.denormalize`). Layout follows :mod:`lcm.objectives.base`:
``pred[:, n]`` predicts ``x[:, n]`` from ``x[:, :n]``; ``mask`` marks real concepts; ``weight``
marks the positions that are scored. Undefined values are NaN, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from encoders.base import SentenceCodec
from lcm.metrics import (  # noqa: F401  (re-exported: CA lives in the core, training uses it)
    FAISS_MIN_POOL,
    contrastive_accuracy,
    sequence_contrastive_accuracy,
)


# ------------------------------------------------------------------------------------- l2
def l2(pred: Tensor, gold: Tensor) -> Tensor:
    """Paper section 2.4.1 "l2": Euclidean distance of each prediction to its gold concept.

    Args:
        pred: (..., D) predictions in raw codec space.
        gold: (..., D) gold concepts, same shape.

    Returns:
        (...) float32 distances.
    """
    if pred.shape != gold.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gold {tuple(gold.shape)} differ")
    return (pred.double() - gold.double()).norm(dim=-1).float()


@dataclass
class RoundTrip:
    """Result of :func:`round_trip_l2`.

    Attributes:
        l2: (N,) distances ||encode(decode(pred)) - gold||.
        sentences: the N decoded sentences (reused by MI and the text metrics).
        reencoded: (N, D) the re-encoded vectors.
    """

    l2: Tensor
    sentences: list[str]
    reencoded: Tensor


def round_trip_l2(
    codec: SentenceCodec, pred: Tensor, gold: Tensor, lang: str, batch_size: int = 256
) -> RoundTrip:
    """Paper section 2.4.1 "l2-r": decode the prediction to text, re-encode it, take l2.

    Args:
        codec: the frozen codec that produced ``gold``.
        pred: (N, D) predictions in raw codec space.
        gold: (N, D) gold concepts.
        lang: language to decode into and encode from (FLORES-200 code).
        batch_size: vectors decoded per ``codec.decode`` call.

    Returns:
        :class:`RoundTrip`.
    """
    if pred.ndim != 2 or pred.shape != gold.shape:
        raise ValueError(f"need (N, D) pred and gold, got {tuple(pred.shape)}, {tuple(gold.shape)}")
    sentences: list[str] = []
    for i in range(0, pred.shape[0], batch_size):
        sentences.extend(codec.decode(pred[i : i + batch_size].float().cpu(), lang))
    if len(sentences) != pred.shape[0]:
        raise RuntimeError(f"codec decoded {len(sentences)} sentences for {pred.shape[0]} vectors")
    reencoded = codec.encode(sentences, lang)  # (N, D)
    return RoundTrip(l2(reencoded, gold.float().cpu()), sentences, reencoded)


# ------------------------------------------------------------------------------------ PAR
def paraphrasing(
    pred: Tensor, x: Tensor, mask: Tensor | None = None, weight: Tensor | None = None
) -> Tensor:
    """Paper section 2.4.1 "PAR": max cosine similarity of the prediction to the context,
    divided by the same for the gold next concept.

    Args:
        pred: (B, T, D) ``pred[:, n]`` predicts ``x[:, n]``.
        x: (B, T, D) gold concepts (raw space).
        mask: (B, T) bool, real concepts (context candidates); default all.
        weight: (B, T) bool, positions to score; default ``mask``.

    Returns:
        (B, T) PAR; NaN where not scored, where there is no context (n = 0), or where the gold's
        best context similarity is <= 0 (the ratio's sign would flip).
    """
    b, t, _ = x.shape
    mask = torch.ones(b, t, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    weight = mask if weight is None else weight.bool() & mask
    pn = F.normalize(pred.double(), dim=-1)  # (B, T, D)
    xn = F.normalize(x.double(), dim=-1)  # (B, T, D)
    # context[b, n, m]: x_m is a real concept strictly before n
    causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril(-1)  # (T, T)
    context = causal[None] & mask[:, None, :]  # (B, T, T)
    neg = torch.tensor(-math.inf, dtype=torch.float64, device=x.device)
    top_pred = torch.where(context, pn @ xn.transpose(1, 2), neg).amax(-1)  # (B, T)
    top_gold = torch.where(context, xn @ xn.transpose(1, 2), neg).amax(-1)  # (B, T)
    ok = weight & context.any(-1) & (top_gold > 0)
    return torch.where(ok, top_pred / top_gold, torch.nan).float()


# ------------------------------------------------------------------------------------- MI
class LogProbScorer(Protocol):
    """A language model that scores a text after a prefix (see
    :class:`eval.metrics.model_based.HFCausalLM`)."""

    def log_prob(self, prefix: str, text: str) -> tuple[float, int]:
        """(sum of log p of the tokens of ``text`` given ``prefix`` and the preceding text
        tokens, number of tokens of ``text``); ``text`` is tokenized on its own, so the count
        does not depend on ``prefix``."""
        ...


@dataclass
class MutualInformation:
    """Result of :func:`mutual_information`.

    Attributes:
        value: token-weighted mean MI (nats per token) over sentences with at least one token.
        per_sentence: MI of each sentence (NaN for an empty one).
        n_tokens: LM tokens of each sentence (the weights).
    """

    value: float
    per_sentence: list[float] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)


def mutual_information(
    lm: LogProbScorer,
    predictions: Sequence[str],
    contexts: Sequence[Sequence[str]],
    k: int = 10,
    joiner: str = " ",
) -> MutualInformation:
    """Paper section 2.4.1 "MI" between each decoded prediction and its preceding k gold
    sentences, in nats per token (see the module docstring for the sign).

    Args:
        lm: the scoring language model (the paper: GPT-2).
        predictions: decoded predicted sentences ŝ_n.
        contexts: per prediction, the gold sentences before it (s_1..s_{n-1}); the last ``k``
            are used, joined with ``joiner``.
        k: context window in sentences (paper: 10).
        joiner: how context sentences are joined (the paper does not say; ours).

    Returns:
        :class:`MutualInformation`.
    """
    if len(predictions) != len(contexts):
        raise ValueError(f"{len(predictions)} predictions but {len(contexts)} contexts")
    per, counts = [], []
    for sent, ctx in zip(predictions, contexts):
        window = list(ctx)[-k:] if k > 0 else []
        # The newline lets the LM assign a probability to the first token (paper 2.4.1).
        cond, n_cond = lm.log_prob(joiner.join(window) + "\n", sent)
        uncond, n_uncond = lm.log_prob("\n", sent)
        if n_cond != n_uncond:
            raise RuntimeError("the LM tokenized the same sentence differently in two calls")
        per.append((cond - uncond) / n_cond if n_cond else math.nan)
        counts.append(n_cond)
    total = sum(counts)
    value = sum(v * c for v, c in zip(per, counts) if c) / total if total else math.nan
    return MutualInformation(value, per, counts)


# ------------------------------------------------------------------------------ all at once
def next_concept_metrics(
    pred: Tensor,
    x: Tensor,
    weight: Tensor,
    mask: Tensor | None = None,
    codec: SentenceCodec | None = None,
    lang: str | None = None,
    lm: LogProbScorer | None = None,
    sentences: Sequence[Sequence[str]] | None = None,
    neighbours: int = 1,
    ca_backend: Literal["auto", "torch", "faiss"] = "auto",
) -> tuple[dict[str, float], dict[str, str]]:
    """The paper's Table 3 metrics on one teacher-forced batch (section 2.4.1).

    Args:
        pred: (B, T, D) raw-space predictions aligned to targets.
        x: (B, T, D) raw-space gold concepts.
        weight: (B, T) bool, positions scored.
        mask: (B, T) bool, real concepts; default all.
        codec: needed for l2-r and MI (decoding); without it they are reported missing.
        lang: language for decoding/encoding.
        lm: language model for MI; without it MI is reported missing.
        sentences: per document, its gold sentences (T of them, padding ignored): MI contexts.
        neighbours: CA exclusion window.
        ca_backend: see :func:`contrastive_accuracy`.

    Returns:
        (values, missing): means over the scored positions of ``l2``, ``l2_r``, ``par``, ``ca``,
        ``mi``, plus ``n``; ``missing`` maps each metric not computed to the reason.
    """
    mask = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
    weight = weight.bool() & mask
    values: dict[str, float] = {"n": float(weight.sum())}
    missing: dict[str, str] = {}
    values["l2"] = float(l2(pred[weight], x[weight]).mean())
    par = paraphrasing(pred, x, mask, weight)
    values["par"] = float(par[~par.isnan()].mean()) if (~par.isnan()).any() else math.nan
    ca = sequence_contrastive_accuracy(pred, x, weight, mask, neighbours, ca_backend)
    values["ca"] = float(ca[~ca.isnan()].mean()) if (~ca.isnan()).any() else math.nan
    decoded: list[str] | None = None
    if codec is None or lang is None:
        missing["l2_r"] = missing["mi"] = "no codec/lang given: predictions cannot be decoded"
    else:
        rt = round_trip_l2(codec, pred[weight], x[weight], lang)
        values["l2_r"] = float(rt.l2.mean())
        decoded = rt.sentences
    if decoded is not None:
        if lm is None:
            missing["mi"] = "no language model given (the paper scores MI with GPT-2)"
        elif sentences is None:
            missing["mi"] = "no gold sentences given for the MI context"
        else:
            bi, ni = weight.nonzero(as_tuple=True)
            ctx = [list(sentences[b])[:n] for b, n in zip(bi.tolist(), ni.tolist())]
            values["mi"] = mutual_information(lm, decoded, ctx).value
    return values, missing
