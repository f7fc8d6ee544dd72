"""The protocol of a family's cached generation step, and the options every step may read.

A family's objective builds its own step (:meth:`lcm.objectives.Objective.generation_step`,
written beside the objective's ``predict_next``); :mod:`lcm.generation` only dispatches to it
and runs the one generation loop. A step owns the incremental state of one family over a batch
of left-padded documents:

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
each next concept in its step as its objective does in training: the last context concept, the
mean of the valid ones (left padding excluded) or a source base (the objective sets the step's
``separator``), from the step's whole context ``x``, which every step keeps, cached or not.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from lcm.objectives.base import Residual, check_residual, residual_base

if TYPE_CHECKING:
    from diffusion import DDIMScheduler
    from lcm.objectives.diffusion import SamplingConfig
    from lcm.objectives.refiner import ExitRule


def prefill_mask(mask: Tensor | None) -> Tensor | None:
    """The padding mask to prefill a KV cache with: None when every prompt concept is valid,
    so the cache stores no key mask and every later cached step runs without one. One host
    sync per prompt, here in the step, outside any compiled graph (the transformer itself never
    checks: ``bool(mask.all())`` in a compiled forward breaks the graph)."""
    return None if mask is None or bool(mask.all()) else mask


class NextConceptStep:
    """Base class; see the module docstring for the protocol."""

    def __init__(self, use_cache: bool = True, residual: Residual = "none") -> None:
        self.use_cache = use_cache
        self.residual: Residual = check_residual(residual)
        #: (D,) the separator concept, for ``residual="source_mean"`` or ``"source_lead"`` (set by
        #: the objective).
        self.separator: Tensor | None = None
        #: Factor on the correction to the residual base (:func:`~lcm.objectives.base.
        #: scale_residual`; set by :func:`lcm.generation.make_step` from the objective).
        self.residual_scale = 1.0
        self.x: Tensor | None = None  # (B, T, D) full context, kept for the uncached path
        self.mask: Tensor | None = None  # (B, T)
        self.last_info: dict[str, Tensor] = {}  # per-document facts about the last concept

    def _grow(self, y: Tensor) -> None:
        assert self.x is not None and self.mask is not None
        self.x = torch.cat((self.x, y[:, None]), dim=1)  # (B, T+1, D)
        self.mask = torch.cat((self.mask, self.mask.new_ones(y.shape[0], 1)), dim=1)

    def _base(self) -> Tensor | None:
        """(B, D): the residual base of the next concept (left padding: the last slot is real),
        or None without a residual."""
        base = residual_base(self.x, self.mask, self.residual, self.separator)
        return None if base is None else base[:, -1]

    def start(self, x: Tensor, mask: Tensor) -> None:
        raise NotImplementedError

    def next(self, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def append(self, y: Tensor) -> None:
        raise NotImplementedError


@dataclass
class StepOptions:
    """Every generation option a family's step may read (each family reads its own).

    Attributes:
        scheduler: DDIM scheduler of the diffusion families (default: the objective's).
        sampling: Diffusion sampling settings, whole (default: the objective's).
        use_cache: KV-cache the context across generated concepts.
        reuse_context: Two-Tower: project cross-attention keys/values once per concept.
        fast: Two-Tower: denoise from the precomputed timestep/AdaLN table and fused diagonal
            self-attention (:class:`~lcm.objectives.diffusion.TwoTowerStep`); False runs the
            general denoiser.
        fast_options: Two-Tower: options of ``TwoTowerLCM.denoiser_plan`` (``transposed``,
            ``diagonal``) and ``fold_cross`` of ``TwoTowerLCM.prepare_cross`` (None: by size).
        compile: run the family's hot step through ``torch.compile`` (compiled on first use,
            once per model: seconds to minutes; worth it for long generation runs): Two-Tower's
            fast denoiser, Base-LCM's forward (prefill and cached steps), One-Tower's
            denoising step. Other families ignore it.
        compile_backend: ``torch.compile`` backend of :func:`compiled_method` (None:
            :data:`lcm.generation.steps.COMPILE_BACKEND`, filled in by ``make_step``).
        sampling_overrides: Diffusion: fields of the default sampling settings to replace
            (None values keep the default).
        num_iterations: Refiner: a fixed number of iterations instead of the adaptive exit.
        exit_rule: Refiner: the adaptive exit rule, whole (default: the objective's).
        exit_overrides: Refiner: fields of the default exit rule to replace (``exit_threshold``,
            ``exit_patience``, ``max_iterations``; None keeps one).
        warm_start: Refiner: start each concept from the previous concept's exit state.
        residual_scale: Families with a residual: factor on the correction to the base
            (:attr:`~lcm.objectives.Objective.residual_scale`; default: the objective's).
        temperature: Quant-LCM: code sampling temperature (default: the objective's).
        top_p: Quant-LCM: nucleus mass (default: the objective's).
        decoding: Quant-LCM: ``"sample"`` (draw codes) or ``"expected"`` (probability-weighted
            mean code vectors per level; :class:`~lcm.objectives.quant.QuantObjective`;
            default: the objective's).
    """

    scheduler: DDIMScheduler | None = None
    sampling: SamplingConfig | None = None
    use_cache: bool = True
    reuse_context: bool = True
    fast: bool = True
    fast_options: dict[str, Any] | None = None
    compile: bool = False
    compile_backend: str | None = None
    sampling_overrides: dict[str, Any] | None = None
    num_iterations: int | None = None
    exit_rule: ExitRule | None = None
    exit_overrides: dict[str, Any] | None = None
    warm_start: bool = False
    temperature: float | None = None
    top_p: float | None = None
    decoding: Literal["sample", "expected"] | None = None
    residual_scale: float | None = None


#: model -> its compiled functions (:func:`compiled_method`, Two-Tower's compiled denoiser); weak,
#: so a model that is gone takes its compiled graphs with it.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_method(
    model: torch.nn.Module, name: str, backend: str | None = None
) -> Callable[..., Any]:
    """``getattr(model, name)`` through ``torch.compile`` (dynamic shapes: the cache grows by
    one concept per generated concept; the KV cache's Python bookkeeping runs between the
    compiled graphs), compiled once per model, method and backend (None: ``"inductor"``) and
    shared by every step of it. It computes the same values as the eager method (tested to
    1e-5)."""
    backend = backend or "inductor"
    per_model = _COMPILED.setdefault(model, {})
    key = (name, backend)
    fn = per_model.get(key)
    if fn is None:  # the unbound function: the cache must not keep the model alive
        fn = per_model[key] = torch.compile(
            getattr(type(model), name), dynamic=True, backend=backend
        )
    return functools.partial(fn, model)
