"""Cosine noise schedule (Nichol & Dhariwal 2021, "Improved DDPM", eq. 17)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Betas of the cosine schedule.

    ``f(u) = cos(((u + s) / (1 + s)) * pi / 2) ** 2`` and ``alpha_bar(u) = f(u) / f(0)`` for
    ``u = t / T`` (eq. 17). The discrete betas are ``1 - alpha_bar((t+1)/T) / alpha_bar(t/T)``,
    clipped at ``max_beta`` because ``alpha_bar(1) = 0`` would make the last beta exactly 1.

    Args:
        num_train_timesteps: Number of training steps ``T``.
        s: Small offset that keeps the first betas from being too small.
        max_beta: Upper clip on each beta.

    Returns:
        ``betas``, float64, shape ``(T,)``.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    u = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps  # (T+1,)
    f = torch.cos((u + s) / (1.0 + s) * (math.pi / 2)) ** 2  # (T+1,)
    alpha_bar = f / f[0]  # (T+1,)  alpha_bar(0) = 1
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]  # (T,)
    return betas.clamp(min=0.0, max=max_beta)  # (T,)
