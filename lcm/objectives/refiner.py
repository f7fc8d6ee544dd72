"""Recurrent-depth refinement objective (ours, after Geiping et al. 2025) for
:class:`~lcm.models.refiner.RecurrentRefinerLCM`.

Training, one draw of r per step (Geiping et al. 2025, section 3.3):

    tau ~ N(log(mean) - sigma^2 / 2, sigma)     so that E[exp(tau)] = mean
    r   ~ Poisson(exp(tau)),  r <- max(r, 1)     heavy-tailed: mostly near the mean, some long
    s_0 -> s_{r-k}      first r - k iterations under no_grad (no activations kept)
    s_{r-k} detached -> s_r   last k iterations with gradients (truncated backprop)
    loss = MSE(readout(s_r), next concept)       position t predicts concept t+1

Memory is that of k iterations whatever r is. The injection and the cross-attention K/V are
computed once with gradients and reused by every iteration, so the prenet and the
contextualizer still get gradients through the last k iterations.

Inference, per concept (ours): iterate until the prediction stops moving,

    1 - cos(y_i, y_{i-1}) < threshold   for `patience` consecutive iterations,

or until `max_iterations`. The exit step is reported per concept: unsolved cases never settle and
run to the cap, which the CPU pilot found a useful "did not converge" signal.

With ``residual`` (:data:`~lcm.objectives.base.Residual`: ``"last"`` or ``"context_mean"``) the
prediction of concept t+1 is ``base_t + readout(s_r)``, in the loss, teacher-forced prediction,
``predict_next`` and the cached generation step alike, as for Base-LCM
(:func:`~lcm.objectives.base.residual_base`). The adaptive exit then watches that prediction (base
plus readout; the base is fixed while the core iterates). A prediction-time ``residual_scale``
s (:func:`~lcm.objectives.base.scale_residual`) gives ``base + s * readout`` after the exit, so it
changes no exit step.

``contrastive_weight`` > 0 adds that many times an InfoNCE term to the MSE, on the prediction the
MSE regresses (``readout(s_r)``, plus the base with a residual), with ``temperature`` and
``contrastive_queue`` as for Base-LCM (:class:`~lcm.objectives.mse.ContrastiveTerm`). Only the
last k iterations get its gradients, as for the MSE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lcm.models.refiner import CrossKV, RecurrentRefinerLCM, RefinerTrajectory
from lcm.objectives.base import (
    Batch,
    ObjectiveOutput,
    Residual,
    SampledObjective,
    last_valid,
    masked_mse,
    residual_base,
    scale_residual,
    shift_right,
    target_weight,
    with_overrides,
)
from lcm.objectives.mse import ContrastiveTerm
from lcm.objectives.step import NextConceptStep, StepOptions, prefill_mask

INIT_MODES = ("random", "embed")


@dataclass
class RefinerOutput(ObjectiveOutput):
    """:class:`ObjectiveOutput` plus the iteration count r drawn for this step (for logging)."""

    num_iterations: int = 0


def sample_num_iterations(
    mean: float,
    sigma: float = 0.5,
    generator: torch.Generator | None = None,
    size: tuple[int, ...] = (),
) -> Tensor:
    """Log-normal Poisson draws of the iteration count (Geiping et al. 2025, eq. 2).

    tau ~ N(log(mean) - sigma^2/2, sigma), r ~ Poisson(exp(tau)), clamped to >= 1. The -sigma^2/2
    makes E[exp(tau)] = mean, hence E[r] = mean before the clamp (which adds P(r = 0), e.g.
    0.002 for mean 8, sigma 0.5).

    Returns:
        int64 tensor of shape `size`, on the generator's device (CPU without a generator).
    """
    if mean <= 0 or sigma < 0:
        raise ValueError(f"need mean > 0 and sigma >= 0, got mean={mean}, sigma={sigma}")
    device = generator.device if generator is not None else None
    z = torch.randn(size, generator=generator, device=device, dtype=torch.float64)
    rate = torch.exp(math.log(mean) - sigma**2 / 2 + sigma * z)  # (size) log-normal, mean `mean`
    r = torch.poisson(rate, generator=generator)
    return r.clamp(min=1).long()


def movement(y: Tensor, y_prev: Tensor) -> Tensor:
    """1 - cos(y, y_prev) over the last dim: (..., D) -> (...), computed in fp32."""
    return 1.0 - F.cosine_similarity(y.float(), y_prev.float(), dim=-1, eps=1e-8)


@dataclass(frozen=True)
class ExitRule:
    """Adaptive exit: stop when the prediction has moved less than `exit_threshold` (1 - cos)
    for `exit_patience` consecutive iterations, else at `max_iterations`.

    The earliest possible exit is step exit_patience + 1 (the first movement is measured at step 2).

    Attributes:
        exit_threshold: tau, bound on 1 - cos(y_i, y_{i-1}) (ours: 1e-3, about 2.6 degrees).
        exit_patience: m, consecutive iterations under the threshold.
        max_iterations: r_max, the cap.
    """

    exit_threshold: float = 1e-3
    exit_patience: int = 2
    max_iterations: int = 64

    def __post_init__(self) -> None:
        if self.exit_patience < 1 or self.max_iterations < 1 or self.exit_threshold < 0:
            raise ValueError(f"invalid exit rule {self}")

    def update(self, hits: Tensor, y: Tensor, y_prev: Tensor) -> Tensor:
        """Consecutive-hit counter after one more iterate: +1 where it moved less than the
        threshold, reset to 0 elsewhere. hits (...) long; y, y_prev (..., D)."""
        settled = movement(y, y_prev) < self.exit_threshold  # (...)
        return torch.where(settled, hits + 1, torch.zeros_like(hits))

    def exit_steps(self, preds: Tensor) -> Tensor:
        """Exit step (1-based) of every trajectory in preds (n, ..., D): the first i with
        `patience` consecutive hits, else min(n, max_iterations). Returns (...) long."""
        n = min(preds.shape[0], self.max_iterations)
        steps = torch.full(preds.shape[1:-1], n, dtype=torch.long, device=preds.device)
        done = torch.zeros(preds.shape[1:-1], dtype=torch.bool, device=preds.device)
        hits = torch.zeros_like(steps)
        for i in range(1, n):  # iterate i + 1 compared with iterate i
            hits = self.update(hits, preds[i], preds[i - 1])
            newly = ~done & (hits >= self.exit_patience)
            steps = torch.where(newly, i + 1, steps)
            done |= newly
        return steps


class RefinerObjective(ContrastiveTerm, SampledObjective, network=RecurrentRefinerLCM):
    """Next-concept MSE with a random iteration count, truncated backprop and adaptive exit.

    Args:
        model: A :class:`~lcm.models.refiner.RecurrentRefinerLCM`.
        mean_iterations: Mean of the training iteration count r (DESIGN.md: about 8-32).
        sigma: Std of the log-normal rate of r (Geiping et al.: 0.5).
        backprop_depth: k, the trailing iterations that get gradients (DESIGN.md: about 4-8).
        max_train_iterations: Optional cap on the drawn r (bounds the cost of the heavy tail).
        init: Initial state: "random" (truncated normal, from the generator) or "embed" (warm
            start from the PreNet embedding of the current concept, i.e. the one before the
            predicted concept).
        exit_rule: Default inference exit rule; every predict method can override its fields.
        residual: Add this base from the context to the readout (``"none"``, ``"last"`` or
            ``"context_mean"``; :func:`~lcm.objectives.base.residual_base`).
        temperature: The temperature of the InfoNCE term.
        contrastive_weight: Add this weight times the InfoNCE term to the MSE (default 0: the
            MSE alone; :class:`~lcm.objectives.mse.ContrastiveTerm`).
        contrastive_queue: The InfoNCE negatives also include up to this many targets of the
            previous training batches (default 0: the batch's own targets only).
    """

    predicts_first_concept = False
    residuals = ("none", "last", "context_mean")  # no separator: no source_* base

    def __init__(
        self,
        model: RecurrentRefinerLCM,
        mean_iterations: float = 8.0,
        sigma: float = 0.5,
        backprop_depth: int = 4,
        max_train_iterations: int | None = None,
        init: str = "random",
        exit_rule: ExitRule | None = None,
        residual: Residual = "none",
        temperature: float = 0.05,
        contrastive_weight: float = 0.0,
        contrastive_queue: int = 0,
    ) -> None:
        super().__init__(model, residual)
        self.init_contrastive(temperature, contrastive_weight, contrastive_queue)
        if backprop_depth < 1:
            raise ValueError(f"backprop_depth must be >= 1, got {backprop_depth}")
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
        if max_train_iterations is not None and max_train_iterations < 1:
            raise ValueError(f"max_train_iterations must be >= 1, got {max_train_iterations}")
        self.mean_iterations = mean_iterations
        self.sigma = sigma
        self.backprop_depth = backprop_depth
        self.max_train_iterations = max_train_iterations
        self.init = init
        self.exit_rule = exit_rule if exit_rule is not None else ExitRule()

    # ---------------------------------------------------------------------------- helpers
    def sample_num_iterations(self, generator: torch.Generator | None = None) -> int:
        """One training draw of r (module docstring), capped by `max_train_iterations`."""
        r = int(sample_num_iterations(self.mean_iterations, self.sigma, generator).item())
        return min(r, self.max_train_iterations) if self.max_train_iterations else r

    def initial_state(self, inject: Tensor, generator: torch.Generator | None) -> Tensor:
        """s_0 for queries with injection `inject` (B, Tq, d), per `self.init`."""
        if self.init == "embed":
            return self.model.init_state(tuple(inject.shape[:-1]), warm=inject)
        return self.model.init_state(
            tuple(inject.shape[:-1]), generator, device=inject.device, dtype=inject.dtype
        )

    def exit_rule_with(
        self,
        exit_threshold: float | None = None,
        exit_patience: int | None = None,
        max_iterations: int | None = None,
    ) -> ExitRule:
        """The default exit rule with the given fields replaced (None keeps a field)."""
        return with_overrides(
            self.exit_rule,
            exit_threshold=exit_threshold,
            exit_patience=exit_patience,
            max_iterations=max_iterations,
        )

    # ---------------------------------------------------------------------------- training
    def loss(
        self,
        batch: Batch,
        generator: torch.Generator | None = None,
        num_iterations: int | None = None,
    ) -> RefinerOutput:
        """MSE of the next concept after r iterations, gradients through the last k only (plus
        ``contrastive_weight`` times the InfoNCE term of the same prediction).

        Args:
            batch: x (B, T, D), mask (B, T), optional loss_mask (B, T).
            generator: Draws r (unless given) and the random initial state.
            num_iterations: Fixed r instead of a draw (tests, curricula).
        """
        model = self.model
        x, mask = batch["x"], batch["mask"]  # (B, T, D), (B, T)
        T = x.shape[1]
        r = num_iterations if num_iterations is not None else self.sample_num_iterations(generator)
        if r < 1:
            raise ValueError(f"num_iterations must be >= 1, got {r}")
        k = min(self.backprop_depth, r)

        # The network reads the context noised with input_noise in training (drawn after r);
        # the base and the targets stay clean.
        context = self.network_input(batch, generator)  # (B, T, D)
        inject, ctx = model.contextualize(context, mask)  # (B, T, d) each, with gradients
        cross_kv = model.precompute_cross_kv(ctx)  # once, shared by all r iterations
        cmask = model.cross_mask(mask, T, T, x.device)  # (B, 1, T, T)
        state = self.initial_state(inject, generator)  # (B, T, d)
        with torch.no_grad():
            state = model.iterate(state, inject, cross_kv, r - k, cmask)
        state = model.iterate(state.detach() if r > k else state, inject, cross_kv, k, cmask)
        y = model.readout(state)  # (B, T, D), y[:, t] guesses x[:, t+1]
        base = residual_base(x, mask, self.residual)
        pred = shift_right(y if base is None else y + base)  # pred[:, i] guesses x[:, i]

        weight = target_weight(batch).clone()  # (B, T)
        weight[:, 0] = False  # nothing predicts the first concept
        value = self.add_contrastive(
            masked_mse(pred, x, weight), pred, x, weight, self.contrastive_negatives()
        )
        self.push_targets(x, weight)
        return RefinerOutput(value, pred, x, weight, num_iterations=r)

    # ---------------------------------------------------------------------------- inference
    @torch.no_grad()
    def refine(
        self,
        inject: Tensor,
        cross_kv: CrossKV,
        cross_mask: Tensor | None,
        generator: torch.Generator | None = None,
        *,
        state: Tensor | None = None,
        num_iterations: int | None = None,
        rule: ExitRule | None = None,
        return_state: bool = False,
        base: Tensor | None = None,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Refine queries with a fixed r or the adaptive exit rule.

        Args:
            inject: (B, Tq, d) PreNet embeddings of the query positions.
            cross_kv: from ``model.precompute_cross_kv`` (B, H, S, hd) per core layer.
            cross_mask: bool (B|1, 1, Tq, S) or None.
            generator: Random initial state (``init="random"``).
            state: Explicit initial state (B, Tq, d), e.g. the previous concept's final one.
            num_iterations: Fixed r (no early exit); None = adaptive with ``rule``.
            rule: Exit rule (default ``self.exit_rule``).
            return_state: Also return each query's state at its exit (B, Tq, d), e.g. to
                warm-start the next concept from it.
            base: (B, Tq, D) residual base added to every readout (None: none); the exit rule
                watches the sum.

        Returns:
            predictions (B, Tq, D) and exit steps (B, Tq) long (and the exit states).
        """
        model = self.model
        if state is None:
            state = self.initial_state(inject, generator)
        B, Tq = inject.shape[:2]
        if num_iterations is not None:
            if num_iterations < 1:
                raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
            state = model.iterate(state, inject, cross_kv, num_iterations, cross_mask)
            steps = torch.full((B, Tq), num_iterations, dtype=torch.long, device=inject.device)
            y = model.readout(state) if base is None else model.readout(state) + base
            return (y, steps, state) if return_state else (y, steps)

        rule = rule or self.exit_rule
        out: Tensor | None = None
        final = torch.zeros_like(state)  # (B, Tq, d) state of every query at its exit
        steps = torch.full((B, Tq), rule.max_iterations, dtype=torch.long, device=inject.device)
        done = torch.zeros(B, Tq, dtype=torch.bool, device=inject.device)
        rows = torch.arange(B, device=inject.device)  # batch rows still iterating
        hits = torch.zeros(B, Tq, dtype=torch.long, device=inject.device)
        y_prev: Tensor | None = None
        for i in range(1, rule.max_iterations + 1):
            state = model.step(state, inject, cross_kv, cross_mask)  # (b, Tq, d)
            y = model.readout(state)  # (b, Tq, D)
            if base is not None:
                y = y + base  # (b, Tq, D), the base of the rows still iterating
            if out is None:
                out = y.new_zeros(B, Tq, y.shape[-1])
            if y_prev is not None:
                hits = rule.update(hits, y, y_prev)  # (b, Tq)
            stop = (
                hits >= rule.exit_patience
                if i < rule.max_iterations
                else torch.ones_like(done[rows])
            )
            newly = stop & ~done[rows]  # (b, Tq)
            r_idx, t_idx = newly.nonzero(as_tuple=True)
            out[rows[r_idx], t_idx] = y[r_idx, t_idx]
            final[rows[r_idx], t_idx] = state[r_idx, t_idx]
            steps[rows[r_idx], t_idx] = i
            done[rows[r_idx], t_idx] = True
            # Drop rows whose every query has exited: later iterations only cost the rest.
            keep = ~done[rows].all(dim=1)  # (b,)
            if not keep.any():
                break
            if not keep.all():
                rows, state, inject, hits, y = (
                    rows[keep],
                    state[keep],
                    inject[keep],
                    hits[keep],
                    y[keep],
                )
                if base is not None:
                    base = base[keep]
                cross_kv = [(k[keep], v[keep]) for k, v in cross_kv]
                if cross_mask is not None and cross_mask.shape[0] > 1:
                    cross_mask = cross_mask[keep]
            y_prev = y
        assert out is not None
        return (out, steps, final) if return_state else (out, steps)

    def options(
        self,
        *,
        num_iterations: int | None = None,
        exit_threshold: float | None = None,
        exit_patience: int | None = None,
        max_iterations: int | None = None,
    ) -> tuple[int | None, ExitRule]:
        """A fixed r (``num_iterations``, no early exit) or None = adaptive, and the exit rule:
        the default one with the given fields replaced (:meth:`exit_rule_with`)."""
        return num_iterations, self.exit_rule_with(exit_threshold, exit_patience, max_iterations)

    def _refine_context(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, CrossKV]:
        """PreNet embeddings (B, T, d) and the core's cross-attention K/V of the context."""
        inject, ctx = self.model.contextualize(x, mask)  # (B, T, d) each
        return inject, self.model.precompute_cross_kv(ctx)

    def sample_all(
        self, batch: Batch, generator: torch.Generator | None, options: tuple
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced predictions (B, T, D) aligned to targets and their exit steps (B, T)
        (0 at position 0, which nothing predicts). Every position exits on its own."""
        num_iterations, rule = options
        x, mask = batch["x"], batch["mask"]
        T = x.shape[1]
        inject, cross_kv = self._refine_context(x, mask)
        cmask = self.model.cross_mask(mask, T, T, x.device)
        base = residual_base(x, mask, self.residual)  # (B, T, D) or None
        y, steps = self.refine(
            inject, cross_kv, cmask, generator, num_iterations=num_iterations, rule=rule, base=base
        )
        y = scale_residual(y, base, self.residual_scale)
        return shift_right(y), shift_right(steps)

    def sample_next(
        self, x: Tensor, mask: Tensor | None, generator: torch.Generator | None, options: tuple
    ) -> tuple[Tensor, Tensor]:
        """The concept after each right-padded sequence x (B, T, D): (B, D), and the exit step
        of each sequence (B,) long. Only the last valid position is refined."""
        num_iterations, rule = options
        inject, cross_kv = self._refine_context(x, mask)
        query = last_valid(inject, mask)[:, None]  # (B, 1, d)
        cmask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, T): all valid keys
        base = self.next_base(x, mask)  # (B, D) or None
        y, steps = self.refine(
            query,
            cross_kv,
            cmask,
            generator,
            num_iterations=num_iterations,
            rule=rule,
            base=None if base is None else base[:, None],
        )
        return scale_residual(y[:, 0], base, self.residual_scale), steps[:, 0]

    def generation_step(self, options: StepOptions) -> RefinerStep:
        """:class:`RefinerStep` (reads ``exit_rule``, ``exit_overrides``, ``num_iterations``,
        ``warm_start``, ``use_cache``)."""
        o = options
        rule = o.exit_rule or self.exit_rule_with(**(o.exit_overrides or {}))
        return RefinerStep(self, rule, o.num_iterations, o.warm_start, o.use_cache)

    # (predictions, exit steps), with the keywords of :meth:`options`
    predict_all_with_exit = SampledObjective.predict_all_with_info
    predict_next_with_exit = SampledObjective.predict_next_with_info

    @torch.no_grad()
    def trajectory(
        self,
        x: Tensor,
        mask: Tensor | None,
        num_iterations: int,
        generator: torch.Generator | None = None,
    ) -> RefinerTrajectory:
        """Every iterate of every position (not aligned: position t is about concept t+1), with
        this objective's initial state. For accuracy-against-r curves and PCA pictures. The
        readouts are the network's alone: a residual base is not added."""
        inject = self.model.prenet(x)  # (B, T, d)
        state = self.initial_state(inject, generator)
        return self.model(x, mask, num_iterations, state=state, return_trajectory=True)[1]


class RefinerStep(NextConceptStep):
    """The refiner's cached generation step: contextualize once per concept (KV-cached),
    project the core's cross-attention keys/values of the new concept once (appended to the
    earlier ones), then iterate the core on the next concept's state until it stops moving (or
    a fixed r).

    ``warm_start`` starts each concept's state from the previous concept's exit state instead of
    the objective's initial state (random or embedding); the first concept always uses the
    latter. ``last_info["exit_step"]`` (B,) holds the iterations each document's concept took.
    With the objective's ``residual``, the base of the step's context is added to every readout
    (:meth:`~lcm.objectives.step.NextConceptStep._base`).
    """

    def __init__(
        self,
        objective: RefinerObjective,
        rule: ExitRule | None = None,
        num_iterations: int | None = None,
        warm_start: bool = False,
        use_cache: bool = True,
    ) -> None:
        super().__init__(use_cache, objective.residual)
        self.objective, self.model = objective, objective.model
        self.rule, self.num_iterations = rule, num_iterations
        self.warm_start = warm_start
        self.state: Tensor | None = None  # (B, 1, d) exit state of the last concept

    def start(self, x: Tensor, mask: Tensor) -> None:
        self.x, self.mask, self.state = x, mask, None
        if self.use_cache:
            self.cache = self.model.new_cache()
            inject, ctx = self.model.contextualize(x, prefill_mask(mask), self.cache)
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
        base = self._base()  # (B, D) or None
        y, steps, self.state = self.objective.refine(
            self.query,
            cross_kv,
            cmask,
            generator,
            state=state,
            num_iterations=self.num_iterations,
            rule=self.rule,
            return_state=True,
            base=None if base is None else base[:, None],
        )
        self.last_info = {"exit_step": steps[:, 0]}
        return scale_residual(y[:, 0], base, self.residual_scale)  # (B, D)

    def append(self, y: Tensor) -> None:
        self._grow(y)
        if self.use_cache:
            inject, ctx = self.model.contextualize(y[:, None], None, self.cache)  # (B, 1, d)
            self.query = inject
            self.cross_kv = self.model.precompute_cross_kv(ctx, past=self.cross_kv)
