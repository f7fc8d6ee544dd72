"""Base-LCM objective (paper section 2.2): regress the next concept with MSE in normalized space.

The network's output at position t is its guess of concept t+1 (``lcm.models.base_lcm``). Aligned
to targets, ``pred[:, i] = y[:, i-1]`` for ``i >= 1``; position 0 has no prediction and never
counts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lcm.objectives.base import (
    Batch,
    Objective,
    ObjectiveOutput,
    last_valid,
    masked_mse,
    target_weight,
)


class MSEObjective(Objective):
    """Next-concept MSE for :class:`~lcm.models.BaseLCM` (deterministic, no random draws).

    Args:
        model: A network with ``forward(x (B, T, D), mask (B, T)) -> (B, T, D)`` where output t
            predicts concept t+1.
    """

    predicts_first_concept = False

    def _aligned(self, batch: Batch) -> Tensor:
        x, mask = batch["x"], batch["mask"]
        y = self.model(x, mask)  # (B, T, D), y[:, t] predicts x[:, t+1]
        return torch.cat((torch.zeros_like(y[:, :1]), y[:, :-1]), dim=1)  # (B, T, D)

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
        return last_valid(self.model(x, mask), mask)  # (B, D)
