"""Classifier-free guidance (Ho & Salimans 2022) with the guidance rescale of Lin et al. 2024.

The LCM paper guides on epsilon. Plain guidance is affine in the model output, so guiding eps,
x_0 or v gives the same x_0 at every step with ``alpha_bar_t > 0``; the rescale is not, and is
applied to eps. "Per sample" statistics are taken over the feature dim (the last one by default),
so each concept in a ``(B, T, D)`` sequence is rescaled on its own.
"""

from __future__ import annotations

import torch
from torch import Tensor


def classifier_free_guidance(cond: Tensor, uncond: Tensor, guidance_scale: float) -> Tensor:
    """``uncond + w * (cond - uncond)`` (Ho & Salimans 2022, eq. 6; ``w = 1`` returns ``cond``).

    Args:
        cond: Conditional prediction, shape ``(N, ..., D)``.
        uncond: Unconditional prediction, same shape.
        guidance_scale: ``w``.

    Returns:
        The guided prediction, same shape.
    """
    return uncond + guidance_scale * (cond - uncond)


def rescale_guidance(
    guided: Tensor, cond: Tensor, guidance_rescale: float, dim: int = -1
) -> Tensor:
    """Rescale a guided prediction toward the conditional one's std (Lin et al. 2024, Sec. 3.4).

    ``sigma_pos = std(cond)``, ``sigma_cfg = std(guided)`` over ``dim``;
    ``x_rescaled = guided * sigma_pos / sigma_cfg``;
    ``x_final = phi * x_rescaled + (1 - phi) * guided``.

    Args:
        guided: Output of :func:`classifier_free_guidance`, shape ``(N, ..., D)``.
        cond: Conditional prediction, same shape.
        guidance_rescale: ``phi`` in ``[0, 1]``; 0 leaves ``guided`` unchanged.
        dim: Feature dim over which the std is taken.

    Returns:
        The rescaled prediction, same shape.
    """
    if guidance_rescale == 0.0:
        return guided
    std_cond = cond.std(dim=dim, keepdim=True)  # (N, ..., 1)
    std_guided = guided.std(dim=dim, keepdim=True)  # (N, ..., 1)
    rescaled = guided * (std_cond / std_guided.clamp(min=torch.finfo(guided.dtype).tiny))
    return guidance_rescale * rescaled + (1.0 - guidance_rescale) * guided


def guide(
    cond: Tensor,
    uncond: Tensor,
    guidance_scale: float,
    guidance_rescale: float = 0.0,
    dim: int = -1,
) -> Tensor:
    """Classifier-free guidance followed by the guidance rescale (both above).

    Args:
        cond: Conditional prediction (eps in the LCM recipe), shape ``(N, ..., D)``.
        uncond: Unconditional prediction, same shape.
        guidance_scale: ``w``.
        guidance_rescale: ``phi``.
        dim: Feature dim for the rescale statistics.

    Returns:
        The guided prediction, same shape.
    """
    guided = classifier_free_guidance(cond, uncond, guidance_scale)
    return rescale_guidance(guided, cond, guidance_rescale, dim=dim)


def guided_original_at_zero_snr(
    sample: Tensor,
    pred_original_cond: Tensor,
    pred_original_uncond: Tensor,
    guidance_scale: float,
    guidance_rescale: float = 0.0,
    dim: int = -1,
) -> Tensor:
    """The x_0 that epsilon-space guidance gives at ``alpha_bar_t = 0``, as a limit.

    At zero SNR every eps estimate equals ``x_t``, so the guided eps is ``x_t`` and
    ``x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a)`` is 0/0. Writing ``c = sqrt(a)`` and expanding
    ``eps_k = (x - c x0_k) / sqrt(1 - c^2)`` to first order in ``c``, the rescale factor is
    ``1 + phi * c * kappa + O(c^2)`` with ``kappa = cov(x, x0_cfg - x0_cond) / var(x)`` over
    ``dim``, and the guided x_0 converges to::

        x0_cfg - phi * kappa * x,    x0_cfg = x0_uncond + w (x0_cond - x0_uncond)

    This continuous extension is what this function returns (for ``phi = 0``, plain CFG on x_0).

    Args:
        sample: ``x_t`` at the zero-SNR step, shape ``(N, ..., D)``.
        pred_original_cond: Conditional x_0 estimate, same shape.
        pred_original_uncond: Unconditional x_0 estimate, same shape.
        guidance_scale: ``w``.
        guidance_rescale: ``phi``.
        dim: Feature dim for the rescale statistics.

    Returns:
        The guided x_0 estimate, same shape.
    """
    x0_cfg = classifier_free_guidance(pred_original_cond, pred_original_uncond, guidance_scale)
    if guidance_rescale == 0.0:
        return x0_cfg
    centered = sample - sample.mean(dim=dim, keepdim=True)  # (N, ..., D)
    delta = x0_cfg - pred_original_cond  # (N, ..., D)
    cov = (centered * delta).sum(dim=dim, keepdim=True)  # (N, ..., 1)  unnormalized
    var = (centered * centered).sum(dim=dim, keepdim=True)  # (N, ..., 1)  same normalization
    kappa = cov / var.clamp(min=torch.finfo(sample.dtype).tiny)  # (N, ..., 1)
    return x0_cfg - guidance_rescale * kappa * sample  # (N, ..., D)
