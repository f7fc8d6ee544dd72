"""Per-family "next concept" steps for the shared generator.

A step owns the incremental state of one model family over a batch of left-padded documents:

    step.start(x, mask)   prefill with the prompt concepts (B, T, D), normalized space
    step.next(generator)  -> (B, D) the next concept of every document
    step.append(y)        make y (B, D) part of the context

Prompts are *left*-padded so that every document's next concept sits at the same index; RoPE only
sees relative positions, so the padding shifts nothing.

After ``next``, ``step.last_info`` holds per-document facts about that concept, (B,) tensors by
name: the refiner's ``exit_step`` (iterations it took), Quant-LCM's ``codes`` (B, K).

``use_cache=False`` recomputes the whole context for every concept, and (Two-Tower)
``reuse_context=False`` recomputes the denoiser's cross-attention keys/values at every denoising
step; both exist to test and benchmark the fast paths against.

A family trained with a ``residual`` (:data:`lcm.objectives.base.Residual`) adds the same base to
each next concept here as its objective does in training: the last context concept or the mean of
the valid ones (left padding excluded), from the step's whole context ``x``, which every step
keeps, cached or not.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from diffusion import DDIMScheduler
from lcm.models import BaseLCM, OneTowerLCM, QuantLCM, RecurrentRefinerLCM, TwoTowerLCM
from lcm.objectives import (
    ExitRule,
    MSEObjective,
    Objective,
    OneTowerDiffusion,
    QuantObjective,
    RefinerObjective,
    TwoTowerDiffusion,
)
from lcm.objectives.base import Residual, check_residual, residual_base
from lcm.objectives.diffusion import SamplingConfig, sample_with, solver_scheduler, with_base


class NextConceptStep:
    """Base class; see the module docstring for the protocol."""

    def __init__(self, use_cache: bool = True, residual: Residual = "none") -> None:
        self.use_cache = use_cache
        self.residual: Residual = check_residual(residual)
        self.x: Tensor | None = None  # (B, T, D) full context, kept for the uncached path
        self.mask: Tensor | None = None  # (B, T)
        self.last_info: dict[str, Tensor] = {}  # per-document facts about the last concept
        self._solver: tuple[str, DDIMScheduler] | None = None  # diffusion: (name, scheduler)

    def _grow(self, y: Tensor) -> None:
        assert self.x is not None and self.mask is not None
        self.x = torch.cat((self.x, y[:, None]), dim=1)  # (B, T+1, D)
        self.mask = torch.cat((self.mask, self.mask.new_ones(y.shape[0], 1)), dim=1)

    def _base(self) -> Tensor | None:
        """(B, D): the residual base of the next concept (left padding: the last slot is real),
        or None without a residual."""
        base = residual_base(self.x, self.mask, self.residual)
        return None if base is None else base[:, -1]

    def start(self, x: Tensor, mask: Tensor) -> None:
        raise NotImplementedError

    def next(self, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def append(self, y: Tensor) -> None:
        raise NotImplementedError

    def _ddim(self, model_fn, batch: int, dim: int, generator, like: Tensor) -> Tensor:
        """One concept per document, (B, D), sampled with this step's scheduler and settings."""
        s: SamplingConfig = self.sampling
        base = self._base()
        model_fn = with_base(model_fn, None if base is None else base[:, None])  # (B, 1, D)
        if self._solver is None or self._solver[0] != s.solver:  # built once per step object
            self._solver = (s.solver, solver_scheduler(self.scheduler, s.solver))
        y = sample_with(model_fn, (batch, 1, dim), self._solver[1], s, generator, like)
        return y[:, 0]  # (B, D)


class BaseLCMStep(NextConceptStep):
    """Base-LCM: the regression output at the last position (plus the residual base) is the
    next concept."""

    def __init__(
        self,
        model: BaseLCM,
        use_cache: bool = True,
        residual: Residual = "none",
        compile: bool = False,
    ) -> None:
        super().__init__(use_cache, residual)
        self.model = model
        self.compile = compile
        self.forward = compiled_method(model, "forward") if compile else model.forward

    def start(self, x: Tensor, mask: Tensor) -> None:
        self.x, self.mask = x, mask
        if self.use_cache:
            self.cache = self.model.new_cache()
            self.last = self.forward(x, mask, self.cache)[:, -1]  # (B, D)

    def next(self, generator=None) -> Tensor:
        y = self.last if self.use_cache else self.forward(self.x, self.mask)[:, -1]  # (B, D)
        base = self._base()
        return y if base is None else y + base

    def append(self, y: Tensor) -> None:
        self._grow(y)
        if self.use_cache:
            self.last = self.forward(y[:, None], None, self.cache)[:, 0]  # (B, D)


class TwoTowerStep(NextConceptStep):
    """Two-Tower: contextualize once per concept (KV-cached), then DDIM on the denoiser with the
    context's cross-attention keys/values computed once and reused by every denoising step.

    ``fast=True`` (default) also runs the denoiser from its :class:`~lcm.models.DenoiserPlan`:
    the timestep embedding and every layer's AdaLN modulation come from a table computed once
    per model and schedule (reused across concepts, documents and calls), the diagonal
    self-attention is one fused W_o W_v map, and the cross-attention mask is built once per
    concept. Outputs equal the ``fast=False`` path to float rounding (tested to 1e-5).
    ``fast_options`` go to :meth:`~lcm.models.TwoTowerLCM.denoiser_plan` (``transposed``,
    ``diagonal``), so a benchmark can measure each part's share.
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
        super().__init__(use_cache, residual)
        self.model, self.scheduler, self.sampling = model, scheduler, sampling
        self.reuse_context = reuse_context
        self.fast = fast and reuse_context and not model.training
        self.fast_options = fast_options or {}
        self.compile = compile and self.fast

    def start(self, x: Tensor, mask: Tensor) -> None:
        self.x, self.mask = x, mask
        if self.use_cache:
            self.cache = self.model.new_cache()
            self.ctx = self.model.contextualize(x, mask, self.cache)  # (B, T, d)

    def next(self, generator=None) -> Tensor:
        model, s = self.model, self.sampling
        ctx = self.ctx if self.use_cache else self.model.contextualize(self.x, self.mask)
        B = ctx.shape[0]
        guided = s.guidance_scale != 1.0
        reps = 2 if guided else 1
        shifted = model.shift_context(ctx, include_last=True)  # (B, T+1, d): slots for concept T
        mask = self.mask.repeat(reps, 1)  # (M, T)
        cross_kv = None
        if self.reuse_context:
            kv = model.precompute_cross_kv(shifted)  # once per concept
            cross_kv = [(k.repeat(reps, 1, 1, 1), v.repeat(reps, 1, 1, 1)) for k, v in kv]
        shifted_rep = shifted.repeat(reps, 1, 1)  # (M, T+1, d)

        if self.fast:
            plan = model.denoiser_plan(self.scheduler.num_train_timesteps, **self.fast_options)
            # ddim_sample's rows: [conditional] * B (+ [unconditional] * B under guidance).
            drop = torch.arange(reps * B, device=ctx.device) >= B  # (M,)
            cmask = model.cross_mask(reps * B, 1, shifted.size(1), mask, drop[:, None])

            if self.compile:
                denoise = compiled_denoiser(model, plan)

                def fast_fn(x_t: Tensor, t: Tensor, drop_context: Tensor) -> Tensor:
                    return denoise(x_t, t, cross_kv, cmask)

            else:

                def fast_fn(x_t: Tensor, t: Tensor, drop_context: Tensor) -> Tensor:
                    return model.denoise_planned(x_t, t, plan, cross_kv, cmask)

            return self._ddim(fast_fn, B, model.config.sonar_dim, generator, ctx)

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


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
COMPILE_BACKEND = "inductor"  # of compiled_method; tests use "aot_eager" (no C++ builds)


def compiled_denoiser(model: TwoTowerLCM, plan: Any):
    """``model.denoise_planned`` with ``plan`` fixed, through ``torch.compile`` (dynamic shapes:
    the context grows by one concept per generated concept), compiled once per model and plan and
    shared by their steps. It computes the same values as the eager one (tested to 1e-5)."""
    per_model = _COMPILED.setdefault(model, {})
    fn = per_model.get(id(plan))
    if fn is None or fn[0] is not plan:

        def denoise(x_t: Tensor, t: Tensor, cross_kv: Any, cmask: Tensor) -> Tensor:
            return model.denoise_planned(x_t, t, plan, cross_kv, cmask)

        fn = per_model[id(plan)] = (plan, torch.compile(denoise, dynamic=True))
    return fn[1]


def compiled_method(model: torch.nn.Module, name: str) -> Callable[..., Any]:
    """``getattr(model, name)`` through ``torch.compile`` (dynamic shapes: the cache grows by
    one concept per generated concept; the KV cache's Python bookkeeping runs between the
    compiled graphs), compiled once per model and method and shared by every step of it. It
    computes the same values as the eager method (tested to 1e-5)."""
    per_model = _COMPILED.setdefault(model, {})
    key = (name, COMPILE_BACKEND)
    fn = per_model.get(key)
    if fn is None:  # the unbound function: the cache must not keep the model alive
        fn = per_model[key] = torch.compile(
            getattr(type(model), name), dynamic=True, backend=COMPILE_BACKEND
        )
    return functools.partial(fn, model)


class OneTowerStep(NextConceptStep):
    """One-Tower: clean concepts are KV-cached; each denoising step queries the cache with the
    noisy next concept without storing it. With guidance the cache holds the batch twice (the
    conditional and unconditional halves share it), so both passes are one model call."""

    def __init__(
        self,
        model: OneTowerLCM,
        scheduler: DDIMScheduler,
        sampling: SamplingConfig,
        use_cache: bool = True,
        residual: Residual = "none",
        compile: bool = False,
    ) -> None:
        super().__init__(use_cache, residual)
        self.model, self.scheduler, self.sampling = model, scheduler, sampling
        self.reps = 2 if sampling.guidance_scale != 1.0 else 1
        self.compile = compile
        self.denoise = compiled_method(model, "denoise_next") if compile else model.denoise_next

    def _fresh_cache(self, x: Tensor, mask: Tensor):
        cache = self.model.new_cache()
        self.model.encode_clean(x.repeat(self.reps, 1, 1), mask.repeat(self.reps, 1), cache)
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


class RefinerStep(NextConceptStep):
    """Recurrent refiner: contextualize once per concept (KV-cached), project the core's
    cross-attention keys/values of the new concept once (appended to the earlier ones), then
    iterate the core on the next concept's state until it stops moving (or a fixed r).

    ``warm_start`` starts each concept's state from the previous concept's exit state instead of
    the objective's initial state (random or embedding); the first concept always uses the
    latter. ``last_info["exit_step"]`` (B,) holds the iterations each document's concept took.
    """

    def __init__(
        self,
        objective: RefinerObjective,
        rule: ExitRule | None = None,
        num_iterations: int | None = None,
        warm_start: bool = False,
        use_cache: bool = True,
    ) -> None:
        super().__init__(use_cache)
        self.objective, self.model = objective, objective.model
        self.rule, self.num_iterations = rule, num_iterations
        self.warm_start = warm_start
        self.state: Tensor | None = None  # (B, 1, d) exit state of the last concept

    def start(self, x: Tensor, mask: Tensor) -> None:
        self.x, self.mask, self.state = x, mask, None
        if self.use_cache:
            self.cache = self.model.new_cache()
            inject, ctx = self.model.contextualize(x, mask, self.cache)
            self.query = inject[:, -1:]  # (B, 1, d); left padding: the last slot is real
            self.cross_kv = self.model.precompute_cross_kv(ctx)

    def next(self, generator=None) -> Tensor:
        if not self.use_cache:
            inject, ctx = self.model.contextualize(self.x, self.mask)
            self.query = inject[:, -1:]  # (B, 1, d); left padding: the last slot is real
            self.cross_kv = self.model.precompute_cross_kv(ctx)
        cross_kv = self.cross_kv
        cmask = self.mask[:, None, None, :]  # (B, 1, 1, T): every real concept
        state = self.state if self.warm_start else None
        y, steps, self.state = self.objective.refine(
            self.query,
            cross_kv,
            cmask,
            generator,
            state=state,
            num_iterations=self.num_iterations,
            rule=self.rule,
            return_state=True,
        )
        self.last_info = {"exit_step": steps[:, 0]}
        return y[:, 0]  # (B, D)

    def append(self, y: Tensor) -> None:
        self._grow(y)
        if self.use_cache:
            inject, ctx = self.model.contextualize(y[:, None], None, self.cache)  # (B, 1, d)
            self.query = inject
            self.cross_kv = self.model.precompute_cross_kv(ctx, past=self.cross_kv)


class QuantStep(NextConceptStep):
    """Quant-LCM: contextualize once per concept (KV-cached), then sample the next concept's K
    codes coarse to fine and sum their code vectors. ``last_info["codes"]`` (B, K)."""

    def __init__(
        self,
        objective: QuantObjective,
        temperature: float | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
    ) -> None:
        super().__init__(use_cache)
        self.objective, self.model = objective, objective.model
        self.temperature, self.top_p = temperature, top_p

    def start(self, x: Tensor, mask: Tensor) -> None:
        self.x, self.mask = x, mask
        if self.use_cache:
            self.cache = self.model.new_cache()
            self.h = self.model.contextualize(x, mask, self.cache)[:, -1]  # (B, d)

    def next(self, generator=None) -> Tensor:
        h = self.h if self.use_cache else self.model.contextualize(self.x, self.mask)[:, -1]
        codes = self.objective.sample_codes(
            h, generator, temperature=self.temperature, top_p=self.top_p
        )  # (B, K)
        self.last_info = {"codes": codes}
        return self.model.rvq.decode(codes)  # (B, D)

    def append(self, y: Tensor) -> None:
        self._grow(y)
        if self.use_cache:
            self.h = self.model.contextualize(y[:, None], None, self.cache)[:, 0]


@dataclass
class StepOptions:
    """Every generation option a family's step may read (each family reads its own).

    Attributes:
        scheduler: DDIM scheduler of the diffusion families (default: the objective's).
        sampling: Diffusion sampling settings, whole (default: the objective's).
        use_cache: KV-cache the context across generated concepts.
        reuse_context: Two-Tower: project cross-attention keys/values once per concept.
        fast: Two-Tower: denoise from the precomputed timestep/AdaLN table and fused diagonal
            self-attention (:class:`TwoTowerStep`); False runs the general denoiser.
        fast_options: Two-Tower: options of ``TwoTowerLCM.denoiser_plan`` (``transposed``,
            ``diagonal``).
        compile: run the family's hot step through ``torch.compile`` (compiled on first use,
            once per model: seconds to minutes; worth it for long generation runs): Two-Tower's
            fast denoiser, Base-LCM's forward (prefill and cached steps), One-Tower's
            denoising step. Other families ignore it.
        sampling_overrides: Diffusion: fields of the default sampling settings to replace
            (None values keep the default).
        num_iterations: Refiner: a fixed number of iterations instead of the adaptive exit.
        exit_rule: Refiner: the adaptive exit rule, whole (default: the objective's).
        exit_overrides: Refiner: fields of the default exit rule to replace (``exit_threshold``,
            ``exit_patience``, ``max_iterations``; None keeps one).
        warm_start: Refiner: start each concept from the previous concept's exit state.
        temperature: Quant-LCM: code sampling temperature (default: the objective's).
        top_p: Quant-LCM: nucleus mass (default: the objective's).
    """

    scheduler: DDIMScheduler | None = None
    sampling: SamplingConfig | None = None
    use_cache: bool = True
    reuse_context: bool = True
    fast: bool = True
    fast_options: dict[str, Any] | None = None
    compile: bool = False
    sampling_overrides: dict[str, Any] | None = None
    num_iterations: int | None = None
    exit_rule: ExitRule | None = None
    exit_overrides: dict[str, Any] | None = None
    warm_start: bool = False
    temperature: float | None = None
    top_p: float | None = None


StepFactory = Callable[[Objective, StepOptions], NextConceptStep]
_STEPS: dict[type[Objective], StepFactory] = {}
_NETWORKS: dict[type[torch.nn.Module], type[Objective]] = {}


def register_step(
    objective_cls: type[Objective],
    factory: StepFactory,
    network_cls: type[torch.nn.Module] | None = None,
) -> None:
    """Plug a family into generation: ``factory(objective, options)`` builds the family's step.

    Args:
        objective_cls: The family's objective (subclasses inherit the registration).
        factory: Builds the step from an objective and the :class:`StepOptions`.
        network_cls: The family's network, so that a bare network can be given to
            :func:`make_step` (it is wrapped in ``objective_cls(network)``).
    """
    _STEPS[objective_cls] = factory
    if network_cls is not None:
        _NETWORKS[network_cls] = objective_cls


def _lookup(registry: dict[type, Any], cls: type) -> Any:
    for klass in cls.__mro__:  # the most specific registration wins
        if klass in registry:
            return registry[klass]
    return None


def make_step(model: torch.nn.Module, **options: Any) -> NextConceptStep:
    """The generation step of ``model``'s family; ``model`` is an objective (whose scheduler,
    sampling settings, exit rule and temperature are the defaults: the checkpoint's own, for a
    trained module's objective) or a bare network of a registered family.

    Args:
        model: :class:`~lcm.objectives.Objective` or network.
        **options: Fields of :class:`StepOptions`.
    """
    opts = StepOptions(**options)
    objective = model if isinstance(model, Objective) else None
    if objective is None:
        objective_cls = _lookup(_NETWORKS, type(model))
        if objective_cls is None:
            raise TypeError(f"no generation step for {type(model).__name__}")
        objective = objective_cls(model)
    factory = _lookup(_STEPS, type(objective))
    if factory is None:
        raise TypeError(
            f"no generation step for {type(objective).__name__}: register one with "
            "lcm.generation.register_step"
        )
    return factory(objective, opts)


def _diffusion_settings(objective: Objective, o: StepOptions) -> tuple[DDIMScheduler, Any]:
    sampling = o.sampling
    if sampling is None:
        keep = {k: v for k, v in (o.sampling_overrides or {}).items() if v is not None}
        sampling = replace(getattr(objective, "sampling", None) or SamplingConfig(), **keep)
    scheduler = o.scheduler or getattr(objective, "scheduler", None) or DDIMScheduler()
    return scheduler, sampling


def _two_tower_step(objective: Objective, o: StepOptions) -> NextConceptStep:
    scheduler, sampling = _diffusion_settings(objective, o)
    return TwoTowerStep(
        objective.model,
        scheduler,
        sampling,
        o.use_cache,
        o.reuse_context,
        o.fast,
        o.fast_options,
        o.compile,
        objective.residual,
    )


def _one_tower_step(objective: Objective, o: StepOptions) -> NextConceptStep:
    scheduler, sampling = _diffusion_settings(objective, o)
    return OneTowerStep(
        objective.model, scheduler, sampling, o.use_cache, objective.residual, o.compile
    )


def _refiner_step(objective: Objective, o: StepOptions) -> NextConceptStep:
    assert isinstance(objective, RefinerObjective)
    rule = o.exit_rule or objective.exit_rule_with(**(o.exit_overrides or {}))
    return RefinerStep(objective, rule, o.num_iterations, o.warm_start, o.use_cache)


register_step(
    MSEObjective,
    lambda obj, o: BaseLCMStep(obj.model, o.use_cache, obj.residual, o.compile),
    BaseLCM,
)
register_step(TwoTowerDiffusion, _two_tower_step, TwoTowerLCM)
register_step(OneTowerDiffusion, _one_tower_step, OneTowerLCM)
register_step(RefinerObjective, _refiner_step, RecurrentRefinerLCM)
register_step(
    QuantObjective, lambda obj, o: QuantStep(obj, o.temperature, o.top_p, o.use_cache), QuantLCM
)
