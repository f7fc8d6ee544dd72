"""Diffusion objectives for the Two-Tower and One-Tower LCMs (paper sections 2.3.3-2.3.4).

Training (one draw per concept, every position at once):

    t_i ~ U{0, ..., T-1},  eps_i ~ N(0, I)
    x_t_i = sqrt(a_t) x_i + sqrt(1 - a_t) eps_i                       (DDIM eq. 4)
    drop_i ~ Bernoulli(cfg_dropout)         position i loses its context (classifier-free guidance)
    out_i = model(x, x_t, t, mask, drop)_i  made from x_t_i, t_i and the clean x_0 .. x_{i-1}
    loss  = mean over target positions of mean_D (out_i - target_i)^2   (unweighted; target = x_i
            for the paper's x0-prediction)

Sampling is :func:`diffusion.ddim_sample` with the paper's settings by default: 40 DDIM steps,
trailing spacing, eta 0, guidance 3 on epsilon with rescale 0.7, initial noise scale 0.6.
The two families differ only in how one denoising call reaches the clean context, which the
subclasses provide (:meth:`DiffusionObjective._teacher_forced_fn`, :meth:`_next_fn`).

Residual (``residual`` other than ``"none"``, x0-prediction only): the denoiser's x0 estimate
of concept i becomes ``base_{i-1} + out_i``, where ``base`` is the last context concept, the
context mean or, for summarization, the source mean or its midpoint with the source's first
concept (``"source_mean"``, ``"source_lead"``: :func:`~lcm.objectives.base.residual_base` with
the objective's :attr:`~lcm.objectives.base.Objective.separator`, which the LightningModule
gives it, the same as Base-LCM's), and 0 for the first concept and for every row whose context
is dropped (the unconditional half of classifier-free guidance). The forward process still
noises the concept itself, not the residual ``x_i - base``:

- the noise schedule (zero terminal SNR), the initial noise scale 0.6 and the guidance rescale
  are set for the distribution of concepts; a residual has another scale (consecutive concepts
  are close, so it is small) and, for the context mean, another centre;
- classifier-free guidance needs an unconditional model, and a residual has no meaning without
  its context, while an x0 estimate does (the unconditional rows simply get no base);
- so the option is only a re-parameterization of the denoiser's output (a skip connection from
  the context), with the same loss target, sampler and generated distribution family as before.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from diffusion import DDIMScheduler, DPMSolverMultistepScheduler, ModelFn, ddim_sample
from diffusion.utils import randn_tensor
from lcm.models import OneTowerLCM, TwoTowerLCM
from lcm.objectives.base import (
    Batch,
    ObjectiveOutput,
    Residual,
    SampledObjective,
    masked_mse,
    residual_base,
    scale_residual,
    shift_right,
    target_weight,
    with_overrides,
)
from lcm.objectives.step import (
    _COMPILED,
    NextConceptStep,
    StepOptions,
    compiled_method,
    prefill_mask,
)

Solver = Literal["ddim", "dpmsolver++"]


@dataclass(frozen=True)
class SamplingConfig:
    """DDIM + classifier-free guidance settings (defaults: the paper's inference settings).

    Attributes:
        num_inference_steps: DDIM steps (model evaluations).
        guidance_scale: CFG weight on epsilon; 1 disables guidance (one pass per step).
        guidance_rescale: Guidance rescale phi of Lin et al. in [0, 1].
        init_noise_scale: Std of the initial noise.
        solver: ODE solver for the reverse process, on the objective's noise schedule:
            ``"ddim"`` (the paper's, first order) or ``"dpmsolver++"`` (DPM-Solver++(2M),
            second-order multistep, same number of model calls per step; meant for fewer
            steps, e.g. 10-20).
    """

    num_inference_steps: int = 40
    guidance_scale: float = 3.0
    guidance_rescale: float = 0.7
    init_noise_scale: float = 0.6
    solver: Solver = "ddim"


def sample_with(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    scheduler: DDIMScheduler,
    s: SamplingConfig,
    generator: torch.Generator | None,
    like: Tensor,
) -> Tensor:
    """:func:`diffusion.ddim_sample` with ``s``'s settings: the one place the objectives and the
    cached generation steps call the sampler.

    Args:
        model_fn: the denoiser (guided rows stacked as :func:`diffusion.ddim_sample` expects).
        shape: shape of the sample, e.g. ``(B, 1, D)``.
        scheduler: the schedule, already turned into ``s.solver``'s (:func:`solver_scheduler`).
        s: sampling settings (steps, guidance, rescale, initial noise scale).
        generator: random generator of the initial noise.
        like: a tensor on the device and dtype of the sample.

    Returns:
        The sample, of ``shape``.
    """
    return ddim_sample(
        model_fn,
        shape,
        scheduler,
        s.num_inference_steps,
        guidance_scale=s.guidance_scale,
        guidance_rescale=s.guidance_rescale,
        init_noise_scale=s.init_noise_scale,
        generator=generator,
        device=like.device,
        dtype=like.dtype,
    )


def solver_scheduler(scheduler: DDIMScheduler, solver: str) -> DDIMScheduler:
    """The scheduler that samples with ``solver`` on ``scheduler``'s noise schedule."""
    if solver == "ddim":
        return scheduler
    if solver == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_ddim(scheduler)
    raise ValueError(f"unknown solver {solver!r}; known: {list(get_args(Solver))}")


def _repeat_batch(t: Tensor, times: int) -> Tensor:
    """Stack ``times`` copies along the batch dim (the guided and unguided halves)."""
    return t if times == 1 else torch.cat([t] * times)


def add_base(out: Tensor, base: Tensor, drop_context: Tensor) -> Tensor:
    """``out + base`` on the rows that keep their context: (N, ..., D).

    Args:
        out: (N, ..., D) x0 estimates.
        base: (B, ..., D) residual base, B dividing N (stacked for the guidance halves).
        drop_context: (N,) or (N, T) bool, True = that prediction has no context (no base).
    """
    base = _repeat_batch(base, out.shape[0] // base.shape[0])
    keep = (~drop_context).to(out.dtype)
    keep = keep.reshape(*keep.shape, *([1] * (out.dim() - keep.dim())))
    return out + base * keep


def with_base(model_fn: ModelFn, base: Tensor | None) -> ModelFn:
    """``model_fn`` whose x0 estimates get ``base`` (B, Tq, D) added on the conditional rows
    (:func:`add_base`); ``model_fn`` itself when ``base`` is None."""
    if base is None:
        return model_fn

    def fn(x_t: Tensor, t: Tensor, drop_context: Tensor) -> Tensor:
        return add_base(model_fn(x_t, t, drop_context), base, drop_context)

    return fn


class DiffusionObjective(SampledObjective):
    """x0-prediction diffusion loss and DDIM sampling for a denoiser with the signature
    ``model(x_clean, x_noisy, t, mask, drop_context) -> (B, T, D)``.

    Args:
        model: A :class:`~lcm.models.TwoTowerLCM` or :class:`~lcm.models.OneTowerLCM`.
        scheduler: Noise schedule and sampler (default: ``DDIMScheduler()``, i.e. T=100, cosine
            rescaled to zero terminal SNR, x0-prediction, trailing spacing).
        cfg_dropout: Share of positions trained without context (paper: about 0.15).
        sampling: Default sampling settings; every sampling method can override them.
        residual: Add this base from the context to the denoiser's x0 estimate (see the module
            docstring; needs ``prediction_type="sample"``; ``source_mean`` and ``source_lead``
            need :attr:`~lcm.objectives.base.Objective.separator`).
    """

    residuals = get_args(Residual)

    def __init__(
        self,
        model: nn.Module,
        scheduler: DDIMScheduler | None = None,
        cfg_dropout: float = 0.15,
        sampling: SamplingConfig | None = None,
        residual: Residual = "none",
    ) -> None:
        super().__init__(model, residual)
        if not 0.0 <= cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {cfg_dropout}")
        self.scheduler = scheduler if scheduler is not None else DDIMScheduler()
        if residual != "none" and self.scheduler.prediction_type != "sample":
            raise ValueError(
                f"residual={residual!r} adds a base to the x0 estimate, so it needs "
                f"prediction_type='sample', not {self.scheduler.prediction_type!r}"
            )
        self.cfg_dropout = cfg_dropout
        self.sampling = sampling if sampling is not None else SamplingConfig()

    # ---------------------------------------------------------------------------- training
    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> ObjectiveOutput:
        x, mask = batch["x"], batch["mask"]  # (B, T, D), (B, T)
        B, T, _ = x.shape
        t = self.scheduler.sample_training_timesteps((B, T), generator, device=x.device)  # (B, T)
        noise = randn_tensor(x.shape, generator, device=x.device, dtype=x.dtype)  # (B, T, D)
        x_t = self.scheduler.add_noise(x, noise, t)  # (B, T, D)
        drop = None
        if self.cfg_dropout > 0:
            device = generator.device if generator is not None else x.device
            u = torch.rand((B, T), generator=generator, device=device)  # (B, T)
            drop = (u < self.cfg_dropout).to(x.device)
        # The context the denoiser conditions on (noised in training with input_noise, drawn
        # after the diffusion draws so that those are the same with and without it); x_t, the
        # target and the base come from the clean x.
        context = self.network_input(batch, generator)  # (B, T, D)
        out = self.model(context, x_t, t, mask, drop)  # (B, T, D) in prediction_type space
        base = self.teacher_forced_base(x, mask)
        if base is not None:
            no_drop = torch.zeros((B, T), dtype=torch.bool, device=x.device)
            out = add_base(out, base, no_drop if drop is None else drop)
        target = self.scheduler.get_target(x, noise, t)  # (B, T, D)
        weight = target_weight(batch)  # (B, T)
        return ObjectiveOutput(masked_mse(out, target, weight), out, target, weight)

    def teacher_forced_base(self, x: Tensor, mask: Tensor | None) -> Tensor | None:
        """(B, T, D): the residual base of each target position i (from ``x[:, :i]``; 0 at
        position 0, which has no context), or None without a residual."""
        base = residual_base(x, mask, self.residual, self._separator())
        return None if base is None else shift_right(base)

    # ---------------------------------------------------------------------------- sampling
    def sampling_with(self, **overrides) -> SamplingConfig:
        """This objective's sampling settings with the given fields replaced (None keeps one)."""
        return with_overrides(self.sampling, **overrides)

    def options(
        self,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float | None = None,
        init_noise_scale: float | None = None,
        solver: Solver | None = None,
    ) -> SamplingConfig:
        """This objective's :class:`SamplingConfig` with the given fields replaced (None keeps
        one); every sampling method takes these keywords."""
        return self.sampling_with(
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
            init_noise_scale=init_noise_scale,
            solver=solver,
        )

    def step_settings(self, options: StepOptions) -> tuple[DDIMScheduler, SamplingConfig]:
        """The scheduler and sampling settings of a generation step: ``options``' (whole, or
        this objective's with ``options.sampling_overrides`` put in)."""
        sampling = options.sampling
        if sampling is None:
            sampling = self.sampling_with(**(options.sampling_overrides or {}))
        return options.scheduler or self.scheduler, sampling

    def _sample(
        self,
        fn_factory,
        shape: tuple[int, ...],
        like: Tensor,
        generator: torch.Generator | None,
        s: SamplingConfig,
    ) -> Tensor:
        guided = s.guidance_scale != 1.0
        model_fn = fn_factory(2 if guided else 1)
        scheduler = solver_scheduler(self.scheduler, s.solver)
        return sample_with(model_fn, shape, scheduler, s, generator, like)

    def sample_all(
        self, batch: Batch, generator: torch.Generator | None, options: SamplingConfig
    ) -> tuple[Tensor, None]:
        """(B, T, D): every concept sampled from its gold prefix, all positions in one DDIM loop
        (denoising positions never see each other, so this equals T separate generations)."""
        x, mask = batch["x"], batch["mask"]
        base = self.teacher_forced_base(x, mask)
        out = self._sample(
            lambda n: with_base(self._teacher_forced_fn(x, mask, n), base),
            tuple(x.shape),
            x,
            generator,
            options,
        )
        scaled = scale_residual(out, base, self.residual_scale)
        if scaled is not out:
            scaled[:, 0] = out[:, 0]  # position 0 has no context, so no base to scale from
        return scaled, None

    def sample_next(
        self,
        x: Tensor,
        mask: Tensor | None,
        generator: torch.Generator | None,
        options: SamplingConfig,
    ) -> tuple[Tensor, None]:
        """(B, D): sample the concept after each right-padded sequence ``x`` (B, T, D)."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        shape = (x.shape[0], 1, x.shape[2])
        base = self.next_base(x, mask)
        base = None if base is None else base[:, None]  # (B, 1, D)
        out = self._sample(
            lambda n: with_base(self._next_fn(x, mask, n), base), shape, x, generator, options
        )
        return scale_residual(out, base, self.residual_scale)[:, 0], None  # (B, D)

    @abstractmethod
    def _teacher_forced_fn(self, x: Tensor, mask: Tensor, copies: int) -> ModelFn:
        """A :data:`~diffusion.ModelFn` over (copies*B, T, D) noisy sequences whose position i is
        conditioned on the clean ``x[:, :i]``. ``copies`` is 2 under guidance (ddim_sample stacks
        the conditional and unconditional halves along the batch)."""

    @abstractmethod
    def _next_fn(self, x: Tensor, mask: Tensor, copies: int) -> ModelFn:
        """A :data:`~diffusion.ModelFn` over (copies*B, 1, D) noisy next concepts."""


class TwoTowerDiffusion(DiffusionObjective, network=TwoTowerLCM):
    """Two-Tower: the contextualizer runs once; its cross-attention keys/values are computed once
    per call and reused by every denoising step. In eval mode the denoiser runs from its
    :class:`~lcm.models.DenoiserPlan` (timestep/AdaLN table, fused diagonal self-attention),
    equal to the general path to float rounding; ``fast_sampling = False`` turns that off."""

    fast_sampling: bool = True

    def _fn(self, x: Tensor, mask: Tensor, copies: int, include_last: bool) -> ModelFn:
        model = self.model
        ctx = model.contextualize(x, mask)  # (B, T, d)
        shifted = model.shift_context(ctx, include_last=include_last)  # (B, S, d)
        kv = model.precompute_cross_kv(shifted)
        kv = [(_repeat_batch(k, copies), _repeat_batch(v, copies)) for k, v in kv]
        mask = _repeat_batch(mask, copies)  # (copies*B, T)
        if self.fast_sampling and not model.training:
            plan = model.denoiser_plan(self.scheduler.num_train_timesteps)
            B, T = x.shape[:2]
            n_query = 1 if include_last else T  # predict_next: one query; predict_all: T
            # ddim_sample's rows: [conditional] * B (+ [unconditional] * B under guidance).
            drop = (torch.arange(copies * B, device=x.device) >= B)[:, None]  # (M, 1)
            cmask = model.cross_mask(
                copies * B, n_query, shifted.size(1), mask, drop.expand(-1, n_query)
            )

            def fast_fn(x_t: Tensor, t: Tensor, drop_context: Tensor) -> Tensor:
                return model.denoise_planned(x_t, t, plan, kv, cmask)

            return fast_fn

        def model_fn(x_t: Tensor, t: Tensor, drop_context: Tensor) -> Tensor:
            drop = drop_context[:, None].expand(x_t.shape[:2])  # (M, Tq)
            return model.denoise(x_t, t, mask=mask, drop_context=drop, cross_kv=kv)

        return model_fn

    def _teacher_forced_fn(self, x: Tensor, mask: Tensor, copies: int) -> ModelFn:
        return self._fn(x, mask, copies, include_last=False)

    def generation_step(self, options: StepOptions) -> TwoTowerStep:
        """:class:`TwoTowerStep` (reads ``scheduler``, ``sampling``, ``sampling_overrides``,
        ``use_cache``, ``reuse_context``, ``fast``, ``fast_options``, ``compile``)."""
        scheduler, sampling = self.step_settings(options)
        o = options
        step = TwoTowerStep(
            self.model,
            scheduler,
            sampling,
            o.use_cache,
            o.reuse_context,
            o.fast,
            o.fast_options,
            o.compile,
            self.residual,
        )
        step.separator = self._separator()
        return step

    def _next_fn(self, x: Tensor, mask: Tensor, copies: int) -> ModelFn:
        # S = T + 1 slots [0, ctx_0 .. ctx_{T-1}]; the single query is concept T. Padded slots
        # of shorter rows are masked, so a row of length L sees exactly [0, ctx_0 .. ctx_{L-1}].
        return self._fn(x, mask, copies, include_last=True)


def left_align(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each right-padded row's valid concepts to the end: (B, T, D), (B, T)."""
    T = x.shape[1]
    lengths = mask.long().sum(dim=1, keepdim=True)  # (B, 1)
    src = (torch.arange(T, device=x.device)[None] - (T - lengths)) % T  # (B, T)
    x_left = torch.gather(x, 1, src[..., None].expand_as(x))  # (B, T, D)
    return x_left, torch.gather(mask, 1, src)


class OneTowerDiffusion(DiffusionObjective, network=OneTowerLCM):
    """One-Tower: teacher-forced sampling reruns the interleaved tower each step; next-concept
    sampling caches the clean prefix once (``encode_clean``) and denoises against it."""

    def generation_step(self, options: StepOptions) -> OneTowerStep:
        """:class:`OneTowerStep` (reads ``scheduler``, ``sampling``, ``sampling_overrides``,
        ``use_cache``, ``compile``, ``compile_backend``)."""
        scheduler, sampling = self.step_settings(options)
        step = OneTowerStep(
            self.model,
            scheduler,
            sampling,
            options.use_cache,
            self.residual,
            options.compile,
            options.compile_backend,
        )
        step.separator = self._separator()
        return step

    def _teacher_forced_fn(self, x: Tensor, mask: Tensor, copies: int) -> ModelFn:
        model = self.model
        x_m, mask_m = _repeat_batch(x, copies), _repeat_batch(mask, copies)  # (M, T, D), (M, T)

        def model_fn(x_t: Tensor, t: Tensor, drop_context: Tensor) -> Tensor:
            drop = drop_context[:, None].expand(x_t.shape[:2])  # (M, T)
            return model(x_m, x_t, t, mask_m, drop)

        return model_fn

    def _next_fn(self, x: Tensor, mask: Tensor, copies: int) -> ModelFn:
        model = self.model
        # RoPE: the noisy concept sits at position cache.length = T. Left-aligning every row keeps
        # the query-to-prefix offsets equal to training's (concept j of L sits at T - L + j).
        x_left, mask_left = left_align(x, mask)
        x_left, mask_left = _repeat_batch(x_left, copies), _repeat_batch(mask_left, copies)
        cache = model.new_cache()
        model.encode_clean(x_left, prefill_mask(mask_left), cache)

        def model_fn(x_t: Tensor, t: Tensor, drop_context: Tensor) -> Tensor:
            return model.denoise_next(x_t, t, cache, drop_context=drop_context)  # (M, 1, D)

        return model_fn


# ------------------------------------------------------------------------- generation steps
class DiffusionStep(NextConceptStep):
    """What the diffusion families' cached generation steps share: one concept per document
    sampled with the step's scheduler and settings (:func:`sample_with`, the objectives' own
    sampler), the residual base added on the conditional rows."""

    def __init__(
        self,
        scheduler: DDIMScheduler,
        sampling: SamplingConfig,
        use_cache: bool = True,
        residual: Residual = "none",
    ) -> None:
        super().__init__(use_cache, residual)
        self.scheduler, self.sampling = scheduler, sampling
        self._solver: tuple[str, DDIMScheduler] | None = None  # (name, scheduler)

    def _ddim(self, model_fn, batch: int, dim: int, generator, like: Tensor) -> Tensor:
        """One concept per document, (B, D), sampled with this step's scheduler and settings."""
        s: SamplingConfig = self.sampling
        base = self._base()
        model_fn = with_base(model_fn, None if base is None else base[:, None])  # (B, 1, D)
        if self._solver is None or self._solver[0] != s.solver:  # built once per step object
            self._solver = (s.solver, solver_scheduler(self.scheduler, s.solver))
        y = sample_with(model_fn, (batch, 1, dim), self._solver[1], s, generator, like)
        return scale_residual(y[:, 0], base, self.residual_scale)  # (B, D)


class TwoTowerStep(DiffusionStep):
    """Two-Tower's cached generation step: contextualize once per concept (KV-cached), then DDIM
    on the denoiser with the context's cross-attention keys/values computed once and reused by
    every denoising step.

    ``fast=True`` (default) also runs the denoiser from its :class:`~lcm.models.DenoiserPlan`:
    the timestep embedding and every layer's AdaLN modulation come from a table computed once
    per model and schedule (reused across concepts, documents and calls), the diagonal
    self-attention is one fused W_o W_v map, and the cross-attention is prepared once per
    concept (:meth:`~lcm.models.TwoTowerLCM.prepare_cross`: the unconditional rows' output is
    one constant; for a short context the query and output projections are folded into the
    context's keys and values). Outputs equal the ``fast=False`` path to float rounding (tested
    to 1e-5). ``fast_options`` go to :meth:`~lcm.models.TwoTowerLCM.denoiser_plan`
    (``transposed``, ``diagonal``) and ``prepare_cross`` (``fold_cross``: None = by size), so a
    benchmark can measure each part's share.
    """

    def __init__(
        self,
        model: TwoTowerLCM,
        scheduler: DDIMScheduler,
        sampling: SamplingConfig,
        use_cache: bool = True,
        reuse_context: bool = True,
        fast: bool = True,
        fast_options: dict[str, Any] | None = None,
        compile: bool = False,
        residual: Residual = "none",
    ) -> None:
        super().__init__(scheduler, sampling, use_cache, residual)
        self.model = model
        self.reuse_context = reuse_context
        self.fast = fast and reuse_context and not model.training
        self.fast_options = fast_options or {}
        self.compile = compile and self.fast

    def start(self, x: Tensor, mask: Tensor) -> None:
        self.x, self.mask = x, mask
        if self.use_cache:
            self.cache = self.model.new_cache()
            self.ctx = self.model.contextualize(x, prefill_mask(mask), self.cache)  # (B, T, d)

    def next(self, generator=None) -> Tensor:
        model, s = self.model, self.sampling
        ctx = self.ctx if self.use_cache else self.model.contextualize(self.x, self.mask)
        B = ctx.shape[0]
        guided = s.guidance_scale != 1.0
        reps = 2 if guided else 1
        shifted = model.shift_context(ctx, include_last=True)  # (B, T+1, d): slots for concept T

        if self.fast:
            opts = dict(self.fast_options)
            fold = opts.pop("fold_cross", None)
            if self.compile:  # dynamo takes no oneDNN-packed (opaque) tensors
                opts["onednn"] = False
            plan = model.denoiser_plan(self.scheduler.num_train_timesteps, **opts)
            # once per concept: the context's keys/values, folded with W_q and W_o when that
            # is smaller; ddim_sample's rows are [conditional] * B (+ [unconditional] * B under
            # guidance), and the unconditional rows' cross-attention is one constant
            kv = model.precompute_cross_kv(shifted)  # (B, H, T+1, hd) per layer
            cross = model.prepare_cross(plan, kv, self.mask, fold)

            if self.compile:
                denoise = compiled_denoiser(model, plan)

                def fast_fn(x_t: Tensor, t: Tensor, drop_context: Tensor) -> Tensor:
                    return denoise(x_t, t, cross)

            else:

                def fast_fn(x_t: Tensor, t: Tensor, drop_context: Tensor) -> Tensor:
                    return model.denoise_planned(x_t, t, plan, None, None, cross)

            return self._ddim(fast_fn, B, model.config.sonar_dim, generator, ctx)

        mask = self.mask.repeat(reps, 1)  # (M, T)
        cross_kv = None
        if self.reuse_context:
            kv = model.precompute_cross_kv(shifted)  # once per concept
            cross_kv = [(k.repeat(reps, 1, 1, 1), v.repeat(reps, 1, 1, 1)) for k, v in kv]
        shifted_rep = shifted.repeat(reps, 1, 1)  # (M, T+1, d)

        def model_fn(x_t: Tensor, t: Tensor, drop: Tensor) -> Tensor:
            kv_now = cross_kv
            if kv_now is None:  # the slow path: project the context again at every step
                kv_now = model.precompute_cross_kv(shifted_rep)
            return model.denoise(x_t, t, mask=mask, drop_context=drop[:, None], cross_kv=kv_now)

        return self._ddim(model_fn, B, model.config.sonar_dim, generator, ctx)

    def append(self, y: Tensor) -> None:
        self._grow(y)
        if self.use_cache:
            new = self.model.contextualize(y[:, None], None, self.cache)  # (B, 1, d)
            self.ctx = torch.cat((self.ctx, new), dim=1)


def compiled_denoiser(model: TwoTowerLCM, plan: Any):
    """``model.denoise_planned`` with ``plan`` fixed, through ``torch.compile`` (dynamic shapes:
    the context grows by one concept per generated concept), compiled once per model and plan and
    shared by their steps. It computes the same values as the eager one (tested to 1e-5)."""
    per_model = _COMPILED.setdefault(model, {})
    fn = per_model.get(id(plan))
    if fn is None or fn[0] is not plan:

        def denoise(x_t: Tensor, t: Tensor, cross: Any) -> Tensor:
            return model.denoise_planned(x_t, t, plan, None, None, cross)

        fn = per_model[id(plan)] = (plan, torch.compile(denoise, dynamic=True))
    return fn[1]


class OneTowerStep(DiffusionStep):
    """One-Tower's cached generation step: clean concepts are KV-cached; each denoising step
    queries the cache with the noisy next concept without storing it. With guidance the cache
    holds the batch twice (the conditional and unconditional halves share it), so both passes
    are one model call."""

    def __init__(
        self,
        model: OneTowerLCM,
        scheduler: DDIMScheduler,
        sampling: SamplingConfig,
        use_cache: bool = True,
        residual: Residual = "none",
        compile: bool = False,
        compile_backend: str | None = None,
    ) -> None:
        super().__init__(scheduler, sampling, use_cache, residual)
        self.model = model
        self.reps = 2 if sampling.guidance_scale != 1.0 else 1
        self.compile = compile
        self.denoise = (
            compiled_method(model, "denoise_next", compile_backend)
            if compile
            else model.denoise_next
        )

    def _fresh_cache(self, x: Tensor, mask: Tensor):
        cache = self.model.new_cache()
        mask = prefill_mask(mask)
        mask = None if mask is None else mask.repeat(self.reps, 1)
        self.model.encode_clean(x.repeat(self.reps, 1, 1), mask, cache)
        return cache

    def start(self, x: Tensor, mask: Tensor) -> None:
        self.x, self.mask = x, mask
        if self.use_cache:
            self.cache = self._fresh_cache(x, mask)

    def next(self, generator=None) -> Tensor:
        cache = self.cache if self.use_cache else self._fresh_cache(self.x, self.mask)
        B = self.x.shape[0]

        plan: list = [None, None]  # (drop tensor, its denoise plan): ddim_sample passes one

        def model_fn(x_t: Tensor, t: Tensor, drop: Tensor) -> Tensor:
            if plan[0] is not drop:  # once per concept: mask and RoPE angles of every step
                plan[:] = drop, self.model.denoise_plan(cache, drop, x_t.size(0), x_t.device)
            return self.denoise(x_t, t, cache, drop, plan=plan[1])

        return self._ddim(model_fn, B, self.model.config.sonar_dim, generator, self.x)

    def append(self, y: Tensor) -> None:
        self._grow(y)
        if self.use_cache:
            self.model.encode_clean(y[:, None].repeat(self.reps, 1, 1), None, self.cache)
