"""Sigmoid noise schedule (Chen 2023, "On the Importance of Noise Scheduling for Diffusion
Models", Algorithm 1)."""

from __future__ import annotations

import torch
from torch import Tensor


def sigmoid_alphas_cumprod(
    num_train_timesteps: int,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    min_alpha_cumprod: float = 1e-9,
) -> Tensor:
    """Cumulative signal levels of the sigmoid schedule.

    ``gamma(u) = (sigmoid(end / tau) - sigmoid((u (end - start) + start) / tau))
    / (sigmoid(end / tau) - sigmoid(start / tau))`` with ``u = (t + 1) / T``, so ``gamma(0) = 1``
    (clean, not part of the schedule) and ``gamma(1) = 0``, clipped below at
    ``min_alpha_cumprod`` so the schedule itself has no exact zero (use :mod:`zero_snr` for that).

    Args:
        num_train_timesteps: Number of training steps ``T``.
        start: Left end of the sigmoid's input range.
        end: Right end of the sigmoid's input range.
        tau: Temperature; larger values flatten the curve.
        min_alpha_cumprod: Lower clip on ``alpha_bar``.

    Returns:
        ``alphas_cumprod``, float64, shape ``(T,)``, strictly decreasing.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if not start < end or tau <= 0:
        raise ValueError(f"need start < end and tau > 0, got {start}, {end}, {tau}")
    u = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps  # (T,)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    v = torch.sigmoid((u * (end - start) + start) / tau)  # (T,)
    gamma = (v_end - v) / (v_end - v_start)  # (T,)  Algorithm 1
    return gamma.clamp(min=min_alpha_cumprod, max=1.0)  # (T,)
