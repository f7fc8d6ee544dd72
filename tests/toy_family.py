"""A toy model family plugged into the toolkit from this one file: its config, network,
objective (with its generation step) and LightningModule. Nothing else registers it: the
objective names its network (``network=ToyNet``) and builds its step, and the LightningModule
registers itself by its ``family`` name when it is defined.

The toy network predicts the next concept as a learned affine map of the running mean of the
context: nothing a real LCM would use, but it trains, generates and evaluates like one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lcm.models import ConceptNetwork, TransformerConfig
from lcm.objectives import Objective, ObjectiveOutput, last_valid, masked_mse, target_weight
from lcm.objectives.step import NextConceptStep, StepOptions
from lcm.train.module import LCMModule


@dataclass
class ToyConfig(TransformerConfig):
    """Toy family architecture.

    Args:
        residual: Add the running mean to the affine map's output.
    """

    residual: bool = True


class ToyNet(ConceptNetwork, config=ToyConfig):  # ToyConfig(...).build() -> ToyNet
    """(B, T, D) -> (B, T, D): output t is a guess of concept t+1 from concepts <= t."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.proj = nn.Linear(config.sonar_dim, config.sonar_dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        m = torch.ones(x.shape[:2], device=x.device) if mask is None else mask.float()  # (B, T)
        mean = (x * m[..., None]).cumsum(1) / m.cumsum(1).clamp(min=1)[..., None]  # (B, T, D)
        return self.proj(mean) + (mean if self.config.residual else 0)


class ToyObjective(Objective, network=ToyNet):
    """Next-concept MSE, like Base-LCM's."""

    predicts_first_concept = False

    def _aligned(self, batch: dict[str, Tensor]) -> Tensor:
        y = self.model(batch["x"], batch["mask"])
        return torch.cat((torch.zeros_like(y[:, :1]), y[:, :-1]), dim=1)

    def loss(self, batch, generator=None) -> ObjectiveOutput:
        pred, weight = self._aligned(batch), target_weight(batch).clone()
        weight[:, 0] = False
        return ObjectiveOutput(masked_mse(pred, batch["x"], weight), pred, batch["x"], weight)

    @torch.no_grad()
    def predict_all(self, batch, generator=None) -> Tensor:
        return self._aligned(batch)

    @torch.no_grad()
    def predict_next(self, x, mask=None, generator=None) -> Tensor:
        return last_valid(self.model(x, mask), mask)

    def generation_step(self, options: StepOptions) -> ToyStep:
        return ToyStep(self)


class ToyStep(NextConceptStep):
    """No cache: each concept reruns the whole (left-padded) context."""

    def __init__(self, objective: ToyObjective) -> None:
        super().__init__(use_cache=False)
        self.objective = objective

    def start(self, x: Tensor, mask: Tensor) -> None:
        self.x, self.mask = x, mask

    def next(self, generator=None) -> Tensor:
        return self.objective.model(self.x, self.mask)[:, -1]  # (B, D)

    def append(self, y: Tensor) -> None:
        self._grow(y)


class ToyModule(LCMModule):
    """The toy family's LightningModule.

    Args:
        arch: Architecture.
        **kwargs: The arguments of :class:`~lcm.train.module.LCMModule`.
    """

    family = "toy"
    arch_cls = ToyConfig

    def __init__(self, arch: ToyConfig = ToyConfig(d_model=8, n_heads=1), **kwargs: Any) -> None:  # noqa: B008
        super().__init__(arch=arch, **kwargs)
        self.attach(ToyObjective(self.arch.build()))
