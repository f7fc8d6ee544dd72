"""Optimization shared by every LightningModule of the toolkit: AdamW with decoupled weight
decay and a warmup-cosine schedule (the LCM paper's pretraining recipe), and an exponential
moving average of the weights."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (defaults: the paper's pretraining values).

    Args:
        lr: Peak learning rate (paper pretraining: 4e-4; fine-tuning: 3e-5).
        betas: AdamW betas.
        eps: AdamW epsilon.
        weight_decay: AdamW weight decay on matrices; norms, biases and other vectors get none.
        warmup_steps: Linear warmup steps (paper: 10k).
        decay_steps: Step at which the cosine decay ends (default: the trainer's estimated total
            steps). Set it when a run will be split and resumed with different ``max_steps``.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        fused: Use the fused AdamW kernel (CUDA; None: where available).
    """

    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 10_000
    decay_steps: int | None = None
    min_lr_ratio: float = 0.0
    fused: bool | None = None


#: The paper's pretraining optimizer settings.
DEFAULT_OPTIM = OptimConfig()


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, then cosine down to
    ``min_lr_ratio`` at ``decay_steps`` (total steps, warmup included), constant after."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_warmup_cosine(
    params: list[nn.Parameter], optim: OptimConfig, decay_steps: int
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: AdamW where matrices decay and vectors (norm
    weights, biases, the separator) do not, stepped per optimizer step by :func:`warmup_cosine`.
    Parameters that do not require grad are left out."""
    decay = [p for p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in params if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = optim.fused
    if fused is None:  # the fused kernel where it is the norm (CUDA); CPU keeps the reference
        fused = bool(decay + no_decay) and all(p.is_cuda for p in decay + no_decay)
    optimizer = torch.optim.AdamW(
        groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused or None
    )
    schedule = partial(
        warmup_cosine,
        warmup_steps=optim.warmup_steps,
        decay_steps=decay_steps,
        min_lr_ratio=optim.min_lr_ratio,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class EMA(nn.Module):
    """Exponential moving average of a network's weights (``ema <- d * ema + (1 - d) * w``).

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so early averages
    are not dominated by the random initialization. Buffers are copied, not averaged.

    Args:
        model: The network to track (deep-copied; the copy never requires grad).
        decay: Target decay d.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        n = int(self.num_updates)
        d = min(self.decay, (1 + n) / (10 + n))
        ema_params = list(self.model.parameters())
        params = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params)]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        self.model.load_state_dict(model.state_dict())
        self.num_updates.zero_()
