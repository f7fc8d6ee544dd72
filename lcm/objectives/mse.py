"""Base-LCM objective (paper section 2.2): regress the next concept with MSE in normalized space.

The network's output at position t is its guess of concept t+1 (``lcm.models.base_lcm``). Aligned
to targets, ``pred[:, i] = y[:, i-1]`` for ``i >= 1``; position 0 has no prediction and never
counts.

With ``residual`` (:data:`~lcm.objectives.base.Residual`) the prediction of concept t+1 is
``base_t + y[:, t]``: the network learns the correction to the last concept or to the context
mean. The cached generation step (:class:`BaseLCMStep`) adds the same base.

``loss`` (:data:`RegressionLoss`) picks what the prediction is scored with: the paper's MSE
(default), or, for a model decoded by cosine nearest-neighbour retrieval, a loss on directions:
``cosine`` (1 - cosine to the target) or ``infonce`` (the target must out-score the batch's other
target concepts under cosine / temperature). Both score in the decoder's space when the objective
is given :attr:`MSEObjective.to_decoder_space` (the LightningModule sets it to its normalizer's
``denormalize``), else in normalized space.

``contrastive_weight`` > 0 adds that many times the ``infonce`` term to the chosen loss, on the
same final prediction (base plus network output when a residual is set): the MSE keeps the
prediction's scale, the InfoNCE term asks it to rank the true next concept above the batch's
other concepts, which is what contrastive accuracy (CA, paper 2.4.1) measures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from lcm.models import BaseLCM
from lcm.objectives.base import (
    Batch,
    Objective,
    ObjectiveOutput,
    Residual,
    last_valid,
    masked_mse,
    residual_base,
    scale_residual,
    shift_right,
    target_weight,
)
from lcm.objectives.step import NextConceptStep, StepOptions, compiled_method, prefill_mask

RegressionLoss = Literal["mse", "cosine", "infonce"]
"""How :class:`MSEObjective` scores a predicted concept against its target (see
:func:`regression_loss`)."""


def regression_loss(
    pred: Tensor,
    target: Tensor,
    weight: Tensor,
    loss: RegressionLoss = "mse",
    temperature: float = 0.05,
    to_decoder_space: Callable[[Tensor], Tensor] | None = None,
    negatives: Tensor | None = None,
) -> Tensor:
    """The mean over weighted positions of one of three losses.

    - ``mse``: :func:`~lcm.objectives.base.masked_mse` (in the given space);
    - ``cosine``: ``1 - cos(pred_i, target_i)``;
    - ``infonce``: cross-entropy of picking target i among all N weighted targets of the batch
      with logits ``cos(pred_i, target_j) / temperature``. Targets equal to target i (e.g. every
      row's end-of-text concept) are removed from i's negatives: they are not wrong answers.
      ``negatives`` (M, D), e.g. earlier batches' targets, are further wrong answers for every
      row, less those equal to row i's target.

    ``cosine`` and ``infonce`` compare ``to_decoder_space(pred)`` with
    ``to_decoder_space(target)`` (the space a retrieval decoder searches) when it is given.

    Args:
        pred: (B, T, D) predictions aligned to targets.
        target: (B, T, D) target concepts.
        weight: (B, T) bool, the positions that count.
        loss: Which loss.
        temperature: InfoNCE softmax temperature (> 0).
        to_decoder_space: Map applied to both sides before ``cosine`` / ``infonce``.
        negatives: (M, D) extra target concepts for ``infonce`` (same space as ``target``);
            ignored by the other losses.

    Returns:
        Scalar; 0 (with a gradient path) when no position is weighted.
    """
    if loss == "mse":
        return masked_mse(pred, target, weight)
    if loss not in get_args(RegressionLoss):
        raise ValueError(f"unknown loss {loss!r}; known: {list(get_args(RegressionLoss))}")
    if to_decoder_space is not None:
        pred, target = to_decoder_space(pred), to_decoder_space(target)
    if loss == "cosine":
        per_concept = 1.0 - F.cosine_similarity(pred, target, dim=-1, eps=1e-8)  # (B, T)
        w = weight.to(per_concept.dtype)
        return (per_concept * w).sum() / w.sum().clamp(min=1.0)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = F.normalize(pred[weight], dim=-1, eps=1e-8)  # (N, D)
    g = F.normalize(target[weight], dim=-1, eps=1e-8)  # (N, D)
    if p.shape[0] == 0:
        return pred.sum() * 0.0
    eye = torch.eye(len(g), dtype=torch.bool, device=g.device)
    if negatives is not None and len(negatives) > 0:
        n = negatives.to(device=target.device, dtype=target.dtype)
        n = F.normalize(n if to_decoder_space is None else to_decoder_space(n), dim=-1, eps=1e-8)
        g_all = torch.cat([g, n])  # (N + M, D)
        eye = torch.cat([eye, eye.new_zeros(len(g), len(n))], dim=1)
    else:
        g_all = g
    logits = p @ g_all.T / temperature  # (N, N + M)
    same = (g @ g_all.T) > 1.0 - 1e-6  # targets equal to row i's
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    labels = torch.arange(len(g), device=g.device)
    return F.cross_entropy(logits, labels)


class ContrastiveTerm:
    """Mixin for a regression objective: an optional InfoNCE term added to its loss, with a queue
    of earlier training targets as extra negatives (shared by :class:`MSEObjective` and
    :class:`~lcm.objectives.refiner.RefinerObjective`).

    The objective calls :meth:`init_contrastive` in its ``__init__``, takes
    :meth:`contrastive_negatives` once per loss, adds :meth:`add_contrastive` to its regression
    loss on the prediction that loss scores, then calls :meth:`push_targets`.

    Attributes:
        temperature: The InfoNCE softmax temperature (> 0).
        contrastive_weight: Weight of the added term (0: none, the loss is left as it is).
        contrastive_queue: Cap on the queued targets of earlier training batches (0: none).
        queue: (M, D) those targets, newest first, detached; not saved in checkpoints.
        to_decoder_space: Optional map from normalized space to the decoder's space, where the
            InfoNCE term scores (set by the LightningModule).
    """

    training: bool  # from nn.Module

    def init_contrastive(
        self, temperature: float, contrastive_weight: float, contrastive_queue: int
    ) -> None:
        """Check and store the three settings (errors for temperature <= 0, negative weight or
        queue size)."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not contrastive_weight >= 0:
            raise ValueError(f"contrastive_weight must be >= 0, got {contrastive_weight}")
        if not contrastive_queue >= 0:
            raise ValueError(f"contrastive_queue must be >= 0, got {contrastive_queue}")
        self.temperature = float(temperature)
        self.contrastive_weight = float(contrastive_weight)
        self.contrastive_queue = int(contrastive_queue)
        self.queue: Tensor | None = None  # (M, D) earlier batches' targets, newest first
        self.to_decoder_space: Callable[[Tensor], Tensor] | None = None

    def contrastive_negatives(self) -> Tensor | None:
        """The queued targets while training with a queue, else None."""
        return self.queue if self.training and self.contrastive_queue > 0 else None

    def add_contrastive(
        self,
        value: Tensor,
        pred: Tensor,
        target: Tensor,
        weight: Tensor,
        negatives: Tensor | None = None,
    ) -> Tensor:
        """``value + contrastive_weight * infonce(pred, target)`` (:func:`regression_loss`), or
        ``value`` itself when the weight is 0.

        Args:
            value: The scalar regression loss.
            pred, target: (B, T, D) aligned predictions and targets (normalized space).
            weight: (B, T) bool, the positions that count.
            negatives: (M, D) extra wrong answers (:meth:`contrastive_negatives`).
        """
        if self.contrastive_weight == 0:
            return value
        term = regression_loss(
            pred, target, weight, "infonce", self.temperature, self.to_decoder_space, negatives
        )
        return value + self.contrastive_weight * term

    def push_targets(self, target: Tensor, weight: Tensor) -> None:
        """Put this batch's weighted targets (B, T, D) at the front of the queue (training with
        a queue only), keeping at most ``contrastive_queue``."""
        if not (self.training and self.contrastive_queue > 0):
            return
        new = target[weight].detach()
        old = [] if self.queue is None else [self.queue.to(new.device)]
        self.queue = torch.cat([new, *old])[: self.contrastive_queue]


class MSEObjective(ContrastiveTerm, Objective, network=BaseLCM):
    """Next-concept MSE for :class:`~lcm.models.BaseLCM` (deterministic: its only random draw
    is the optional training noise on the context, :attr:`input_noise`).

    Args:
        model: A network with ``forward(x (B, T, D), mask (B, T)) -> (B, T, D)`` where output t
            predicts concept t+1.
        residual: Add this base from the context to the network's output
            (:func:`~lcm.objectives.base.residual_base`; default ``"none"``).
        loss: The training loss (:func:`regression_loss`): ``mse`` (the paper's, default),
            ``cosine`` or ``infonce`` (for a cosine-retrieval decoder).
        temperature: The InfoNCE temperature (of the ``infonce`` loss and of the added term).
        contrastive_weight: Add this weight times the ``infonce`` term to ``loss`` (default 0:
            the loss alone).
        contrastive_queue: In training, the ``infonce`` negatives also include up to this many
            target concepts of the previous batches (newest first, detached; default 0: the
            batch's own targets only), so that a target must out-rank most of the training
            targets, as a retrieval decoder asks; not saved in checkpoints.

    Attributes:
        to_decoder_space: Optional map from normalized space to the decoder's space, where the
            ``cosine`` and ``infonce`` losses score (set by the LightningModule).
        separator: See :class:`~lcm.objectives.base.Objective`.
    """

    predicts_first_concept = False
    residuals = get_args(Residual)

    def __init__(
        self,
        model: torch.nn.Module,
        residual: Residual = "none",
        loss: RegressionLoss = "mse",
        temperature: float = 0.05,
        contrastive_weight: float = 0.0,
        contrastive_queue: int = 0,
    ) -> None:
        super().__init__(model, residual)
        if loss not in get_args(RegressionLoss):
            raise ValueError(f"unknown loss {loss!r}; known: {list(get_args(RegressionLoss))}")
        self.loss_kind: RegressionLoss = loss
        self.init_contrastive(temperature, contrastive_weight, contrastive_queue)

    def _outputs(
        self, x: Tensor, mask: Tensor | None, scale: float = 1.0, context: Tensor | None = None
    ) -> Tensor:
        """(B, T, D): position t's prediction of concept t+1 (network output plus base, the
        correction scaled by ``scale``: :func:`~lcm.objectives.base.scale_residual`). The
        network reads ``context`` (default ``x``; the noised concepts of
        :meth:`~lcm.objectives.base.Objective.network_input` in training); the base is always
        taken from the clean ``x``."""
        y = self.model(x if context is None else context, mask)  # (B, T, D), y[:, t] ~ x[:, t+1]
        base = residual_base(x, mask, self.residual, self._separator())
        return y if base is None else scale_residual(y + base, base, scale)

    def _aligned(self, batch: Batch, scale: float = 1.0) -> Tensor:
        return shift_right(self._outputs(batch["x"], batch["mask"], scale))  # (B, T, D)

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> ObjectiveOutput:
        """The chosen regression loss (plus the InfoNCE term) of the teacher-forced predictions;
        ``generator`` draws the :attr:`input_noise` of the context in training (nothing else is
        random)."""
        context = self.network_input(batch, generator)  # (B, T, D), batch["x"] unless noised
        pred = shift_right(self._outputs(batch["x"], batch["mask"], context=context))
        weight = target_weight(batch).clone()  # (B, T)
        weight[:, 0] = False  # nothing predicts the first concept
        queue = self.contrastive_negatives()
        value = regression_loss(
            pred, batch["x"], weight, self.loss_kind, self.temperature, self.to_decoder_space, queue
        )
        value = self.add_contrastive(value, pred, batch["x"], weight, queue)
        self.push_targets(batch["x"], weight)
        return ObjectiveOutput(value, pred, batch["x"], weight)

    @torch.no_grad()
    def predict_all(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        return self._aligned(batch, self.residual_scale)

    @torch.no_grad()
    def predict_next(
        self, x: Tensor, mask: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, D): the output at each sequence's last valid position."""
        return last_valid(self._outputs(x, mask, self.residual_scale), mask)  # (B, D)

    def generation_step(self, options: StepOptions) -> BaseLCMStep:
        """:class:`BaseLCMStep` (reads ``use_cache``, ``compile``, ``compile_backend``)."""
        step = BaseLCMStep(
            self.model, options.use_cache, self.residual, options.compile, options.compile_backend
        )
        step.separator = self._separator()
        return step


class BaseLCMStep(NextConceptStep):
    """Base-LCM's cached generation step: the regression output at the last position (plus the
    residual base) is the next concept; the context is KV-cached (``compile``: the forward runs
    through :func:`~lcm.objectives.step.compiled_method`)."""

    def __init__(
        self,
        model: BaseLCM,
        use_cache: bool = True,
        residual: Residual = "none",
        compile: bool = False,
        compile_backend: str | None = None,
    ) -> None:
        super().__init__(use_cache, residual)
        self.model = model
        self.compile = compile
        self.forward = (
            compiled_method(model, "forward", compile_backend) if compile else model.forward
        )

    def start(self, x: Tensor, mask: Tensor) -> None:
        self.x, self.mask = x, mask
        if self.use_cache:
            self.cache = self.model.new_cache()
            self.last = self.forward(x, prefill_mask(mask), self.cache)[:, -1]  # (B, D)

    def next(self, generator=None) -> Tensor:
        y = self.last if self.use_cache else self.forward(self.x, self.mask)[:, -1]  # (B, D)
        base = self._base()
        return y if base is None else scale_residual(y + base, base, self.residual_scale)

    def append(self, y: Tensor) -> None:
        self._grow(y)
        if self.use_cache:
            self.last = self.forward(y[:, None], None, self.cache)[:, 0]  # (B, D)
