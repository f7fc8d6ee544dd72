"""Linear beta schedule (Ho et al. 2020, DDPM, Sec. 4)."""

from __future__ import annotations

import torch
from torch import Tensor


def linear_betas(
    num_train_timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    scale_to_1000_steps: bool = True,
) -> Tensor:
    """Betas spaced linearly from ``beta_start`` to ``beta_end``.

    DDPM's constants (1e-4, 0.02) are for ``T = 1000``. With ``scale_to_1000_steps`` both ends are
    multiplied by ``1000 / T`` (Nichol & Dhariwal 2021, Sec. 3.2), so a short schedule such as
    ``T = 100`` still ends near pure noise instead of at ``alpha_bar_T ~ 0.35``.

    Args:
        num_train_timesteps: Number of training steps ``T``.
        beta_start: First beta (before scaling).
        beta_end: Last beta (before scaling).
        scale_to_1000_steps: Rescale both ends by ``1000 / T``.

    Returns:
        ``betas``, float64, shape ``(T,)``.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    scale = 1000.0 / num_train_timesteps if scale_to_1000_steps else 1.0
    start, end = beta_start * scale, beta_end * scale
    if not 0.0 < start <= end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1 after scaling, got {start}, {end}")
    return torch.linspace(start, end, num_train_timesteps, dtype=torch.float64)  # (T,)
