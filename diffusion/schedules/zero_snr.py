"""Rescale a schedule to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules
and Sample Steps are Flawed", Sec. 3.1, Algorithm 1).

``SNR_t = alpha_bar_t / (1 - alpha_bar_t)``. Common schedules end with ``alpha_bar_{T-1} > 0``, so
training never shows the model pure noise while sampling starts from it. The fix shifts
``sqrt(alpha_bar)`` so its last value is 0 and scales it so its first value is unchanged:
``sqrt_ab' = (sqrt_ab - sqrt_ab[-1]) * sqrt_ab[0] / (sqrt_ab[0] - sqrt_ab[-1])``.
"""

from __future__ import annotations

from torch import Tensor

from diffusion.schedules.utils import alphas_cumprod_to_betas, betas_to_alphas_cumprod


def rescale_alphas_cumprod_zero_snr(alphas_cumprod: Tensor) -> Tensor:
    """Rescale ``alphas_cumprod`` so that ``alpha_bar_{T-1} = 0`` and ``alpha_bar_0`` is kept.

    Args:
        alphas_cumprod: Cumulative signal levels, shape ``(T,)`` with ``T >= 2``, non-increasing,
            with ``alphas_cumprod[0] > alphas_cumprod[-1]``.

    Returns:
        Rescaled ``alphas_cumprod``, shape ``(T,)``, same dtype; the last entry is exactly 0.
    """
    if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
        raise ValueError("alphas_cumprod must be 1-D with at least 2 entries")
    sqrt_ab = alphas_cumprod.sqrt()  # (T,)
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    if not bool(first > last):
        raise ValueError("alphas_cumprod must decrease from its first to its last entry")
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))  # (T,)  Algorithm 1, shift then scale
    sqrt_ab[-1] = 0.0  # exact zero despite rounding
    return sqrt_ab**2  # (T,)


def rescale_betas_zero_snr(betas: Tensor) -> Tensor:
    """Same as :func:`rescale_alphas_cumprod_zero_snr`, in terms of betas (the last becomes 1).

    Args:
        betas: Per-step noise variances, shape ``(T,)``.

    Returns:
        Rescaled ``betas``, shape ``(T,)``.
    """
    alphas_cumprod = rescale_alphas_cumprod_zero_snr(betas_to_alphas_cumprod(betas))  # (T,)
    return alphas_cumprod_to_betas(alphas_cumprod).clamp(0.0, 1.0)  # (T,)


def terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """``SNR`` of the last training step, ``alpha_bar / (1 - alpha_bar)`` (0-d tensor)."""
    last = alphas_cumprod[-1]
    return last / (1.0 - last)


__all__ = ["rescale_alphas_cumprod_zero_snr", "rescale_betas_zero_snr", "terminal_snr"]
