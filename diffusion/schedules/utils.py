"""Conversions between the two ways of writing a discrete noise schedule.

A schedule over ``T`` training steps is either the per-step variances ``betas[t]`` or the
cumulative signal level ``alphas_cumprod[t] = prod_{s<=t} (1 - betas[s])`` (DDPM, Ho et al. 2020,
eq. 4: ``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)``). Index ``t`` runs over
``0 .. T-1``; ``t = 0`` is the least noisy step. All schedules are built in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor


def betas_to_alphas_cumprod(betas: Tensor) -> Tensor:
    """Cumulative product ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``.

    Args:
        betas: Per-step noise variances, shape ``(T,)``, each in ``[0, 1]``.

    Returns:
        ``alphas_cumprod`` with shape ``(T,)`` and the dtype of ``betas``.
    """
    return torch.cumprod(1.0 - betas, dim=0)  # (T,)


def alphas_cumprod_to_betas(alphas_cumprod: Tensor) -> Tensor:
    """Inverse of :func:`betas_to_alphas_cumprod`: ``beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}``.

    ``alpha_bar_{-1}`` is taken as 1 (the clean data). A zero ``alpha_bar_t`` gives ``beta_t = 1``.

    Args:
        alphas_cumprod: Cumulative signal levels, shape ``(T,)``, non-increasing, in ``[0, 1]``.

    Returns:
        ``betas`` with shape ``(T,)``.
    """
    prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])  # (T,)
    # 0/0 cannot occur: only the terminal alpha_bar may be 0, and its predecessor is positive.
    return 1.0 - alphas_cumprod / prev  # (T,)
