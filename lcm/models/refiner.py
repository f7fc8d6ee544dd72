"""Recurrent-depth refiner LCM (ours, after Geiping et al. 2025, "Scaling up test-time compute
with latent reasoning: a recurrent depth approach"): a weight-tied core iterated r times on the
state of the next concept.

    x (B, T, D) --PreNet Linear(D->d)--> e (B, T, d)           raw embedding of each concept
    e --CausalTransformer--> ctx (B, T, d)                    once per concept (KV-cacheable)
    cross K/V = project_kv(ctx) per core layer                once per concept, reused by every
                                                              iteration
    s_0 ~ TruncNormal(0, sqrt(2/5)) (B, T, d), or a given warm state
    s_i = R(s_{i-1}, e):   h = Linear(2d->d)([s_{i-1}, e])    adapter
                           h = CoreBlock(h; cross-attn to ctx_0..ctx_t) x core_layers
                           s_i = RMSNorm(h)
    y_i = PostNet(RMSNorm(s_i)) (B, T, D)                     prediction after i iterations

Position t predicts concept t+1 (as Base-LCM). Two choices come from the CPU pilot (DESIGN.md):
- The injection e_t is the *local* PreNet embedding of concept t, not its contextualized state.
  Re-injecting ctx_t let the core read the answer off the injection and ignore its own state
  (accuracy flat in r). With e_t, the only way to the context is the core's cross-attention,
  so the state has to carry the work.
- The core has no self-attention: the T states never exchange information, so every position is
  refined independently. Training refines all positions in parallel, and generation refines only
  the last one with exactly the same result (tested).

`s_i` is RMS-normalized after every iteration (as the sandwich norm of Geiping et al.'s core
block), which keeps the state bounded however many times the core is applied.

Parameter count (tiny preset, D=16): PreNet 544 + contextualizer 2 x 13,728 + 32 + adapter 2,080
+ core 1 x 13,728 (cross-attention 4,224, SwiGLU 9,440, 2 norms 64) + state norm 32 + readout
norm 32 + PostNet 528 = 44,432. A core layer costs as much as a contextualizer layer (cross- instead
of self-attention), so one iteration costs about one layer of a fixed-depth model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from diffusion.utils import Generators, per_row
from lcm.models.common import TINY_WIDTHS, ConceptNetwork, TransformerConfig
from lcm.nn import KVCache, MultiheadAttention, RMSNorm, SwiGLU, causal_allowed

CrossKV = list[tuple[Tensor, Tensor]]
"""Per core layer: keys and values (B, H, S, hd) of the contextualizer output."""

INIT_STD = math.sqrt(2 / 5)
"""Std of the random initial state (DESIGN.md); truncated at 3 std."""


@dataclass
class RefinerConfig(TransformerConfig):
    """Recurrent refiner hyper-parameters. `RefinerConfig.from_name("tiny", sonar_dim=16)`.

    The shared fields (:class:`~lcm.models.common.TransformerConfig`) apply to the
    contextualizer, the state and the core; RoPE is used by the contextualizer only (the core has
    no positions of its own).

    Args:
        ctx_layers: contextualizer layers (run once per concept). 0 = none: the core
            cross-attends to the raw PreNet embeddings, so all work on the context happens in
            the iterations. On pointer chasing only this setting extrapolated in depth; with 2
            layers the contextualizer did the hops and accuracy was flat in r
            (reports/refinement/README.md).
        core_layers: layers of the weight-tied core (run r times). The pilot's lesson: keep one
            iteration shallow relative to the task.
        init_std: std of the random initial state (truncated normal at +-3 std).
    """

    d_model: int = 1024
    ffn_dim: int = 4096
    ctx_layers: int = 4
    core_layers: int = 2
    init_std: float = INIT_STD

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU tests and pilots: a 1-layer core, as in the pilot that made r matter.
        "tiny": {**TINY_WIDTHS, "ctx_layers": 2, "core_layers": 1},
        # One GPU: 132,779,008 parameters with sonar_dim=1024.
        "small": dict(d_model=1024, n_heads=16, ffn_dim=4096, ctx_layers=8, core_layers=2),
    }


@dataclass
class RefinerTrajectory:
    """Every iterate of one refinement, for inspection (PCA pictures, accuracy against r).

    Attributes:
        states: (n, B, T, d) s_1 .. s_n.
        preds: (n, B, T, D) y_1 .. y_n, the readout of each state.
    """

    states: Tensor
    preds: Tensor


class CoreBlock(nn.Module):
    """One core layer: x <- x + drop(cross_attn(norm(x), ctx)); x <- x + drop(ffn(norm(x))).

    No self-attention (module docstring): a position sees only its own state and the context.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        *,
        attn_dropout: float = 0.0,
        ffn_multiple_of: int = 256,
        bias: bool = True,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.cross_attn_norm = RMSNorm(d_model, norm_eps)
        self.cross_attn = MultiheadAttention(d_model, n_heads, bias=bias, dropout=attn_dropout)
        self.ffn_norm = RMSNorm(d_model, norm_eps)
        self.ffn = SwiGLU(d_model, ffn_dim, multiple_of=ffn_multiple_of, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, cross_kv: tuple[Tensor, Tensor], cross_mask: Tensor | None
    ) -> Tensor:
        """x (B, Tq, d); cross_kv (B, H, S, hd) each; cross_mask bool (B|1, 1, Tq, S)."""
        h = self.cross_attn(self.cross_attn_norm(x), kv=cross_kv, attn_mask=cross_mask)
        x = x + self.drop(h)  # (B, Tq, d)
        return x + self.drop(self.ffn(self.ffn_norm(x)))  # (B, Tq, d)


class RecurrentRefinerLCM(ConceptNetwork, config=RefinerConfig):
    """Contextualizer once per concept + weight-tied core iterated on the next-concept state."""

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__(config)
        c = config
        self.prenet = nn.Linear(c.sonar_dim, c.d_model)
        self.contextualizer = c.causal_transformer(c.ctx_layers)
        self.adapter = nn.Linear(2 * c.d_model, c.d_model)
        self.core = nn.ModuleList(CoreBlock(**c.layer_kwargs()) for _ in range(c.core_layers))
        self.state_norm = RMSNorm(c.d_model, c.norm_eps)
        self.out_norm = RMSNorm(c.d_model, c.norm_eps)
        self.postnet = nn.Linear(c.d_model, c.sonar_dim)

    # ---- once per concept ----------------------------------------------------------------------

    def new_cache(self) -> KVCache:
        """Empty KV cache of the contextualizer, for incremental `contextualize`."""
        return self.contextualizer.new_cache()

    def contextualize(
        self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor]:
        """x (B, T, D) concepts (only the new ones with a cache) -> (inject, ctx), each (B, T, d).

        `inject` is the raw PreNet embedding e_t (the local input of every iteration), `ctx` the
        contextualizer output that the core reaches through cross-attention.
        """
        inject = self.prenet(x)  # (B, T, d)
        return inject, self.contextualizer(inject, mask, cache)  # (B, T, d)

    def precompute_cross_kv(self, ctx: Tensor, past: CrossKV | None = None) -> CrossKV:
        """Keys/values of every core cross-attention for ctx (B, S, d), appended to `past`.

        They depend on the context only, never on the state, so they are computed once per
        concept and reused by all r iterations. With `past` (the cross K/V of the earlier
        concepts) only the new context positions are projected.
        """
        kv = [blk.cross_attn.project_kv(ctx) for blk in self.core]  # (B, H, S, hd) each
        if past is None:
            return kv
        return [
            (torch.cat((pk, k), dim=2), torch.cat((pv, v), dim=2))
            for (pk, pv), (k, v) in zip(past, kv, strict=True)
        ]

    @staticmethod
    def cross_mask(mask: Tensor | None, n_query: int, n_keys: int, device: torch.device) -> Tensor:
        """Bool (B|1, 1, Tq, S): query q stands at position i = S - Tq + q and sees ctx_0..ctx_i.

        Tq = S for teacher forcing; Tq = 1 for the next concept, which sees every valid key.
        Padded keys are never seen; every query sees its own position so that no softmax row is
        empty (an all-masked row gives NaN in some SDPA kernels).
        """
        key_mask = None if mask is None else mask[:, :n_keys]  # (B, S)
        return causal_allowed(n_keys - n_query, n_keys, device, key_mask)  # (B|1, 1, Tq, S)

    # ---- the recurrence ------------------------------------------------------------------------

    def init_state(
        self,
        shape: tuple[int, ...],
        generator: Generators = None,
        *,
        warm: Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Initial state s_0 of shape `shape` + (d,).

        Random: truncated normal, std `config.init_std`, cut at +-3 std, drawn on the generator's
        device (same numbers on CPU and GPU for a CPU generator) then moved; with one generator
        per row of `shape`, row i comes from generator i. Warm: a copy of
        `warm` (e.g. the previous concept's final state, or its embedding).
        """
        full = (*shape, self.config.d_model)
        if device is None:
            device = self.prenet.weight.device
        dtype = dtype or self.prenet.weight.dtype
        if warm is not None:
            if tuple(warm.shape) != full:
                raise ValueError(f"warm state has shape {tuple(warm.shape)}, expected {full}")
            return warm.to(device, dtype).clone()
        std = self.config.init_std
        rows = per_row(generator, full[0])
        if rows is not None:  # one generator per document: row i drawn from generator i
            return torch.stack(
                [self.init_state(full[1:-1], g, device=device, dtype=dtype) for g in rows]
            )
        draw_device = generator.device if generator is not None else device
        s = torch.empty(full, device=draw_device, dtype=torch.float32)
        nn.init.trunc_normal_(s, 0.0, std, -3 * std, 3 * std, generator=generator)
        return s.to(device, dtype)

    def step(
        self, state: Tensor, inject: Tensor, cross_kv: CrossKV, cross_mask: Tensor | None = None
    ) -> Tensor:
        """One iteration s_i = R(s_{i-1}, e): state, inject (B, Tq, d) -> (B, Tq, d)."""
        h = self.adapter(torch.cat((state, inject), dim=-1))  # (B, Tq, 2d) -> (B, Tq, d)
        for blk, kv in zip(self.core, cross_kv, strict=True):
            h = blk(h, kv, cross_mask)  # (B, Tq, d)
        return self.state_norm(h)  # (B, Tq, d)

    def iterate(
        self,
        state: Tensor,
        inject: Tensor,
        cross_kv: CrossKV,
        n: int,
        cross_mask: Tensor | None = None,
    ) -> Tensor:
        """Apply the core n times (n = 0 returns `state` unchanged): (B, Tq, d) -> (B, Tq, d)."""
        for _ in range(n):
            state = self.step(state, inject, cross_kv, cross_mask)
        return state

    def readout(self, state: Tensor) -> Tensor:
        """Predicted concept of a state: (..., d) -> (..., D)."""
        return self.postnet(self.out_norm(state))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        num_iterations: int = 8,
        *,
        state: Tensor | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
    ) -> Tensor | tuple[Tensor, RefinerTrajectory]:
        """
        Args:
            x: (B, T, D) concepts (normalized SONAR space).
            mask: (B, T) bool, True = valid concept.
            num_iterations: r, applications of the core (>= 1).
            state: (B, T, d) initial state (warm start); None = random from `generator`.
            generator: random generator of the initial state.
            return_trajectory: also return every iterate (`RefinerTrajectory`).

        Returns:
            (B, T, D), position t the prediction of concept t+1 after r iterations; with
            return_trajectory, (prediction, trajectory), trajectory.preds[-1] the prediction.
        """
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        B, T, _ = x.shape
        inject, ctx = self.contextualize(x, mask)  # (B, T, d) each
        cross_kv = self.precompute_cross_kv(ctx)
        cmask = self.cross_mask(mask, T, T, x.device)  # (B|1, 1, T, T)
        if state is None:
            state = self.init_state((B, T), generator, device=x.device, dtype=inject.dtype)
        if not return_trajectory:
            return self.readout(self.iterate(state, inject, cross_kv, num_iterations, cmask))
        states = []
        for _ in range(num_iterations):
            state = self.step(state, inject, cross_kv, cmask)  # (B, T, d)
            states.append(state)
        all_states = torch.stack(states)  # (r, B, T, d)
        preds = self.readout(all_states)  # (r, B, T, D)
        return preds[-1], RefinerTrajectory(all_states, preds)
