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


def check_ema(decay: float, warmup: int) -> None:
    """Raise ValueError unless ``decay`` is in (0, 1) and ``warmup`` an integer >= 1 (see EMA)."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"ema_warmup must be an integer >= 1, got {warmup!r}")


class EMA(nn.Module):
    """Exponential moving average of a network's weights (``ema <- d * ema + (1 - d) * w``).

    The decay ramps up as ``min(decay, (1 + n) / (warmup + n))`` after n updates, so early
    averages are not dominated by the random initialization. With the default ``warmup=10`` the
    ramp reaches 0.99 after 890 updates and 0.995 only after 1,790, so in shorter runs it, not
    ``decay``, sets the averaging window. ``warmup=2`` averages every update so far with equal
    weight until the ramp meets ``decay`` (at n = (2 * decay - 1) / (1 - decay), 198 updates
    for 0.995), then decays at ``decay``; ``warmup=1`` turns the ramp off (d = ``decay`` from the
    first update, so the initialization keeps weight ``decay ** n``). Buffers are copied, not
    averaged.

    Args:
        model: The network to track (deep-copied; the copy never requires grad).
        decay: Target decay d.
        warmup: The ramp's offset (an integer >= 1; see above).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: int = 10) -> None:
        super().__init__()
        check_ema(decay, warmup)
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))

    def decay_at(self, n: int) -> float:
        """The decay applied by the update after ``n`` earlier updates."""
        return min(self.decay, (1 + n) / (self.warmup + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.decay_at(int(self.num_updates))
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
