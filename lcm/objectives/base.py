"""What every training objective shares: the batch layout, masked losses and eval metrics.

An objective wraps one network (a pure ``nn.Module`` from :mod:`lcm.models`) and owns its loss and
its sampling. It knows nothing of Lightning; :mod:`lcm.train.module` wires it into a trainer.

Batch layout (a dict of tensors, built by :mod:`lcm.train.data`), all in *normalized* concept space:

    x          (B, T, D) float  concepts, right-padded (separator slots already filled in)
    mask       (B, T)    bool   True = a real concept (padding is False)
    loss_mask  (B, T)    bool   True = concept i is a prediction target (subset of ``mask``)

Every objective reports its predictions *aligned to targets*: ``pred[:, i]`` is the model's guess
of ``x[:, i]`` made from ``x[:, :i]`` only, and ``weight[:, i]`` says whether position i counts.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, get_args

import torch
from torch import Tensor, nn

from diffusion.utils import randn_tensor

if TYPE_CHECKING:
    from lcm.objectives.step import NextConceptStep, StepOptions

Batch = dict[str, Tensor]
D = TypeVar("D")

Residual = Literal["none", "last", "context_mean", "source_mean", "source_lead"]
"""What a family's prediction of concept t+1 is a residual over (see :func:`residual_base`):
``"none"`` (the network predicts the concept itself), ``"last"`` (concept t, i.e. the network
learns ``x_{t+1} - x_t``), ``"context_mean"`` (the mean of the valid concepts ``x_0 .. x_t``) or
``"source_mean"`` (summarization: the mean of the source's concepts, i.e. those before the
separator, less the one just before it, which is the end-of-text concept of sources prepared
with ``lcm prepare --end_of_text``; the separator and what follows it never enter; a row with no
separator gets ``context_mean``) or ``"source_lead"`` (the midpoint of that source mean and the
source's first concept, the lead sentence: the main job's two retrieval floors' queries averaged).
The bases are taken in the objective's (normalized) concept
space; the first three are the report's copy-previous and context-mean baselines and the main
job's mean-concept floor, so the network learns a correction to them."""


@dataclass
class ObjectiveOutput:
    """Result of :meth:`Objective.loss`.

    Attributes:
        loss: Scalar training loss (mean over the weighted positions).
        pred: (B, T, D) prediction of concept i at position i (normalized space).
        target: (B, T, D) what ``pred`` is compared with.
        weight: (B, T) bool, the positions that entered the loss.
    """

    loss: Tensor
    pred: Tensor
    target: Tensor
    weight: Tensor


def target_weight(batch: Batch) -> Tensor:
    """(B, T) bool: valid concepts that are prediction targets."""
    mask = batch["mask"]
    loss_mask = batch.get("loss_mask")
    return mask if loss_mask is None else mask & loss_mask


def masked_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean over weighted positions of the per-concept mean squared error.

    Args:
        pred: (B, T, D).
        target: (B, T, D).
        weight: (B, T) bool.

    Returns:
        Scalar; 0 (with a gradient path) when no position is weighted, so an all-padding batch
        (see :mod:`lcm.train.data`, distributed padding) contributes nothing.
    """
    per_concept = (pred - target).pow(2).mean(dim=-1)  # (B, T)
    w = weight.to(per_concept.dtype)  # (B, T)
    return (per_concept * w).sum() / w.sum().clamp(min=1.0)


def last_valid(x: Tensor, mask: Tensor | None) -> Tensor:
    """(B, D): the last valid row of each sequence in a right-padded (B, T, D) tensor."""
    if mask is None:
        return x[:, -1]
    idx = mask.long().sum(dim=1).clamp(min=1) - 1  # (B,)
    return x[torch.arange(x.shape[0], device=x.device), idx]


def check_residual(residual: str) -> Residual:
    """``residual`` if it names a :data:`Residual`, else a ValueError that lists the choices."""
    if residual not in get_args(Residual):
        raise ValueError(f"unknown residual {residual!r}; known: {list(get_args(Residual))}")
    return residual  # type: ignore[return-value]


def separator_positions(x: Tensor, separator: Tensor | None, atol: float = 1e-3) -> Tensor | None:
    """(B, T) bool: the slots of ``x`` (B, T, D) that hold ``separator`` (D,) (every component
    within ``atol``: the separator round-trips through the normalizer in generation), or None
    without a separator."""
    if separator is None:
        return None
    return (x - separator.to(x)).abs().amax(dim=-1) <= atol


def residual_base(
    x: Tensor, mask: Tensor | None, residual: Residual, separator: Tensor | None = None
) -> Tensor | None:
    """(B, T, D): ``base[:, t]``, what the prediction of concept t+1 is added to, from
    ``x[:, :t+1]`` only (None for ``"none"``).

    ``"last"`` is ``x`` itself; ``"context_mean"`` the running mean of the valid concepts up to
    and including t (padding excluded, so it holds for right- and left-padded rows; a row with
    no valid concept yet gets 0). ``"source_mean"`` is the same running mean over the concepts
    before the row's first ``separator`` slot, less the one just before it (the source's
    end-of-text concept), so from the separator on it is the mean of the source's content. Valid
    positions never depend on later ones, so the base of a growing sequence is the same whether
    it is computed at once or concept by concept. ``"source_lead"`` is ``(source_mean + first) / 2``
    where ``first`` is the first concept that enters the source mean (0 until there is one).

    Args:
        x: (B, T, D) concepts.
        mask: (B, T) bool, True = a real concept; None = all real.
        residual: The kind of base.
        separator: (D,) the separator concept (``"source_mean"`` and ``"source_lead"`` only;
            required there).
    """
    if residual == "none":
        return None
    if residual == "last":
        return x
    if residual in ("context_mean", "source_mean", "source_lead"):
        w = x.new_ones(x.shape[:2]) if mask is None else mask.to(x.dtype)  # (B, T)
        if residual in ("source_mean", "source_lead"):
            if separator is None:
                raise ValueError(f"residual={residual!r} needs the separator concept")
            sep = separator_positions(x, separator)
            if mask is not None:
                sep = sep & mask
            first = sep & (sep.long().cumsum(dim=1) == 1)  # (B, T) the first separator
            after = first.long().cumsum(dim=1) > 0  # the separator and everything after it
            before_first = torch.cat((first[:, 1:], first.new_zeros(first.shape[0], 1)), dim=1)
            w = w * (~after & ~before_first).to(x.dtype)
        total = (x * w[..., None]).cumsum(dim=1)  # (B, T, D)
        seen = w.cumsum(dim=1)  # (B, T) concepts in the mean so far
        mean = total / seen.clamp(min=1.0)[..., None]
        if residual != "source_lead":
            return mean
        first_idx = (w > 0).long().argmax(dim=1)  # (B,) the first concept in the mean
        first = x[torch.arange(x.shape[0], device=x.device), first_idx]  # (B, D)
        return (mean + first[:, None] * (seen > 0).to(x.dtype)[..., None]) / 2
    raise ValueError(f"unknown residual {residual!r}; known: {list(get_args(Residual))}")


def check_residual_scale(scale: float, residual: Residual) -> float:
    """``scale`` as a float if it is a valid :func:`scale_residual` factor for ``residual``: a
    finite number > 0, and 1 without a residual (there is no correction to scale); else a
    ValueError naming the value."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"residual_scale must be a number > 0, got {scale!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"residual_scale must be a finite number > 0, got {scale!r}")
    if residual == "none" and scale != 1.0:
        raise ValueError(
            f"residual_scale={scale!r} needs a residual (the objective has residual='none'); "
            "only 1.0 is allowed without one"
        )
    return float(scale)


def scale_residual(pred: Tensor, base: Tensor | None, scale: float) -> Tensor:
    """``base + scale * (pred - base)``: the prediction with its correction to the residual base
    scaled by ``scale`` (prediction time only, like classifier-free guidance's extrapolation).
    ``pred`` itself (the same tensor, bit for bit) when ``scale == 1`` or there is no base. The
    one place every residual family's teacher-forced prediction and cached generation step
    scale the correction (see :attr:`Objective.residual_scale`)."""
    if base is None or scale == 1.0:
        return pred
    return base + scale * (pred - base)


def check_input_noise(sigma: float) -> float:
    """``sigma`` as a float if it is a valid :attr:`Objective.input_noise`: a finite number >= 0;
    else a ValueError naming the value."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise ValueError(f"input_noise must be a number >= 0, got {sigma!r}")
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"input_noise must be a finite number >= 0, got {sigma!r}")
    return float(sigma)


def add_input_noise(
    x: Tensor, sigma: float, keep: Tensor | None, generator: torch.Generator | None = None
) -> Tensor:
    """``x + sigma * eps`` with ``eps ~ N(0, I)`` per coordinate on the rows where ``keep`` is
    True (the other rows are left as they are); ``x`` itself (no random draw) when ``sigma`` is 0.

    Args:
        x: (B, T, D) concepts in normalized space.
        sigma: Standard deviation of the noise per coordinate (>= 0).
        keep: (B, T) bool, the rows to noise; None = every row.
        generator: Draws ``eps`` (:func:`diffusion.utils.randn_tensor`: the same numbers on
            any device for a CPU generator).
    """
    if sigma == 0:
        return x
    eps = randn_tensor(x.shape, generator, device=x.device, dtype=x.dtype)  # (B, T, D)
    if keep is not None:
        eps = eps * keep[..., None].to(x.dtype)
    return x + sigma * eps


def shift_right(y: Tensor) -> Tensor:
    """(B, T, ...): ``y`` moved one position later with zeros first, so that the output made at
    position t (about concept t+1) is aligned to target t+1."""
    return torch.cat((torch.zeros_like(y[:, :1]), y[:, :-1]), dim=1)


def with_overrides(config: D, **overrides: Any) -> D:
    """``config`` (a dataclass, e.g. a family's default sampling settings) with the fields given
    replaced; an override of None keeps the field."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


#: Network class -> the objective class a bare network of it is wrapped in (``network=`` of
#: :class:`Objective`'s subclasses).
_OBJECTIVE_OF: dict[type[nn.Module], type[Objective]] = {}


class Objective(nn.Module, ABC):
    """A network plus the loss it is trained with, the way it predicts the next concept and its
    cached generation step (:meth:`generation_step`).

    A family's objective names its network class when it is defined,
    ``class MSEObjective(Objective, network=BaseLCM)``, so that a bare network can be turned
    into its objective (:func:`objective_for`), e.g. by :func:`lcm.generation.make_step`.

    Args:
        model: The network; stored as ``self.model``.
        residual: Predict concept t+1 as a base from the context plus the network's output
            (:data:`Residual`, :func:`residual_base`); one of the family's
            :attr:`residuals`.

    Attributes:
        separator: Optional callable returning the (D,) separator concept in normalized space,
            which ``residual="source_mean"`` and ``"source_lead"`` need (set by the
            LightningModule from its ``separator``, so a checkpoint carries it; read at each
            call, so a learned separator is the current one).
    """

    residuals: ClassVar[tuple[Residual, ...]] = ("none",)
    """The :data:`Residual` bases the family's loss, teacher-forced prediction and generation
    step can add to the network's output (``source_mean`` / ``source_lead`` also need
    :attr:`separator`)."""

    predicts_first_concept: ClassVar[bool] = True
    """False when position 0 of ``predict_all`` is a placeholder: the network only predicts
    concepts that follow another one (regression, refiner, quantized). Diffusion samples the
    first concept from the unconditional model."""

    def __init_subclass__(cls, network: type[nn.Module] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if network is not None:
            _OBJECTIVE_OF[network] = cls

    def __init__(self, model: nn.Module, residual: Residual = "none") -> None:
        super().__init__()
        self.model = model
        self.residual: Residual = check_residual(residual)
        self._residual_scale = 1.0
        self._input_noise = 0.0
        self.separator: Callable[[], Tensor] | None = None
        if residual not in self.residuals:
            raise ValueError(
                f"{type(self).__name__} does not support residual={residual!r} (only "
                f"{', '.join(map(repr, self.residuals))}); Base-LCM, One-Tower and Two-Tower "
                "take every residual, Quant-LCM and the refiner 'last' and 'context_mean'"
            )

    def _separator(self) -> Tensor | None:
        """(D,) the separator concept now (detached: no residual base trains it), or None."""
        return None if self.separator is None else self.separator().detach()

    def next_base(self, x: Tensor, mask: Tensor | None) -> Tensor | None:
        """(B, D): the residual base of the concept after each right-padded row of ``x``
        (B, T, D), or None without a residual."""
        base = residual_base(x, mask, self.residual, self._separator())
        return None if base is None else last_valid(base, mask)

    @property
    def residual_scale(self) -> float:
        """Prediction-time factor s on the learned correction: teacher-forced predictions and
        the cached generation steps (:func:`lcm.generation.make_step`) give ``base + s *
        (prediction - base)`` (:func:`scale_residual`); the loss never scales. 1 (default)
        predicts exactly as trained; > 0, and 1 without a residual."""
        return self._residual_scale

    @residual_scale.setter
    def residual_scale(self, scale: float) -> None:
        self._residual_scale = check_residual_scale(scale, self.residual)

    @property
    def input_noise(self) -> float:
        """Training-only noise augmentation: std sigma (>= 0, per coordinate, in the normalized
        concept space) of Gaussian noise added to the context concepts the network reads in
        :meth:`loss` while the objective is in training mode (:meth:`network_input`). Targets,
        residual bases and every evaluation, prediction and generation path see the clean
        concepts. 0 (default) draws nothing: the loss is exactly the one without the option."""
        return self._input_noise

    @input_noise.setter
    def input_noise(self, sigma: float) -> None:
        self._input_noise = check_input_noise(sigma)

    def network_input(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """(B, T, D): the context concepts the network reads in :meth:`loss`.

        ``batch["x"]`` itself in eval mode or with :attr:`input_noise` 0. While training with
        sigma > 0: ``x + sigma * eps`` (:func:`add_input_noise`, drawn from ``generator``) on
        the real concepts only; padding and the separator slots (``sep_mask``, a fixed marker,
        not a concept) stay clean. Callers compute targets and the residual base from the clean
        ``batch["x"]``: evaluation's base is clean, so the correction learned is the one asked
        for at evaluation, and the base does not carry noise into the prediction the loss
        scores."""
        x = batch["x"]
        if not self.training or self._input_noise == 0:
            return x
        keep = batch.get("mask")
        sep = batch.get("sep_mask")
        if sep is not None:
            keep = ~sep if keep is None else keep & ~sep
        return add_input_noise(x, self._input_noise, keep, generator)

    def with_model(self, model: nn.Module) -> Objective:
        """A shallow copy that shares everything (scheduler, settings) but runs ``model``, e.g. an
        EMA copy of the weights. The copy is not registered anywhere, so no state is duplicated."""
        other = copy.copy(self)
        other._modules = {**self._modules, "model": model}
        return other

    def generation_step(self, options: StepOptions) -> NextConceptStep:
        """The family's cached generation step (:mod:`lcm.objectives.step`) for this objective:
        its defaults (scheduler, sampling settings, exit rule, temperature) are the objective's,
        ``options`` override them. A family without one cannot be generated from."""
        raise TypeError(
            f"no generation step for {type(self).__name__}: define "
            f"{type(self).__name__}.generation_step"
        )

    @abstractmethod
    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> ObjectiveOutput:
        """Training loss on one batch; ``generator`` drives every random draw (noise, t, CFG)."""

    @abstractmethod
    def predict_all(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """(B, T, D) teacher-forced predictions: position i predicts concept i from ``x[:, :i]``
        (the paper's next-concept evaluation; position 0 is unconditional or meaningless)."""

    @abstractmethod
    def predict_next(
        self, x: Tensor, mask: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, D): the concept that follows each right-padded sequence ``x`` (B, T, D)."""


def objective_for(model: nn.Module) -> Objective:
    """``model`` (a bare network) wrapped in the objective its family registered with
    ``network=`` (the most specific registration of its class hierarchy), with that objective's
    defaults; a TypeError for a network no family registered."""
    for klass in type(model).__mro__:
        if klass in _OBJECTIVE_OF:
            return _OBJECTIVE_OF[klass](model)
    raise TypeError(f"no generation step for {type(model).__name__}")


class SampledObjective(Objective):
    """An objective whose predictions are drawn with per-call options and come with information
    about each prediction (exit steps, codes, ...).

    A family implements :meth:`options` (its typed keyword options, None = the objective's
    default, resolved into whatever its sampler takes), :meth:`sample_all` and
    :meth:`sample_next` (its own sampling); the public ``predict_*`` methods, which take the
    options as keywords, are written once here.
    """

    @abstractmethod
    def options(self, **overrides: Any) -> Any:
        """The sampling options of one call: the objective's defaults with ``overrides`` put in
        (None keeps a default); an unknown name is a TypeError."""

    @abstractmethod
    def sample_all(
        self, batch: Batch, generator: torch.Generator | None, options: Any
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced predictions (B, T, D) aligned to targets, and the family's information
        about each (B, T, ...) aligned the same way, or None."""

    @abstractmethod
    def sample_next(
        self, x: Tensor, mask: Tensor | None, generator: torch.Generator | None, options: Any
    ) -> tuple[Tensor, Tensor | None]:
        """The concept after each right-padded sequence x (B, T, D): (B, D), and the family's
        information about each (B, ...), or None."""

    @torch.no_grad()
    def predict_all_with_info(
        self, batch: Batch, generator: torch.Generator | None = None, **options: Any
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`sample_all` with the options of :meth:`options` as keywords."""
        return self.sample_all(batch, generator, self.options(**options))

    @torch.no_grad()
    def predict_all(
        self, batch: Batch, generator: torch.Generator | None = None, **options: Any
    ) -> Tensor:
        """(B, T, D) teacher-forced predictions; ``options``: the keywords of :meth:`options`."""
        return self.predict_all_with_info(batch, generator, **options)[0]

    @torch.no_grad()
    def predict_next_with_info(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`sample_next` with the options of :meth:`options` as keywords."""
        return self.sample_next(x, mask, generator, self.options(**options))

    @torch.no_grad()
    def predict_next(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> Tensor:
        """(B, D): the concept after each right-padded sequence x (B, T, D); ``options``: the
        keywords of :meth:`options`."""
        return self.predict_next_with_info(x, mask, generator, **options)[0]
