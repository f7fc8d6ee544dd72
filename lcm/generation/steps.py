"""Per-family "next concept" steps for the shared generator.

A step owns the incremental state of one model family over a batch of left-padded documents:

    step.start(x, mask)   prefill with the prompt concepts (B, T, D), normalized space
    step.next(generator)  -> (B, D) the next concept of every document
    step.append(y)        make y (B, D) part of the context

Prompts are *left*-padded so that every document's next concept sits at the same index; RoPE only
sees relative positions, so the padding shifts nothing.

``use_cache=False`` recomputes the whole context for every concept, and (Two-Tower)
``reuse_context=False`` recomputes the denoiser's cross-attention keys/values at every denoising
step; both exist to test and benchmark the fast paths against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion import DDIMScheduler, ddim_sample
from lcm.models import BaseLCM, OneTowerLCM, TwoTowerLCM
from lcm.objectives.diffusion import SamplingConfig


class NextConceptStep:
    """Base class; see the module docstring for the protocol."""

    def __init__(self, use_cache: bool = True) -> None:
        self.use_cache = use_cache
        self.x: Tensor | None = None  # (B, T, D) full context, kept for the uncached path
        self.mask: Tensor | None = None  # (B, T)

    def _grow(self, y: Tensor) -> None:
        assert self.x is not None and self.mask is not None
        self.x = torch.cat((self.x, y[:, None]), dim=1)  # (B, T+1, D)
        self.mask = torch.cat((self.mask, self.mask.new_ones(y.shape[0], 1)), dim=1)

    def start(self, x: Tensor, mask: Tensor) -> None:
        raise NotImplementedError

    def next(self, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def append(self, y: Tensor) -> None:
        raise NotImplementedError

    def _ddim(self, model_fn, batch: int, dim: int, generator, like: Tensor) -> Tensor:
        """One concept per document, (B, D), sampled with this step's scheduler and settings."""
        s: SamplingConfig = self.sampling
        y = ddim_sample(
            model_fn,
            (batch, 1, dim),
            self.scheduler,
            s.num_inference_steps,
            guidance_scale=s.guidance_scale,
            guidance_rescale=s.guidance_rescale,
            init_noise_scale=s.init_noise_scale,
            generator=generator,
            device=like.device,
            dtype=like.dtype,
        )
        return y[:, 0]  # (B, D)


class BaseLCMStep(NextConceptStep):
    """Base-LCM: the regression output at the last position is the next concept."""

    def __init__(self, model: BaseLCM, use_cache: bool = True) -> None:
        super().__init__(use_cache)
        self.model = model

    def start(self, x: Tensor, mask: Tensor) -> None:
        self.x, self.mask = x, mask
        if self.use_cache:
            self.cache = self.model.new_cache()
            self.last = self.model(x, mask, self.cache)[:, -1]  # (B, D)

    def next(self, generator=None) -> Tensor:
        if self.use_cache:
            return self.last
        return self.model(self.x, self.mask)[:, -1]  # (B, D)

    def append(self, y: Tensor) -> None:
        self._grow(y)
        if self.use_cache:
            self.last = self.model(y[:, None], None, self.cache)[:, 0]  # (B, D)


class TwoTowerStep(NextConceptStep):
    """Two-Tower: contextualize once per concept (KV-cached), then DDIM on the denoiser with the
    context's cross-attention keys/values computed once and reused by every denoising step."""

    def __init__(
        self,
        model: TwoTowerLCM,
        scheduler: DDIMScheduler,
        sampling: SamplingConfig,
        use_cache: bool = True,
        reuse_context: bool = True,
    ) -> None:
        super().__init__(use_cache)
        self.model, self.scheduler, self.sampling = model, scheduler, sampling
        self.reuse_context = reuse_context

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
    ) -> None:
        super().__init__(use_cache)
        self.model, self.scheduler, self.sampling = model, scheduler, sampling
        self.reps = 2 if sampling.guidance_scale != 1.0 else 1

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

        def model_fn(x_t: Tensor, t: Tensor, drop: Tensor) -> Tensor:
            return self.model.denoise_next(x_t, t, cache, drop)

        return self._ddim(model_fn, B, self.model.config.sonar_dim, generator, self.x)

    def append(self, y: Tensor) -> None:
        self._grow(y)
        if self.use_cache:
            self.model.encode_clean(y[:, None].repeat(self.reps, 1, 1), None, self.cache)


def make_step(
    model: torch.nn.Module,
    scheduler: DDIMScheduler | None = None,
    sampling: SamplingConfig | None = None,
    use_cache: bool = True,
    reuse_context: bool = True,
) -> NextConceptStep:
    """The step for ``model``'s family."""
    sampling = sampling or SamplingConfig()
    if isinstance(model, BaseLCM):
        return BaseLCMStep(model, use_cache)
    scheduler = scheduler if scheduler is not None else DDIMScheduler()
    if isinstance(model, TwoTowerLCM):
        return TwoTowerStep(model, scheduler, sampling, use_cache, reuse_context)
    if isinstance(model, OneTowerLCM):
        return OneTowerStep(model, scheduler, sampling, use_cache)
    raise TypeError(f"no generation step for {type(model).__name__}")
