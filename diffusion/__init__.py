"""Diffusion components for the Two-Tower LCM: noise schedules, DDIM, guidance and sampling.

Pure torch, no Lightning. Example::

    from diffusion import DDIMScheduler, ddim_sample

    scheduler = DDIMScheduler()  # T=100, cosine, zero terminal SNR, x0-prediction, trailing
    x0 = ddim_sample(model_fn, (B, 1024), scheduler, 40, guidance_scale=3.0,
                     guidance_rescale=0.7, init_noise_scale=0.6)
    # DPM-Solver++(2M) on the same schedule, through the same loop:
    x0 = ddim_sample(model_fn, (B, 1024), DPMSolverMultistepScheduler.from_ddim(scheduler), 10)
"""

from diffusion.ddim import (
    DDIMScheduler,
    DDIMStepOutput,
    PredictionType,
    TimestepSpacing,
    spaced_timesteps,
)
from diffusion.dpm_solver import DPMSolverMultistepScheduler
from diffusion.guidance import (
    classifier_free_guidance,
    guide,
    guided_original_at_zero_snr,
    rescale_guidance,
)
from diffusion.sampling import ModelFn, ddim_sample
from diffusion.schedules import (
    SCHEDULE_NAMES,
    ScheduleName,
    alphas_cumprod_to_betas,
    betas_to_alphas_cumprod,
    cosine_betas,
    get_schedule,
    linear_betas,
    rescale_alphas_cumprod_zero_snr,
    rescale_betas_zero_snr,
    sigmoid_alphas_cumprod,
)
from diffusion.utils import randn_tensor

__all__ = [
    "SCHEDULE_NAMES",
    "DDIMScheduler",
    "DDIMStepOutput",
    "DPMSolverMultistepScheduler",
    "ModelFn",
    "PredictionType",
    "ScheduleName",
    "TimestepSpacing",
    "alphas_cumprod_to_betas",
    "betas_to_alphas_cumprod",
    "classifier_free_guidance",
    "cosine_betas",
    "ddim_sample",
    "get_schedule",
    "guide",
    "guided_original_at_zero_snr",
    "linear_betas",
    "randn_tensor",
    "rescale_alphas_cumprod_zero_snr",
    "rescale_betas_zero_snr",
    "rescale_guidance",
    "sigmoid_alphas_cumprod",
    "spaced_timesteps",
]
