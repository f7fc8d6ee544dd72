"""Quant-LCM-d objective (paper section 2.5): cross-entropy on the RVQ codes of the next concept,
and coarse-to-fine sampling of codes that are summed back into a concept.

Training:
    codes = rvq.encode(x)                    (B, T, K), or batch["codes"] when precomputed
    logits = model(x, mask, codes shifted)   position t scores the codes of concept t+1
    loss = mean over target positions and codebooks of CE(logits, codes)
           (the mean over K keeps the scale independent of the number of codebooks)

Sampling, per concept: for j = 0 .. K-1, draw c_j from softmax(logits_j / temperature) restricted
to the top-p nucleus (Holtzman et al. 2020), add C_j[c_j] to the running sum, feed it to depth
j + 1. The concept is the sum of the K code vectors, `rvq.decode(codes)`. temperature = 0 is
greedy.

Expected decoding (``decoding="expected"``, ours, not the paper's): a point prediction instead of
a draw. At each level j the running prefix adds the mean code vector under the same distribution,
``w_j @ C_j`` with ``w_j`` = softmax(logits_j / temperature) cut to the top-p nucleus and
renormalized (temperature = 0: one-hot on the argmax, which is greedy decoding), and feeds it to
depth j + 1; the concept is the final prefix. Its codes are the argmax of each level's logits
(given the expected prefix): the most likely unit per level, so code accuracy stays the share of
levels whose mode is the target's code. Depth j + 1 was trained on sums of code vectors, and an
expected prefix lies between them: the decoding is an approximation of the conditional mean, not
the mean itself.

With ``residual`` (:data:`~lcm.objectives.base.Residual`: ``"last"`` or ``"context_mean"``) the
network predicts the codes of the residual ``x_{t+1} - base_t`` instead
(:func:`~lcm.objectives.base.residual_base`), with a quantizer fitted on such residuals (its
:attr:`~lcm.quant.RVQ.residual` must name the same base: a quantizer of concepts in a residual
objective, or the reverse, is an error), and the concept is ``base_t + rvq.decode(codes)``:

    codes = rvq.encode(x[:, 1:] - base[:, :-1])   computed per batch (the base of a context-mean
                                                  depends on the window), never batch["codes"]

in the loss, teacher-forced prediction, ``predict_next`` and the cached generation step alike. A
prediction-time ``residual_scale`` s gives ``base_t + s * rvq.decode(codes)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion.utils import Generators, per_row
from lcm.models.quant_lcm import QuantLCM
from lcm.objectives.base import (
    Batch,
    ObjectiveOutput,
    Residual,
    SampledObjective,
    last_valid,
    residual_base,
    scale_residual,
    shift_right,
    target_weight,
)
from lcm.objectives.step import NextConceptStep, StepOptions, prefill_mask
from lcm.quant import RVQ

#: How a concept is read from the code distributions: ``"sample"`` draws one code per level
#: (greedy at temperature 0), ``"expected"`` adds each level's probability-weighted mean code
#: vector (module docstring).
Decoding = Literal["sample", "expected"]
DECODINGS: tuple[str, ...] = ("sample", "expected")


def check_decoding(decoding: str) -> Decoding:
    """``decoding`` when it is one of :data:`DECODINGS`, else a ValueError."""
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    return decoding  # type: ignore[return-value]


def nucleus_probs(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """softmax(logits / temperature) (N, U) with the units outside the top-p nucleus set to 0
    (not renormalized; the most likely unit always stays); temperature > 0."""
    probs = F.softmax(logits.float() / temperature, dim=-1)  # (N, U)
    if top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)  # (N, U)
        mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the strictly likelier units
        sorted_p = sorted_p.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return probs


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: Generators = None,
) -> Tensor:
    """One draw per row of logits (N, U) -> (N,) int64 (row i from generator i when given one
    generator per row).

    temperature = 0 takes the argmax. Otherwise the probabilities softmax(logits / temperature)
    are cut to the smallest set of most likely units whose mass reaches top_p (the most likely
    unit always stays), renormalized, and sampled; the draw happens on the generator's device.
    """
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = nucleus_probs(logits, temperature, top_p)  # (N, U)
    rows = per_row(generator, probs.shape[0])
    if rows is not None:
        draws = [
            torch.multinomial(row[None].to(g.device), 1, generator=g)[0]
            for row, g in zip(probs, rows)
        ]
        return torch.cat(draws).to(logits.device)
    device = generator.device if generator is not None else probs.device
    draw = torch.multinomial(probs.to(device), 1, generator=generator)[:, 0]  # (N,)
    return draw.to(logits.device)


class QuantObjective(SampledObjective, network=QuantLCM):
    """Code cross-entropy and code sampling for :class:`~lcm.models.quant_lcm.QuantLCM`.

    Args:
        model: The network; its `rvq` must be fitted (``model.set_quantizer(rvq)``), on
            concepts, or with a residual on the residuals over the same base.
        temperature: Default sampling temperature (0 = greedy). Ours, not the paper's.
        top_p: Default nucleus mass. Ours, not the paper's.
        decoding: Default decoding, ``"sample"`` (draw codes) or ``"expected"`` (weighted mean
            code vectors per level; module docstring). Ours, not the paper's.
        residual: Predict the codes of ``x_{t+1} - base_t`` and add the base back
            (``"none"``, ``"last"`` or ``"context_mean"``;
            :func:`~lcm.objectives.base.residual_base`).
    """

    predicts_first_concept = False
    residuals = ("none", "last", "context_mean")  # no separator: no source_* base

    def __init__(
        self,
        model: QuantLCM,
        temperature: float = 1.0,
        top_p: float = 0.9,
        residual: Residual = "none",
        decoding: Decoding = "sample",
    ) -> None:
        super().__init__(model, residual)
        self.temperature = temperature
        self.top_p = top_p
        self.decoding: Decoding = check_decoding(decoding)
        if bool(model.rvq.fitted):
            self.check_quantizer()

    @property
    def rvq(self) -> RVQ:
        return self.model.rvq

    def check_quantizer(self) -> None:
        """A ValueError unless the network's quantizer was fitted on what this objective
        predicts the codes of: concepts without a residual, else residuals over the same base
        (:attr:`~lcm.quant.RVQ.residual`)."""
        fitted_on = self.rvq.residual
        if fitted_on != self.residual:
            what = "concepts" if fitted_on == "none" else f"residuals over {fitted_on!r}"
            raise ValueError(
                f"the quantizer was fitted on {what} but the objective has "
                f"residual={self.residual!r}: fit one on "
                + ("concepts" if self.residual == "none" else f"residuals over {self.residual!r}")
                + " (lcm fit-rvq --residual, or let the module fit it)"
            )

    def _codes(self, batch: Batch) -> Tensor:
        """(B, T, K): position i holds the codes the network should give concept i: those of
        ``x_i`` (``batch["codes"]`` when precomputed), or with a residual those of ``x_i -
        base_{i-1}`` (position 0, which nothing predicts, holds zeros)."""
        self.check_quantizer()
        codes = batch.get("codes")
        if self.residual == "none":
            return codes if codes is not None else self.rvq.encode(batch["x"])  # (B, T, K)
        if codes is not None:
            raise ValueError(
                f"precomputed batch['codes'] are codes of concepts; with residual="
                f"{self.residual!r} the codes depend on the window and are computed per batch"
            )
        x = batch["x"]  # (B, T, D)
        base = residual_base(x, batch.get("mask"), self.residual)  # (B, T, D) base of t+1
        codes = self.rvq.encode(x[:, 1:] - base[:, :-1])  # (B, T-1, K) codes of concepts 1..
        return torch.cat((torch.zeros_like(codes[:, :1]), codes), dim=1)

    def target_codes(self, batch: Batch) -> Tensor:
        """(B, T, K) the codes a teacher-forced prediction is scored against, aligned to
        targets (:meth:`sample_all`'s codes): those of concept i, or of its residual over the
        base of its context."""
        return self._codes(batch)

    def _add_base(self, y: Tensor, base: Tensor | None) -> Tensor:
        """``y`` (decoded codes) plus the residual base with the prediction-time scale."""
        return y if base is None else scale_residual(y + base, base, self.residual_scale)

    # ---------------------------------------------------------------------------- training
    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> ObjectiveOutput:
        """Mean code cross-entropy; `pred` is the decoded teacher-forced argmax (aligned)."""
        x, mask = batch["x"], batch["mask"]  # (B, T, D), (B, T)
        codes = self._codes(batch)  # (B, T, K) codes of every concept
        # Position t predicts concept t+1: its targets are codes[:, t+1]; the last has none.
        next_codes = torch.cat((codes[:, 1:], torch.zeros_like(codes[:, :1])), dim=1)
        # The network reads the context noised with input_noise in training; codes, targets and
        # the base come from the clean x.
        context = self.network_input(batch, generator)  # (B, T, D)
        logits = self.model(context, mask, next_codes)  # (B, T, K, U)

        weight = target_weight(batch).clone()  # (B, T) over targets
        weight[:, 0] = False  # nothing predicts the first concept
        w_out = weight[:, 1:]  # (B, T-1): output t counts if concept t+1 is a target
        ce = F.cross_entropy(
            logits[:, :-1].flatten(0, 2).float(), next_codes[:, :-1].flatten(), reduction="none"
        ).view(*w_out.shape, -1)  # (B, T-1, K)
        w = w_out.to(ce.dtype)
        loss = (ce.mean(dim=-1) * w).sum() / w.sum().clamp(min=1.0)

        with torch.no_grad():
            y = self.rvq.decode(logits.argmax(dim=-1))  # (B, T, D) output t ~ concept t+1
            base = residual_base(x, mask, self.residual)  # (B, T, D) base of concept t+1
            pred = shift_right(y if base is None else y + base)
        return ObjectiveOutput(loss, pred, x, weight)

    # ---------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def decode_levels(
        self,
        h: Tensor,
        generator: Generators = None,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        decoding: Decoding | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The concepts (N, D) following the contextualized states h (N, d), before any residual
        base, and their codes (N, K).

        ``"sample"``: each level draws a code (:func:`sample_logits`), the concept is
        ``rvq.decode(codes)``. ``"expected"``: each level adds its weighted mean code vector
        to the prefix fed to the next level and the concept is the final prefix; the codes are
        each level's argmax (module docstring). None = this objective's default.
        """
        temperature = self.temperature if temperature is None else temperature
        top_p = self.top_p if top_p is None else top_p
        decoding = check_decoding(self.decoding if decoding is None else decoding)
        if decoding == "expected" and (temperature < 0 or not 0 < top_p <= 1):
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
            )
        model = self.model
        books = model.rvq.codebooks  # (K, U, D)
        cache = model.new_depth_cache()
        prefix = h.new_zeros(h.shape[0], model.config.sonar_dim)  # (N, D) running sum
        codes = []
        for j in range(model.config.n_codebooks):
            logits = model.next_level_logits(h, prefix, cache)  # (N, U)
            if decoding == "sample":
                c = sample_logits(logits, temperature, top_p, generator)  # (N,)
                prefix = prefix + books[j, c]
            else:
                c = logits.argmax(dim=-1)  # (N,) the most likely unit of the level
                if temperature == 0:
                    prefix = prefix + books[j, c]
                else:
                    w = nucleus_probs(logits, temperature, top_p)  # (N, U)
                    w = w / w.sum(dim=-1, keepdim=True)
                    prefix = prefix + (w @ books[j].float()).to(prefix.dtype)
            codes.append(c)
        codes_t = torch.stack(codes, dim=1)  # (N, K)
        y = model.rvq.decode(codes_t) if decoding == "sample" else prefix
        return y, codes_t

    def options(
        self,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        decoding: Decoding | None = None,
    ) -> dict[str, float | str | None]:
        """The keywords of :meth:`decode_levels` (None = this objective's default).

        Args:
            temperature: Sampling temperature (0 = greedy).
            top_p: Nucleus mass.
            decoding: ``"sample"`` or ``"expected"`` (:data:`Decoding`).
        """
        if decoding is not None:
            check_decoding(decoding)
        return dict(temperature=temperature, top_p=top_p, decoding=decoding)

    def sample_all(
        self, batch: Batch, generator: torch.Generator | None, options: dict
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced samples (B, T, D) and their codes (B, T, K), both aligned to targets
        (position 0 is zeros)."""
        x, mask = batch["x"], batch["mask"]
        B, T, _ = x.shape
        self.check_quantizer()
        h = self.model.contextualize(x, mask)  # (B, T, d)
        y, codes = self.decode_levels(h.reshape(B * T, -1), generator, **options)
        y, codes = y.reshape(B, T, -1), codes.reshape(B, T, -1)  # output t ~ concept t+1
        y = self._add_base(y, residual_base(x, mask, self.residual))
        return shift_right(y), shift_right(codes)

    def sample_next(
        self, x: Tensor, mask: Tensor | None, generator: torch.Generator | None, options: dict
    ) -> tuple[Tensor, Tensor]:
        """(B, D): the decoded next concept (the sum of its sampled code vectors, or with
        expected decoding the expected prefix; plus its residual base), and its codes (B, K)."""
        self.check_quantizer()
        h = last_valid(self.model.contextualize(x, mask), mask)  # (B, d)
        y, codes = self.decode_levels(h, generator, **options)  # (B, D), (B, K)
        return self._add_base(y, self.next_base(x, mask)), codes

    predict_all_with_codes = SampledObjective.predict_all_with_info

    def generation_step(self, options: StepOptions) -> QuantStep:
        """:class:`QuantStep` (reads ``temperature``, ``top_p``, ``decoding``,
        ``use_cache``)."""
        return QuantStep(
            self, options.temperature, options.top_p, options.use_cache, options.decoding
        )

    @torch.no_grad()
    def predict_next_codes(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        **options: float | None,
    ) -> Tensor:
        """(B, K) codes of the concept after each right-padded sequence x (B, T, D)."""
        return self.predict_next_with_info(x, mask, generator, **options)[1]


class QuantStep(NextConceptStep):
    """Quant-LCM's cached generation step: contextualize once per concept (KV-cached), then
    sample the next concept's K codes coarse to fine and sum their code vectors (with
    ``decoding="expected"``: their expected vectors, :meth:`QuantObjective.decode_levels`; plus,
    with the objective's ``residual``, the base of the step's context:
    :meth:`~lcm.objectives.step.NextConceptStep._base`). ``last_info["codes"]`` (B, K)."""

    def __init__(
        self,
        objective: QuantObjective,
        temperature: float | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        decoding: Decoding | None = None,
    ) -> None:
        super().__init__(use_cache, objective.residual)
        self.objective, self.model = objective, objective.model
        self.temperature, self.top_p = temperature, top_p
        self.decoding = None if decoding is None else check_decoding(decoding)

    def start(self, x: Tensor, mask: Tensor) -> None:
        self.objective.check_quantizer()
        self.x, self.mask = x, mask
        if self.use_cache:
            self.cache = self.model.new_cache()
            self.h = self.model.contextualize(x, prefill_mask(mask), self.cache)[:, -1]  # (B, d)

    def next(self, generator=None) -> Tensor:
        h = self.h if self.use_cache else self.model.contextualize(self.x, self.mask)[:, -1]
        y, codes = self.objective.decode_levels(
            h, generator, temperature=self.temperature, top_p=self.top_p, decoding=self.decoding
        )  # (B, D), (B, K)
        self.last_info = {"codes": codes}
        base = self._base()  # (B, D) or None
        return y if base is None else scale_residual(y + base, base, self.residual_scale)

    def append(self, y: Tensor) -> None:
        self._grow(y)
        if self.use_cache:
            self.h = self.model.contextualize(y[:, None], None, self.cache)[:, 0]
