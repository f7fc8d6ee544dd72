"""Base-LCM objective (paper section 2.2): regress the next concept with MSE in normalized space.

The network's output at position t is its guess of concept t+1 (``lcm.models.base_lcm``). Aligned
to targets, ``pred[:, i] = y[:, i-1]`` for ``i >= 1``; position 0 has no prediction and never
counts.

With ``residual`` (:data:`~lcm.objectives.base.Residual`) the prediction of concept t+1 is
``base_t + y[:, t]``: the network learns the correction to the last concept or to the context
mean. The cached generation step (:class:`lcm.generation.steps.BaseLCMStep`) adds the same base.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcm.objectives.base import (
    Batch,
    Objective,
    ObjectiveOutput,
    Residual,
    last_valid,
    masked_mse,
    residual_base,
    shift_right,
    target_weight,
)


class MSEObjective(Objective):
    """Next-concept MSE for :class:`~lcm.models.BaseLCM` (deterministic, no random draws).

    Args:
        model: A network with ``forward(x (B, T, D), mask (B, T)) -> (B, T, D)`` where output t
            predicts concept t+1.
        residual: Add this base from the context to the network's output
            (:func:`~lcm.objectives.base.residual_base`; default ``"none"``).
    """

    predicts_first_concept = False
    supports_residual = True

    def __init__(self, model: torch.nn.Module, residual: Residual = "none") -> None:
        super().__init__(model, residual)

    def _outputs(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """(B, T, D): position t's prediction of concept t+1 (network output plus base)."""
        y = self.model(x, mask)  # (B, T, D), y[:, t] predicts x[:, t+1]
        base = residual_base(x, mask, self.residual)
        return y if base is None else y + base

    def _aligned(self, batch: Batch) -> Tensor:
        return shift_right(self._outputs(batch["x"], batch["mask"]))  # (B, T, D)

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> ObjectiveOutput:
        pred = self._aligned(batch)  # (B, T, D)
        weight = target_weight(batch).clone()  # (B, T)
        weight[:, 0] = False  # nothing predicts the first concept
        return ObjectiveOutput(masked_mse(pred, batch["x"], weight), pred, batch["x"], weight)

    @torch.no_grad()
    def predict_all(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        return self._aligned(batch)

    @torch.no_grad()
    def predict_next(
        self, x: Tensor, mask: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, D): the output at each sequence's last valid position."""
        return last_valid(self._outputs(x, mask), mask)  # (B, D)
