"""Noise schedules, one per file, plus the zero-terminal-SNR rescale and a name registry."""

from diffusion.schedules.cosine import cosine_betas
from diffusion.schedules.linear import linear_betas
from diffusion.schedules.registry import SCHEDULE_NAMES, ScheduleName, get_schedule
from diffusion.schedules.sigmoid import sigmoid_alphas_cumprod
from diffusion.schedules.utils import alphas_cumprod_to_betas, betas_to_alphas_cumprod
from diffusion.schedules.zero_snr import (
    rescale_alphas_cumprod_zero_snr,
    rescale_betas_zero_snr,
    terminal_snr,
)

__all__ = [
    "SCHEDULE_NAMES",
    "ScheduleName",
    "alphas_cumprod_to_betas",
    "betas_to_alphas_cumprod",
    "cosine_betas",
    "get_schedule",
    "linear_betas",
    "rescale_alphas_cumprod_zero_snr",
    "rescale_betas_zero_snr",
    "sigmoid_alphas_cumprod",
    "terminal_snr",
]
