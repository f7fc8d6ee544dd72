"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Algorithm 2) in the diffusers scheduler style, same API as DDIM.

Notation as in :mod:`diffusion.ddim`: ``a_t = alpha_bar_t``, ``alpha_t = sqrt(a_t)``,
``sigma_t = sqrt(1 - a_t)``, half log-SNR ``lambda_t = log(alpha_t / sigma_t)``. The solver
integrates the diffusion ODE in its data-prediction form. With ``D_i`` the x_0 estimate at step
``t_i`` and ``h_i = lambda_{t_{i+1}} - lambda_{t_i}`` (eq. 4.5 / Alg. 2):

    first order (= DDIM, eta 0):
        x_{t_{i+1}} = (sigma_{i+1} / sigma_i) x_{t_i} - alpha_{i+1} (e^{-h_i} - 1) D_i
    second order, multistep (reuses D_{i-1}, no extra model call):
        r_i = h_{i-1} / h_i,   D = (1 + 1 / (2 r_i)) D_i - 1 / (2 r_i) D_{i-1}
        x_{t_{i+1}} = (sigma_{i+1} / sigma_i) x_{t_i} - alpha_{i+1} (e^{-h_i} - 1) D

Zero terminal SNR (``a_{T-1} = 0``, the LCM schedule): ``lambda = -inf`` at the first step, so
``e^{-h} = 0`` and the first-order update is ``x = sigma_{i+1} x_t + alpha_{i+1} D_0``, exact and
finite (it is DDIM with ``eps = x_t``). The step after it has ``h_{i-1} = inf`` and falls back to
first order too. The last step, to clean data (``sigma = 0``, ``lambda = +inf``), is first order
(``x = D``), as diffusers' ``final_sigmas_type="zero"`` does. The coefficients are computed in
float64 from the schedule's float64 master copy.

Stateful like diffusers' multistep schedulers: :meth:`step` remembers the last x_0 estimate and
its timestep; :meth:`set_timesteps` resets them. Steps must run in the order of
:attr:`timesteps`, with one timestep for the whole batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusion.ddim import DDIMScheduler, DDIMStepOutput, PredictionType, TimestepSpacing
from diffusion.schedules import ScheduleName


class DPMSolverMultistepScheduler(DDIMScheduler):
    """DPM-Solver++(2M) sampler; noise schedule, forward process and targets as :class:`DDIM
    <diffusion.ddim.DDIMScheduler>` (it reuses them), deterministic (no eta).

    Args:
        num_train_timesteps: Number of training steps ``T`` (the LCM paper uses 100).
        beta_schedule: ``"cosine"``, ``"linear"`` or ``"sigmoid"``.
        rescale_zero_terminal_snr: Rescale the schedule so ``alphas_cumprod[-1] == 0``.
        prediction_type: What the model outputs: ``"epsilon"``, ``"sample"`` or
            ``"v_prediction"``.
        timestep_spacing: ``"trailing"``, ``"leading"`` or ``"linspace"``.
        solver_order: 1 (DPM-Solver++(1), equal to DDIM) or 2 (DPM-Solver++(2M)).
    """

    def __init__(
        self,
        num_train_timesteps: int = 100,
        beta_schedule: ScheduleName = "cosine",
        rescale_zero_terminal_snr: bool = True,
        prediction_type: PredictionType = "sample",
        timestep_spacing: TimestepSpacing = "trailing",
        solver_order: int = 2,
    ) -> None:
        if solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2, got {solver_order}")
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            rescale_zero_terminal_snr=rescale_zero_terminal_snr,
            prediction_type=prediction_type,
            timestep_spacing=timestep_spacing,
        )
        self._config = {
            "num_train_timesteps": num_train_timesteps,
            "beta_schedule": beta_schedule,
            "rescale_zero_terminal_snr": rescale_zero_terminal_snr,
            "prediction_type": prediction_type,
            "timestep_spacing": timestep_spacing,
            "solver_order": solver_order,
        }
        self.solver_order = solver_order
        self._last: tuple[int, Tensor] | None = None  # (t_{i-1}, D_{i-1})

    @classmethod
    def from_ddim(cls, ddim: DDIMScheduler, solver_order: int = 2) -> DPMSolverMultistepScheduler:
        """The solver on the same schedule as a DDIM scheduler (its eta/clipping are ignored)."""
        c = ddim.config
        keys = (
            "num_train_timesteps",
            "beta_schedule",
            "rescale_zero_terminal_snr",
            "prediction_type",
            "timestep_spacing",
        )
        out = cls(**{k: c[k] for k in keys}, solver_order=solver_order)
        return out.to(ddim.alphas_cumprod.device, ddim.alphas_cumprod.dtype)

    def set_timesteps(
        self, num_inference_steps: int, device: torch.device | str | None = None
    ) -> None:
        """As :meth:`DDIMScheduler.set_timesteps`; also forgets the previous x_0 estimate."""
        super().set_timesteps(num_inference_steps, device)
        self._last = None

    # ------------------------------------------------------------------ helpers
    def _alpha_sigma_lambda(self, t: int) -> tuple[float, float, float]:
        """alpha_t, sigma_t, lambda_t in float64; t = -1 is clean data (alpha 1, sigma 0)."""
        a = 1.0 if t < 0 else float(self._alphas_cumprod64[t])
        alpha, sigma = math.sqrt(a), math.sqrt(max(1.0 - a, 0.0))
        if sigma == 0.0:
            return alpha, sigma, math.inf
        if alpha == 0.0:
            return alpha, sigma, -math.inf
        return alpha, sigma, math.log(alpha) - math.log(sigma)

    # -------------------------------------------------------------------- step
    def step(
        self,
        model_output: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        variance_noise: Tensor | None = None,
    ) -> DDIMStepOutput:
        """One solver step ``x_t -> x_{t_prev}`` from a raw model output.

        Args:
            model_output: Output in :attr:`prediction_type`, shape of ``sample``.
            timestep: The current ``t`` (int or 0-d tensor: one timestep for the batch).
            sample: ``x_t``, shape ``(B, ..., D)``.
            generator: Unused (the solver is deterministic); kept for the DDIM signature.
            variance_noise: Unused, as ``generator``.

        Returns:
            :class:`~diffusion.ddim.DDIMStepOutput` ``(prev_sample, pred_original_sample)``.
        """
        pred_original, pred_epsilon = self.convert_model_output(model_output, sample, timestep)
        return self.step_from_predictions(pred_original, pred_epsilon, timestep, sample)

    def step_from_predictions(
        self,
        pred_original_sample: Tensor,
        pred_epsilon: Tensor,
        timestep: int | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        variance_noise: Tensor | None = None,
    ) -> DDIMStepOutput:
        """One step from an x_0 estimate (``pred_epsilon`` is not needed: data prediction).

        Used by :func:`~diffusion.sampling.ddim_sample`, which guides before stepping.
        """
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps() before step()")
        if isinstance(timestep, Tensor):
            if timestep.numel() != 1:
                raise ValueError("DPM-Solver++ steps the whole batch at one timestep")
            timestep = int(timestep.reshape(()))
        t = int(timestep)
        t_prev = int(self.prev_timesteps[t])  # the next scheduled step below t, or -1
        d0 = pred_original_sample
        alpha_t, sigma_t, lam_t = self._alpha_sigma_lambda(t)
        alpha_s, sigma_s, lam_s = self._alpha_sigma_lambda(t_prev)

        last, self._last = self._last, (t, d0)
        if sigma_s == 0.0:
            # 1. final step to clean data: lambda_s = inf, e^{-h} = 0, x = D (first order).
            return DDIMStepOutput(d0.clone(), d0)
        if alpha_t == 0.0:
            # 2. zero-SNR start: lambda_t = -inf, e^{-h} = 0: x = sigma_s x_t + alpha_s D.
            return DDIMStepOutput(sigma_s * sample + alpha_s * d0, d0)
        h = lam_s - lam_t
        # 3. first-order coefficients (Alg. 2): x = (sigma_s / sigma_t) x_t - alpha_s (e^-h - 1) D
        c_x = sigma_s / sigma_t
        c_d = -alpha_s * math.expm1(-h)
        d = d0
        if self.solver_order == 2 and last is not None:
            t_last, d_last = last
            _, _, lam_last = self._alpha_sigma_lambda(t_last)
            if math.isfinite(lam_last):
                # 4. second order: r = h_{i-1} / h_i, D = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}.
                r = (lam_t - lam_last) / h
                d = d0 + (0.5 / r) * (d0 - d_last)
        return DDIMStepOutput(c_x * sample + c_d * d, d0)
