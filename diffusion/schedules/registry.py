"""Registry of the named noise schedules, each returned as ``alphas_cumprod``."""

from __future__ import annotations

from typing import Literal, get_args

from torch import Tensor

from diffusion.schedules.cosine import cosine_betas
from diffusion.schedules.linear import linear_betas
from diffusion.schedules.sigmoid import sigmoid_alphas_cumprod
from diffusion.schedules.utils import betas_to_alphas_cumprod
from diffusion.schedules.zero_snr import rescale_alphas_cumprod_zero_snr

ScheduleName = Literal["cosine", "linear", "sigmoid"]
SCHEDULE_NAMES: tuple[str, ...] = get_args(ScheduleName)


def get_schedule(
    name: ScheduleName, num_train_timesteps: int, zero_terminal_snr: bool = False
) -> Tensor:
    """Build a named schedule with its default parameters.

    Args:
        name: ``"cosine"``, ``"linear"`` or ``"sigmoid"``.
        num_train_timesteps: Number of training steps ``T``.
        zero_terminal_snr: Rescale so that ``alphas_cumprod[-1] == 0`` (Lin et al. 2024).

    Returns:
        ``alphas_cumprod``, float64, shape ``(T,)``, non-increasing.
    """
    if name == "cosine":
        alphas_cumprod = betas_to_alphas_cumprod(cosine_betas(num_train_timesteps))
    elif name == "linear":
        alphas_cumprod = betas_to_alphas_cumprod(linear_betas(num_train_timesteps))
    elif name == "sigmoid":
        alphas_cumprod = sigmoid_alphas_cumprod(num_train_timesteps)
    else:
        raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULE_NAMES}")
    if zero_terminal_snr:
        alphas_cumprod = rescale_alphas_cumprod_zero_snr(alphas_cumprod)
    return alphas_cumprod  # (T,)
