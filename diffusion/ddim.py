"""DDIM scheduler (Song et al. 2021, "Denoising Diffusion Implicit Models") in the diffusers style.

Notation: ``a_t = alpha_bar_t = alphas_cumprod[t]`` for ``t = 0 .. T-1``. The forward process is
``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` (DDIM eq. 4). Three parameterizations of the model
output are supported: ``"epsilon"`` (eps), ``"sample"`` (x_0) and ``"v_prediction"``
(``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0``, Salimans & Ho 2022, Sec. 4).

Zero terminal SNR (Lin et al. 2024) makes ``a_{T-1} = 0``, so ``x_{T-1} = eps`` exactly. There the
noise is known (``eps = x_t``) but x_0 cannot be recovered from an epsilon prediction (division by
``sqrt(a_t) = 0``). ``"sample"`` and ``"v_prediction"`` stay exact at that step; ``"epsilon"``
refuses inference schedules that start there (see :meth:`DDIMScheduler.set_timesteps`).

The schedule tensors are non-persistent buffers: they follow ``.to(device / dtype)`` but stay out
of ``state_dict``, since they are a pure function of :attr:`DDIMScheduler.config`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, get_args

import torch
from torch import Tensor, nn

from diffusion.schedules import ScheduleName, get_schedule
from diffusion.utils import randint_tensor, randn_tensor

PredictionType = Literal["epsilon", "sample", "v_prediction"]
TimestepSpacing = Literal["trailing", "leading", "linspace"]
Timestep = int | Tensor


class DDIMStepOutput(NamedTuple):
    """Result of one DDIM step.

    Attributes:
        prev_sample: ``x_{t_prev}``, same shape as the input sample.
        pred_original_sample: The x_0 estimate used for the step, same shape.
    """

    prev_sample: Tensor
    pred_original_sample: Tensor


def spaced_timesteps(
    num_train_timesteps: int, num_inference_steps: int, spacing: TimestepSpacing
) -> Tensor:
    """Pick exactly ``num_inference_steps`` distinct training timesteps, in descending order.

    With ``T`` training steps and ``S`` inference steps (Lin et al. 2024, Table 2, 0-based):

    - ``"trailing"``: ``floor((S - i) T / S) - 1`` for ``i = 0 .. S-1``; always starts at ``T - 1``.
    - ``"leading"``: ``floor(i T / S)`` for ``i = S-1 .. 0``; always ends at ``0``.
    - ``"linspace"``: ``round_half_up(linspace(T - 1, 0, S))``; both ends for ``S >= 2``.

    All three use exact integer or float64 arithmetic, never ``arange(start, stop, step)``, whose
    length depends on how ``T / S`` rounds (that is how "40 steps" becomes 50 in other code).

    Args:
        num_train_timesteps: Number of training steps ``T``.
        num_inference_steps: Number of inference steps ``S``, ``1 <= S <= T``.
        spacing: ``"trailing"``, ``"leading"`` or ``"linspace"``.

    Returns:
        LongTensor of shape ``(S,)``, strictly decreasing, values in ``[0, T - 1]``.
    """
    T, S = num_train_timesteps, num_inference_steps
    if not 1 <= S <= T:
        raise ValueError(f"num_inference_steps must be in [1, {T}], got {S}")
    i = torch.arange(S, dtype=torch.int64)  # (S,)
    if spacing == "trailing":
        timesteps = (S - i) * T // S - 1  # (S,)  consecutive gaps >= floor(T/S) >= 1
    elif spacing == "leading":
        timesteps = (S - 1 - i) * T // S  # (S,)
    elif spacing == "linspace":
        grid = torch.linspace(T - 1, 0, S, dtype=torch.float64)  # (S,)  gaps >= 1
        # floor(x + 0.5), not round-half-to-even: keeps gaps of 1 from collapsing (1.5, 2.5 -> 2).
        timesteps = torch.floor(grid + 0.5).to(torch.int64)  # (S,)
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}")
    return timesteps


class DDIMScheduler(nn.Module):
    """DDIM sampler and forward-noising helper over any ``(N, ..., D)`` tensors.

    Args:
        num_train_timesteps: Number of training steps ``T`` (the LCM paper uses 100).
        beta_schedule: ``"cosine"``, ``"linear"`` or ``"sigmoid"``.
        rescale_zero_terminal_snr: Rescale the schedule so ``alphas_cumprod[-1] == 0``.
        prediction_type: What the model outputs: ``"epsilon"``, ``"sample"`` (x_0, the LCM
            paper's choice) or ``"v_prediction"``.
        timestep_spacing: How :meth:`set_timesteps` picks inference steps: ``"trailing"``,
            ``"leading"`` or ``"linspace"``.
        eta: DDIM stochasticity; 0 is deterministic DDIM, 1 matches DDPM's posterior variance.
        clip_sample: Clamp the x_0 estimate to ``[-clip_sample_range, clip_sample_range]``.
        clip_sample_range: Range for ``clip_sample``.
        thresholding: Dynamic thresholding of x_0 (Saharia et al. 2022, Sec. 2.3), per row over
            the last dim.
        dynamic_thresholding_ratio: Quantile of ``|x_0|`` used as the threshold.
        sample_max_value: Upper bound on the dynamic threshold.
    """

    alphas_cumprod: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    timesteps: Tensor
    prev_timesteps: Tensor
    alphas_cumprod_prev: Tensor

    def __init__(
        self,
        num_train_timesteps: int = 100,
        beta_schedule: ScheduleName = "cosine",
        rescale_zero_terminal_snr: bool = True,
        prediction_type: PredictionType = "sample",
        timestep_spacing: TimestepSpacing = "trailing",
        eta: float = 0.0,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
    ) -> None:
        super().__init__()
        if prediction_type not in get_args(PredictionType):
            raise ValueError(f"unknown prediction_type {prediction_type!r}")
        if timestep_spacing not in get_args(TimestepSpacing):
            raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self._config: dict[str, Any] = {
            "num_train_timesteps": num_train_timesteps,
            "beta_schedule": beta_schedule,
            "rescale_zero_terminal_snr": rescale_zero_terminal_snr,
            "prediction_type": prediction_type,
            "timestep_spacing": timestep_spacing,
            "eta": eta,
            "clip_sample": clip_sample,
            "clip_sample_range": clip_sample_range,
            "thresholding": thresholding,
            "dynamic_thresholding_ratio": dynamic_thresholding_ratio,
            "sample_max_value": sample_max_value,
        }
        self.num_train_timesteps = num_train_timesteps
        self.prediction_type = prediction_type
        self.timestep_spacing = timestep_spacing
        self.eta = float(eta)

        # float64 master copy on CPU: the buffers below are each rounded once from it, and the
        # Python-side checks (zero SNR, set_timesteps) never sync with a device.
        ac64 = get_schedule(beta_schedule, num_train_timesteps, rescale_zero_terminal_snr)  # (T,)
        self._alphas_cumprod64 = ac64
        self._zero_snr_steps = frozenset(torch.nonzero(ac64 == 0).flatten().tolist())
        # float buffer name -> its float64 CPU master, see _apply
        self._masters: dict[str, Tensor] = {}
        self._register_float("alphas_cumprod", ac64)  # (T,)
        self._register_float("sqrt_alphas_cumprod", ac64.sqrt())  # (T,)
        self._register_float("sqrt_one_minus_alphas_cumprod", (1.0 - ac64).sqrt())  # (T,)
        # Inference schedule; until set_timesteps is called it is every training step.
        self.num_inference_steps: int | None = None
        all_t = torch.arange(num_train_timesteps)  # (T,)
        self.register_buffer("timesteps", all_t.flip(0), persistent=False)  # (T,)
        self.register_buffer("prev_timesteps", all_t - 1, persistent=False)  # (T,)
        self._register_float("alphas_cumprod_prev", self._prev_alphas64(all_t - 1))  # (T,)
        self.timesteps_list: list[int] = self.timesteps.tolist()

    def _register_float(self, name: str, master64: Tensor) -> None:
        """Register (or refill) a float buffer from its float64 master, keeping device/dtype."""
        self._masters[name] = master64
        current = self._buffers.get(name)
        if current is None:
            self.register_buffer(name, master64.to(torch.get_default_dtype()), persistent=False)
        else:
            self._buffers[name] = master64.to(device=current.device, dtype=current.dtype)

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any) -> DDIMScheduler:
        # ``.to(float64)`` after building in float32 would otherwise upcast float32-rounded
        # values; refill every float buffer from its float64 master at the new device/dtype.
        module = super()._apply(fn, *args, **kwargs)
        for name, master in self._masters.items():
            self._register_float(name, master)
        return module

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as a plain, JSON-serializable dict."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DDIMScheduler:
        """Build a scheduler from :attr:`config` (unknown keys raise ``TypeError``)."""
        return cls(**dict(config))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items())

    # --------------------------------------------------------------- timesteps
    def _prev_alphas64(self, prev_timesteps: Tensor) -> Tensor:
        """``alpha_bar`` of each step's predecessor; ``t_prev = -1`` is clean data (``a = 1``)."""
        padded = torch.cat([self._alphas_cumprod64.new_ones(1), self._alphas_cumprod64])  # (T+1,)
        return padded[prev_timesteps.cpu() + 1]  # (T,) float64

    def set_timesteps(
        self, num_inference_steps: int, device: torch.device | str | None = None
    ) -> None:
        """Choose the inference schedule: exactly ``num_inference_steps`` steps, descending.

        Also builds the lookup ``prev_timesteps[t]`` = the next scheduled step below ``t`` (``-1``
        after the last), defined for every ``t`` so :meth:`step` needs no search or device sync.

        Args:
            num_inference_steps: Number of steps ``S``, ``1 <= S <= num_train_timesteps``.
            device: Where to put the buffers (default: where they are).

        Raises:
            ValueError: For ``S`` out of range, or for ``prediction_type="epsilon"`` with a
                schedule that starts at a zero-SNR step, where x_0 is not identifiable.
        """
        timesteps = spaced_timesteps(
            self.num_train_timesteps, num_inference_steps, self.timestep_spacing
        )  # (S,)
        if self.prediction_type == "epsilon" and int(timesteps[0]) in self._zero_snr_steps:
            raise ValueError(
                "prediction_type='epsilon' cannot start sampling at a zero-SNR step "
                f"(t={int(timesteps[0])}, alpha_bar=0): x_0 = (x_t - eps) / 0. Use "
                "'sample' or 'v_prediction', or rescale_zero_terminal_snr=False."
            )
        ascending = timesteps.flip(0)  # (S,)
        all_t = torch.arange(self.num_train_timesteps)  # (T,)
        # index of the largest scheduled step strictly below t, or -1
        below = torch.searchsorted(ascending, all_t, right=False) - 1  # (T,)
        prev = torch.where(below >= 0, ascending[below.clamp(min=0)], torch.full_like(all_t, -1))

        device = self.alphas_cumprod.device if device is None else torch.device(device)
        self.num_inference_steps = num_inference_steps
        self.timesteps = timesteps.to(device)  # (S,)
        self.prev_timesteps = prev.to(device)  # (T,)
        if self.alphas_cumprod.device != device:
            self.to(device)
        self._register_float("alphas_cumprod_prev", self._prev_alphas64(prev))  # (T,)
        self.timesteps_list = timesteps.tolist()

    def is_zero_snr(self, timestep: int) -> bool:
        """Whether ``alphas_cumprod[timestep]`` is exactly 0 (pure noise)."""
        return int(timestep) in self._zero_snr_steps

    def sample_training_timesteps(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Uniform training timesteps ``t ~ U{0, ..., T-1}`` (the LCM paper's choice).

        Args:
            shape: Output shape, e.g. ``(B,)`` or ``(B, T_seq)`` for one t per concept.
            generator: Optional random generator.
            device: Output device (default: the buffers' device).

        Returns:
            LongTensor of ``shape``.
        """
        device = self.alphas_cumprod.device if device is None else device
        return randint_tensor(self.num_train_timesteps, shape, generator, device)

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _gather(table: Tensor, timestep: Timestep, like: Tensor) -> Tensor:
        """``table[timestep]`` shaped to broadcast against ``like`` and cast to its dtype.

        ``timestep`` is an int, a 0-d tensor, or a LongTensor whose shape is a prefix of
        ``like.shape`` (e.g. ``(B,)`` or ``(B, T_seq)`` for ``like`` of shape ``(B, T_seq, D)``).
        """
        if isinstance(timestep, int):
            if not 0 <= timestep < table.shape[0]:
                raise IndexError(f"timestep {timestep} out of range [0, {table.shape[0]})")
            return table[timestep].to(like.dtype)  # ()
        if timestep.ndim > like.ndim:
            raise ValueError(f"timestep shape {tuple(timestep.shape)} has more dims than sample")
        values = table[timestep]  # timestep.shape
        return values.reshape(*timestep.shape, *([1] * (like.ndim - timestep.ndim))).to(like.dtype)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Timestep) -> Tensor:
        """Forward process ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` (DDIM eq. 4).

        Args:
            original_samples: ``x_0``, shape ``(B, ..., D)``.
            noise: ``eps``, same shape.
            timesteps: int, or LongTensor of shape ``(B,)``, ``(B, T_seq)``, ... (a prefix).

        Returns:
            ``x_t`` with the shape of ``original_samples``.
        """
        sqrt_a = self._gather(self.sqrt_alphas_cumprod, timesteps, original_samples)
        sqrt_1ma = self._gather(self.sqrt_one_minus_alphas_cumprod, timesteps, original_samples)
        return sqrt_a * original_samples + sqrt_1ma * noise  # (B, ..., D)

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps: Timestep) -> Tensor:
        """``v = sqrt(a_t) eps - sqrt(1 - a_t) x_0`` (Salimans & Ho 2022); ``sample`` is x_0."""
        sqrt_a = self._gather(self.sqrt_alphas_cumprod, timesteps, sample)
        sqrt_1ma = self._gather(self.sqrt_one_minus_alphas_cumprod, timesteps, sample)
        return sqrt_a * noise - sqrt_1ma * sample  # (B, ..., D)

    def get_target(self, original_samples: Tensor, noise: Tensor, timesteps: Timestep) -> Tensor:
        """Regression target for :attr:`prediction_type` (x_0, eps or v)."""
        if self.prediction_type == "sample":
            return original_samples
        if self.prediction_type == "epsilon":
            return noise
        return self.get_velocity(original_samples, noise, timesteps)

    def epsilon_from_original(
        self, pred_original_sample: Tensor, sample: Tensor, timestep: Timestep
    ) -> Tensor:
        """``eps = (x_t - sqrt(a_t) x_0) / sqrt(1 - a_t)``; exact (``= x_t``) at zero SNR."""
        sqrt_a = self._gather(self.sqrt_alphas_cumprod, timestep, sample)
        sqrt_1ma = self._gather(self.sqrt_one_minus_alphas_cumprod, timestep, sample)
        return (sample - sqrt_a * pred_original_sample) / sqrt_1ma

    def original_from_epsilon(
        self, pred_epsilon: Tensor, sample: Tensor, timestep: Timestep
    ) -> Tensor:
        """``x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` (DDIM eq. 9 solved for x_0).

        Undefined where ``a_t = 0``; the denominator is clamped to the dtype's ``tiny`` there so the
        result stays finite, but it carries no information. Callers that need x_0 at a zero-SNR
        step must get it from a ``"sample"`` or ``"v_prediction"`` output instead.
        """
        sqrt_a = self._gather(self.sqrt_alphas_cumprod, timestep, sample)
        sqrt_1ma = self._gather(self.sqrt_one_minus_alphas_cumprod, timestep, sample)
        return (sample - sqrt_1ma * pred_epsilon) / sqrt_a.clamp(min=torch.finfo(sample.dtype).tiny)

    def convert_model_output(
        self, model_output: Tensor, sample: Tensor, timestep: Timestep
    ) -> tuple[Tensor, Tensor]:
        """Turn a model output of :attr:`prediction_type` into ``(x_0, eps)`` estimates.

        Args:
            model_output: The network's output, shape of ``sample``.
            sample: The current ``x_t``, shape ``(B, ..., D)``.
            timestep: int or LongTensor (a prefix of ``sample.shape``).

        Returns:
            ``(pred_original_sample, pred_epsilon)``, each shaped like ``sample``.
        """
        if self.prediction_type == "sample":
            pred_original = model_output
            pred_epsilon = self.epsilon_from_original(pred_original, sample, timestep)
        elif self.prediction_type == "epsilon":
            pred_epsilon = model_output
            pred_original = self.original_from_epsilon(pred_epsilon, sample, timestep)
        else:
            sqrt_a = self._gather(self.sqrt_alphas_cumprod, timestep, sample)
            sqrt_1ma = self._gather(self.sqrt_one_minus_alphas_cumprod, timestep, sample)
            # v = sqrt(a) eps - sqrt(1-a) x0 and x_t = sqrt(a) x0 + sqrt(1-a) eps, a rotation:
            pred_original = sqrt_a * sample - sqrt_1ma * model_output  # (B, ..., D)
            pred_epsilon = sqrt_1ma * sample + sqrt_a * model_output  # (B, ..., D)
        return pred_original, pred_epsilon

    def _threshold(self, x0: Tensor) -> Tensor:
        """Static clipping or dynamic thresholding of an x_0 estimate (per row, last dim)."""
        if self._config["thresholding"]:
            # Saharia et al. 2022, Sec. 2.3: s = quantile(|x0|, p), clamp to [-s, s], divide by s.
            s = torch.quantile(
                x0.abs().float(), self._config["dynamic_thresholding_ratio"], dim=-1, keepdim=True
            )  # (B, ..., 1)
            s = s.clamp(min=1.0, max=self._config["sample_max_value"]).to(x0.dtype)
            x0 = torch.maximum(torch.minimum(x0, s), -s) / s
        if self._config["clip_sample"]:
            r = self._config["clip_sample_range"]
            x0 = x0.clamp(-r, r)
        return x0

    # -------------------------------------------------------------------- step
    def step(
        self,
        model_output: Tensor,
        timestep: Timestep,
        sample: Tensor,
        generator: torch.Generator | None = None,
        variance_noise: Tensor | None = None,
    ) -> DDIMStepOutput:
        """One reverse step ``x_t -> x_{t_prev}`` from a raw model output.

        Args:
            model_output: Output in :attr:`prediction_type`, shape of ``sample``.
            timestep: The current ``t`` (int, 0-d, or per-row LongTensor).
            sample: ``x_t``, shape ``(B, ..., D)``.
            generator: Random generator for the ``eta > 0`` noise.
            variance_noise: Explicit noise for ``eta > 0`` instead of drawing it.

        Returns:
            :class:`DDIMStepOutput` ``(prev_sample, pred_original_sample)``.
        """
        pred_original, pred_epsilon = self.convert_model_output(model_output, sample, timestep)
        return self.step_from_predictions(
            pred_original, pred_epsilon, timestep, sample, generator, variance_noise
        )

    def step_from_predictions(
        self,
        pred_original_sample: Tensor,
        pred_epsilon: Tensor,
        timestep: Timestep,
        sample: Tensor,
        generator: torch.Generator | None = None,
        variance_noise: Tensor | None = None,
    ) -> DDIMStepOutput:
        """One reverse step from already-converted ``(x_0, eps)`` estimates (DDIM eq. 12).

        Used by guided sampling, which combines predictions before stepping.

        Args:
            pred_original_sample: x_0 estimate, shape of ``sample``.
            pred_epsilon: eps estimate, shape of ``sample``.
            timestep: The current ``t`` (int, 0-d, or per-row LongTensor).
            sample: ``x_t``, shape ``(B, ..., D)``.
            generator: Random generator for the ``eta > 0`` noise.
            variance_noise: Explicit noise for ``eta > 0`` instead of drawing it.

        Returns:
            :class:`DDIMStepOutput` ``(prev_sample, pred_original_sample)``.
        """
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps() before step()")
        # 1. a_t and a_{t_prev}; the predecessor comes from the set_timesteps lookup table, and
        #    after the last step it is clean data (a = 1).
        a_prev = self._gather(self.alphas_cumprod_prev, timestep, sample)

        # 2. optional clipping of x_0; eps is then made consistent with the clipped x_0.
        if self._config["clip_sample"] or self._config["thresholding"]:
            pred_original_sample = self._threshold(pred_original_sample)
            pred_epsilon = self.epsilon_from_original(pred_original_sample, sample, timestep)

        # 3. sigma_t (eq. 16): eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev).
        if self.eta > 0:
            a_t = self._gather(self.alphas_cumprod, timestep, sample)
            variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
            std_dev = self.eta * variance.clamp(min=0.0).sqrt()
        else:
            variance = std_dev = None

        # 4. "direction pointing to x_t" (eq. 12, middle term): sqrt(1 - a_prev - sigma^2) * eps.
        dir_coef = 1.0 - a_prev if std_dev is None else (1.0 - a_prev - std_dev**2).clamp(min=0.0)
        # 5. x_{t_prev} = sqrt(a_prev) * x_0 + direction (+ sigma_t * z)   (eq. 12)
        prev_sample = a_prev.sqrt() * pred_original_sample + dir_coef.sqrt() * pred_epsilon
        if std_dev is not None:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    sample.shape, generator, device=sample.device, dtype=sample.dtype
                )
            prev_sample = prev_sample + std_dev * variance_noise  # (B, ..., D)
        return DDIMStepOutput(prev_sample, pred_original_sample)
