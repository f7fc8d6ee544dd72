"""One generic DDIM sampling loop with batched classifier-free guidance on epsilon."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffusion.ddim import DDIMScheduler
from diffusion.guidance import guide, guided_original_at_zero_snr
from diffusion.utils import randn_tensor

ModelFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``model_fn(x_t[N, ...], t[N] (long), drop_context[N] (bool)) -> output[N, ...]`` in the
scheduler's prediction type. ``drop_context[i]`` asks for the unconditional prediction."""


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    shape: Sequence[int],
    scheduler: DDIMScheduler,
    num_inference_steps: int,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    init_noise_scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    initial_noise: Tensor | None = None,
) -> Tensor:
    """Sample with DDIM from ``init_noise_scale * N(0, I)``.

    With ``guidance_scale != 1`` the conditional and unconditional passes are one model call on
    ``[x_t, x_t]`` with ``drop_context = [False] * N + [True] * N``. Guidance (and its rescale) is
    applied to eps; the guided x_0 is recovered from the guided eps, except at a zero-SNR step,
    where that is 0/0 and :func:`~diffusion.guidance.guided_original_at_zero_snr` gives its limit.
    With ``guidance_scale == 1`` only the conditional pass runs.

    The LCM paper's settings: 40 steps, trailing spacing, eta 0, guidance 3, rescale 0.7, initial
    noise scale 0.6.

    Args:
        model_fn: Denoiser, see :data:`ModelFn`.
        shape: Output shape ``(N, ..., D)``; the first dim is the batch.
        scheduler: A :class:`~diffusion.ddim.DDIMScheduler`; :meth:`set_timesteps` is called on it.
        num_inference_steps: Exactly this many model evaluations (one batched call each).
        guidance_scale: CFG weight ``w``; 1 disables guidance.
        guidance_rescale: Guidance rescale ``phi`` in ``[0, 1]``.
        init_noise_scale: Std of the initial noise.
        generator: Random generator for the initial noise and ``eta > 0`` noise.
        device: Device of the sample (default: the scheduler's).
        dtype: Dtype of the sample (default: the scheduler buffers').
        initial_noise: Standard normal noise of shape ``shape`` to start from (it is still
            multiplied by ``init_noise_scale``); by default it is drawn with ``generator``.

    Returns:
        The final sample ``x_0``, shape ``shape``.
    """
    device = scheduler.alphas_cumprod.device if device is None else torch.device(device)
    dtype = scheduler.alphas_cumprod.dtype if dtype is None else dtype
    scheduler.set_timesteps(num_inference_steps, device=device)
    n = int(shape[0])
    guided = guidance_scale != 1.0
    m = 2 * n if guided else n

    # Per-step model inputs built once: one contiguous row of timesteps per step.
    t_rows = scheduler.timesteps[:, None].expand(-1, m).contiguous()  # (S, M)
    drop_context = torch.zeros(m, dtype=torch.bool, device=device)  # (M,)
    drop_context[n:] = True  # second half unconditional (empty when not guided)

    if initial_noise is None:
        initial_noise = randn_tensor(shape, generator, device=device, dtype=dtype)
    elif tuple(initial_noise.shape) != tuple(shape):
        raise ValueError(f"initial_noise has shape {tuple(initial_noise.shape)}, expected {shape}")
    x = init_noise_scale * initial_noise.to(device=device, dtype=dtype)  # (N, ..., D)
    for i, t in enumerate(scheduler.timesteps_list):
        model_in = torch.cat([x, x]) if guided else x  # (M, ..., D)
        out = model_fn(model_in, t_rows[i], drop_context)  # (M, ..., D)
        if out.shape != model_in.shape:
            raise ValueError(f"model_fn returned {tuple(out.shape)}, expected {model_in.shape}")
        if not guided:
            x0, eps = scheduler.convert_model_output(out, x, t)
        else:
            out_cond, out_uncond = out[:n], out[n:]  # (N, ..., D) each
            x0_cond, eps_cond = scheduler.convert_model_output(out_cond, x, t)
            x0_uncond, eps_uncond = scheduler.convert_model_output(out_uncond, x, t)
            if scheduler.is_zero_snr(t):
                # a_t = 0: eps = x_t exactly for every branch; x_0 is the a -> 0 limit.
                eps = x
                x0 = guided_original_at_zero_snr(
                    x, x0_cond, x0_uncond, guidance_scale, guidance_rescale
                )
            else:
                eps = guide(eps_cond, eps_uncond, guidance_scale, guidance_rescale)
                x0 = scheduler.original_from_epsilon(eps, x, t)
        x = scheduler.step_from_predictions(x0, eps, t, x, generator).prev_sample
    return x
