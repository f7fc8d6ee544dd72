"""What every training objective shares: the batch layout, masked losses and eval metrics.

An objective wraps one network (a pure ``nn.Module`` from :mod:`lcm.models`) and owns its loss and
its sampling. It knows nothing of Lightning; :mod:`lcm.train.module` wires it into a trainer.

Batch layout (a dict of tensors, built by :mod:`lcm.train.data`), all in *normalized* concept space:

    x          (B, T, D) float  concepts, right-padded (separator slots already filled in)
    mask       (B, T)    bool   True = a real concept (padding is False)
    loss_mask  (B, T)    bool   True = concept i is a prediction target (subset of ``mask``)

Every objective reports its predictions *aligned to targets*: ``pred[:, i]`` is the model's guess
of ``x[:, i]`` made from ``x[:, :i]`` only, and ``weight[:, i]`` says whether position i counts.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

Batch = dict[str, Tensor]


@dataclass
class ObjectiveOutput:
    """Result of :meth:`Objective.loss`.

    Attributes:
        loss: Scalar training loss (mean over the weighted positions).
        pred: (B, T, D) prediction of concept i at position i (normalized space).
        target: (B, T, D) what ``pred`` is compared with.
        weight: (B, T) bool, the positions that entered the loss.
    """

    loss: Tensor
    pred: Tensor
    target: Tensor
    weight: Tensor


def target_weight(batch: Batch) -> Tensor:
    """(B, T) bool: valid concepts that are prediction targets."""
    mask = batch["mask"]
    loss_mask = batch.get("loss_mask")
    return mask if loss_mask is None else mask & loss_mask


def masked_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean over weighted positions of the per-concept mean squared error.

    Args:
        pred: (B, T, D).
        target: (B, T, D).
        weight: (B, T) bool.

    Returns:
        Scalar; 0 (with a gradient path) when no position is weighted, so an all-padding batch
        (see :mod:`lcm.train.data`, distributed padding) contributes nothing.
    """
    per_concept = (pred - target).pow(2).mean(dim=-1)  # (B, T)
    w = weight.to(per_concept.dtype)  # (B, T)
    return (per_concept * w).sum() / w.sum().clamp(min=1.0)


def last_valid(x: Tensor, mask: Tensor | None) -> Tensor:
    """(B, D): the last valid row of each sequence in a right-padded (B, T, D) tensor."""
    if mask is None:
        return x[:, -1]
    idx = mask.long().sum(dim=1).clamp(min=1) - 1  # (B,)
    return x[torch.arange(x.shape[0], device=x.device), idx]


class Objective(nn.Module, ABC):
    """A network plus the loss it is trained with and the way it predicts the next concept.

    Args:
        model: The network; stored as ``self.model``.
    """

    predicts_first_concept: ClassVar[bool] = True
    """False when position 0 of ``predict_all`` is a placeholder: the network only predicts
    concepts that follow another one (regression, refiner, quantized). Diffusion samples the
    first concept from the unconditional model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def with_model(self, model: nn.Module) -> Objective:
        """A shallow copy that shares everything (scheduler, settings) but runs ``model``, e.g. an
        EMA copy of the weights. The copy is not registered anywhere, so no state is duplicated."""
        other = copy.copy(self)
        other._modules = {**self._modules, "model": model}
        return other

    @abstractmethod
    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> ObjectiveOutput:
        """Training loss on one batch; ``generator`` drives every random draw (noise, t, CFG)."""

    @abstractmethod
    def predict_all(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """(B, T, D) teacher-forced predictions: position i predicts concept i from ``x[:, :i]``
        (the paper's next-concept evaluation; position 0 is unconditional or meaningless)."""

    @abstractmethod
    def predict_next(
        self, x: Tensor, mask: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, D): the concept that follows each right-padded sequence ``x`` (B, T, D)."""
