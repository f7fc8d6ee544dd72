"""Two-Tower diffusion LCM (paper section 2.3.4): a causal contextualizer and a separate denoiser.

Contextualizer (clean concepts):
    x (B, T, D) --Linear(D->d)--> CausalTransformer --> ctx (B, T, d)     (ctx_i sees x_0..x_i)

Denoiser (noisy concepts; position i predicts the clean x_i, i.e. x0-prediction):
    x_t (B, T, D) --Linear(D->d)--> N x DenoiserBlock --> RMSNorm --> Linear(d->D)
    Each block: AdaLN(t)-modulated diagonal self-attention, cross-attention, SwiGLU.
    Cross-attention keys are the *shifted* context
        ctx_shifted = [0, ctx_0, ctx_1, ..., ctx_{T-2}]             (B, T, d)
    and position i attends to shifted slots 0..i, i.e. to the zero vector and ctx_0..ctx_{i-1}:
    everything known about x_0..x_{i-1} and nothing about x_i itself. Position 0 sees only the
    zero vector. `drop_context` (classifier-free guidance) leaves a position only the zero vector,
    which is the unconditional model.

Generation of concept T from clean x_0..x_{T-1}:
    ctx = contextualize(x, mask, cache)                  # incremental with a KV cache
    kv = precompute_cross_kv(shift_context(ctx, include_last=True))   # (B, T+1) slots, once
    for each diffusion step: x0_hat = denoise(x_t (B, 1, D), t (B, 1), mask=mask, cross_kv=kv)
`denoise` treats its Tq queries as the *last* Tq of the S context slots, so a single query is
the next concept and sees all S slots.

Parameter count of the "7B" preset (d=4096, 32 heads, contextualizer 5 layers, denoiser 14
layers, FFN 16384 -> SwiGLU 11008), which equals Meta's `two_tower_diffusion_lcm_7B` docstring:
    contextualizer PreNet  1024*4096 + 4096                                  =     4,198,400
    contextualizer layer   attn 67,125,248 + SwiGLU 135,292,416 + 2 norms 8,192 =  202,425,856
    5 layers                                                                 = 1,012,129,280
    contextualizer final RMSNorm                                             =         4,096
    timestep embedding     256*4096 + 4096 + 4096*4096 + 4096                =    17,833,984
    denoiser PreNet        1024*4096 + 4096                                  =     4,198,400
    denoiser layer         self-attn 67,125,248 + cross-attn 67,125,248
                           + SwiGLU 135,292,416 + 3 norms 12,288
                           + AdaLN 4096*(9*4096) + 9*4096 = 151,031,808        =   420,587,008
    14 layers                                                                = 5,888,218,112
    denoiser final RMSNorm                                                   =         4,096
    denoiser PostNet       4096*1024 + 1024                                  =     4,195,328
    total                                                                    = 6,930,781,696
The "1.6B" preset (d=2048, 5 + 13 layers) counts 1,645,538,304 with the same layout. Meta's
`two_tower_diffusion_lcm_1_6B` docstring says 1,635,101,696 (10,436,608 = 13 * 802,816 fewer);
since the identical accounting reproduces their 7B figure to the parameter, we take their 1.6B
docstring to be stale (see also `lcm.models.base_lcm`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lcm.models.common import TINY_WIDTHS, ConceptNetwork, TransformerConfig
from lcm.nn import (
    DenoiserBlock,
    KVCache,
    PreparedCross,
    PreparedDenoiserBlock,
    PreparedLinear,
    RMSNorm,
    TimestepEmbedding,
)

CrossKV = list[tuple[Tensor, Tensor]]
"""Per denoiser layer: keys and values (B, H, S, hd) of the shifted context."""


@dataclass
class DenoiserPlan:
    """What a denoising step needs that depends only on the weights and the timestep.

    Built once by :meth:`TwoTowerLCM.denoiser_plan` and reused across denoising steps, concepts,
    documents and step counts (it covers every training timestep).

    Attributes:
        modulation: (L, T_train, 9, d) every denoiser layer's AdaLN parameters for every
            timestep (:meth:`~lcm.nn.DenoiserBlock.modulation_table`): the timestep embedding
            and L AdaLN projections are never run while sampling.
        blocks: per layer, inference copies of the weights (diagonal self-attention fused).
        prenet: denoiser PreNet.
        postnet: denoiser PostNet.
    """

    modulation: Tensor
    blocks: list[PreparedDenoiserBlock]
    prenet: PreparedLinear
    postnet: PreparedLinear


# model -> {(T_train, transposed, diagonal, device, dtype): (weights signature, plan)}. Weak keys:
# the plans die with the model; nothing is added to the module (state_dict, hparams untouched).
_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[tuple, DenoiserPlan]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class TwoTowerConfig(TransformerConfig):
    """Two-Tower diffusion LCM hyper-parameters. `TwoTowerConfig.from_name("7B")`.

    The shared fields (:class:`~lcm.models.common.TransformerConfig`) apply to both towers;
    `d_model` is also the timestep embedding's width (Meta asserts it), and RoPE is used by the
    contextualizer only (the denoiser has no positions).

    Args:
        ctx_layers: contextualizer layers (paper 1.6B: 5).
        den_layers: denoiser layers (paper 1.6B: 13).
        timestep_freq_dim: width of the sinusoidal timestep features (DiT: 256).
    """

    ctx_layers: int = 5
    den_layers: int = 13
    timestep_freq_dim: int = 256

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {**TINY_WIDTHS, "ctx_layers": 2, "den_layers": 2},
        # One GPU: 241,420,800 parameters with sonar_dim=1024.
        "small": dict(d_model=1024, n_heads=16, ffn_dim=4096, ctx_layers=4, den_layers=7),
        # Paper / Meta `two_tower_diffusion_lcm_1_6B`: 1,645,538,304 (see module docstring).
        "1.6B": dict(d_model=2048, n_heads=16, ffn_dim=8192, ctx_layers=5, den_layers=13),
        # Paper / Meta `two_tower_diffusion_lcm_7B`: 6,930,781,696, equal to Meta's count.
        "7B": dict(d_model=4096, n_heads=32, ffn_dim=16384, ctx_layers=5, den_layers=14),
    }


class TwoTowerLCM(ConceptNetwork, config=TwoTowerConfig):
    """Causal contextualizer over clean concepts + AdaLN denoiser cross-attending to it."""

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__(config)
        c = config
        # Contextualizer tower.
        self.ctx_prenet = nn.Linear(c.sonar_dim, c.d_model)
        self.contextualizer = c.causal_transformer(c.ctx_layers)
        # Denoiser tower.
        self.time_embed = TimestepEmbedding(c.d_model, c.timestep_freq_dim)
        self.den_prenet = nn.Linear(c.sonar_dim, c.d_model)
        self.den_layers = nn.ModuleList(
            DenoiserBlock(**c.layer_kwargs()) for _ in range(c.den_layers)
        )
        self.den_norm = RMSNorm(c.d_model, c.norm_eps)
        self.den_postnet = nn.Linear(c.d_model, c.sonar_dim)

    # ---- contextualizer ------------------------------------------------------------------------

    def new_cache(self) -> KVCache:
        """Empty KV cache for incremental `contextualize`."""
        return self.contextualizer.new_cache()

    def contextualize(
        self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """x: (B, T, D) clean concepts (only the new ones with a cache) -> ctx (B, T, d)."""
        return self.contextualizer(self.ctx_prenet(x), mask, cache)  # (B, T, d)

    @staticmethod
    def shift_context(ctx: Tensor, include_last: bool = False) -> Tensor:
        """[0, ctx_0, ..., ctx_{T-2}] (B, T, d); with include_last, [0, ctx_0, ..., ctx_{T-1}]
        (B, T+1, d), the context slots needed to generate concept T."""
        zero = ctx.new_zeros(ctx.size(0), 1, ctx.size(2))  # (B, 1, d)
        body = ctx if include_last else ctx[:, :-1]
        return torch.cat((zero, body), dim=1)

    def precompute_cross_kv(self, ctx_shifted: Tensor) -> CrossKV:
        """Keys/values of every denoiser cross-attention for a shifted context (B, S, d).

        They depend on the context only, not on x_t or t, so a sampler computes them once per
        generated concept and reuses them for all its denoising steps.
        """
        return [blk.cross_attn.project_kv(ctx_shifted) for blk in self.den_layers]

    # ---- denoiser ------------------------------------------------------------------------------

    @staticmethod
    def _cross_mask(
        batch: int,
        n_query: int,
        n_slots: int,
        mask: Tensor | None,
        drop_context: Tensor | None,
        device: torch.device,
    ) -> Tensor | None:
        """Bool (B|1, 1, Tq, S): query q is concept i = S - Tq + q and sees slots 0..i."""
        q_pos = torch.arange(n_slots - n_query, n_slots, device=device)[:, None]  # (Tq, 1)
        k_pos = torch.arange(n_slots, device=device)[None, :]  # (1, S)
        allowed = (k_pos <= q_pos)[None]  # (1, Tq, S)
        if mask is not None:
            if mask.size(1) < n_slots - 1:
                raise ValueError(f"mask covers {mask.size(1)} concepts, need {n_slots - 1}")
            # Slot 0 is the zero vector (always valid); slot j >= 1 holds ctx_{j-1}.
            slot_valid = torch.cat((mask.new_ones(batch, 1), mask[:, : n_slots - 1]), dim=1)
            allowed = allowed & slot_valid[:, None, :]  # (B, Tq, S)
        if drop_context is not None:
            only_zero = (k_pos == 0)[None]  # (1, 1, S)
            allowed = torch.where(drop_context[:, :, None], only_zero, allowed)  # (B, Tq, S)
        return allowed[:, None]

    def denoise(
        self,
        x_t: Tensor,
        t: Tensor,
        ctx: Tensor | None = None,
        mask: Tensor | None = None,
        drop_context: Tensor | None = None,
        *,
        cross_kv: CrossKV | None = None,
    ) -> Tensor:
        """Predict clean concepts (x0) from noisy ones.

        Args:
            x_t: (B, Tq, D) noisy concepts: the last Tq of the S context positions (Tq = S for
                training; Tq = 1 to denoise only the last one).
            t: (B, Tq) or (B,) integer diffusion timesteps.
            ctx: (B, T, d) contextualizer output; shifted here (S = T). Ignored given cross_kv.
            mask: (B, >= S-1) bool validity of the clean concepts behind the context.
            drop_context: (B, Tq) bool; True = this position sees only the zero vector (CFG).
            cross_kv: output of `precompute_cross_kv(ctx_shifted)`, reused across steps.

        Returns:
            (B, Tq, D) x0 predictions.
        """
        if cross_kv is None:
            if ctx is None:
                raise ValueError("pass either ctx or cross_kv")
            cross_kv = self.precompute_cross_kv(self.shift_context(ctx))
        B, Tq, _ = x_t.shape
        S = cross_kv[0][0].size(2)
        if Tq > S:
            raise ValueError(f"{Tq} noisy positions but only {S} context slots")
        if t.dim() == 1:
            t = t[:, None].expand(B, Tq)
        cross_mask = self._cross_mask(B, Tq, S, mask, drop_context, x_t.device)

        temb = self.time_embed(t)  # (B, Tq, d)
        h = self.den_prenet(x_t)  # (B, Tq, d)
        for blk, kv in zip(self.den_layers, cross_kv, strict=True):
            h = blk(h, temb, kv, cross_mask)  # (B, Tq, d)
        return self.den_postnet(self.den_norm(h))  # (B, Tq, D)

    # ---- denoiser inference fast path -----------------------------------------------------------

    def _denoiser_signature(self) -> tuple:
        """Identity and in-place version of every weight a plan copies: an optimizer step or a
        `load_state_dict` bumps a version, which invalidates the cached plans. Weights made
        under `torch.inference_mode` have no version counter and cannot change in place
        afterwards, so their identity alone is their signature."""
        mods = (self.time_embed, self.den_prenet, self.den_postnet, self.den_layers)
        return tuple(
            (p.data_ptr(), -1 if p.is_inference() else p._version)
            for m in mods
            for p in m.parameters()
        )

    @torch.no_grad()
    def denoiser_plan(
        self,
        num_train_timesteps: int,
        *,
        transposed: bool | None = None,
        diagonal: bool = True,
        onednn: bool | None = None,
    ) -> DenoiserPlan:
        """The :class:`DenoiserPlan` for timesteps 0..num_train_timesteps-1, cached per model.

        Args:
            num_train_timesteps: the scheduler's T (the table covers every timestep, so any
                inference step count reuses it).
            transposed: store weights as (in, out) for few-row products
                (:class:`~lcm.nn.PreparedLinear`); None = on CPU for d_model >= 512 only (a
                second copy of the denoiser's weights).
            diagonal: compute the diagonal self-attention as one fused map W_o W_v (no Q/K
                projections, no attention kernel); False keeps the general attention path.
            onednn: products of 2 or more rows through oneDNN-packed weight copies
                (:class:`~lcm.nn.PreparedLinear`; replaces ``transposed``); None = where
                ``transposed`` would be chosen, for fp32 with oneDNN available.
        """
        w = self.den_prenet.weight
        big_cpu = w.device.type == "cpu" and self.config.d_model >= 512
        if onednn is None:
            # measured (bench/RESULTS.md, 2026-11-29): a 2-row product 1.3-1.5x faster than
            # addmm on the (in, out) copy at d=1024
            onednn = big_cpu and w.dtype == torch.float32 and torch.backends.mkldnn.is_available()
        if transposed is None:
            # measured (bench/RESULTS.md): 1.03-1.5x at d=1024, 0.72-0.76x at d=32, where the
            # extra reshapes cost more than the layout saves
            transposed = big_cpu
        if onednn:
            transposed = False
        key = (num_train_timesteps, transposed, diagonal, onednn, w.device, w.dtype)
        sig = self._denoiser_signature()
        cached = _PLANS.setdefault(self, {}).get(key)
        if cached is not None and cached[0] == sig:
            return cached[1]
        t = torch.arange(num_train_timesteps, device=w.device)  # (T,)
        temb = self.time_embed(t)  # (T, d)
        plan = DenoiserPlan(
            modulation=torch.stack([blk.modulation_table(temb) for blk in self.den_layers]),
            blocks=[blk.prepare(transposed, diagonal, onednn) for blk in self.den_layers],
            prenet=PreparedLinear.of(w, self.den_prenet.bias, transposed, onednn),
            postnet=PreparedLinear.of(
                self.den_postnet.weight, self.den_postnet.bias, transposed, onednn
            ),
        )  # modulation: (L, T, 9, d)
        _PLANS[self] = {k: v for k, v in _PLANS[self].items() if v[0] == sig}  # drop stale
        _PLANS[self][key] = (sig, plan)
        return plan

    def cross_mask(
        self,
        batch: int,
        n_query: int,
        n_slots: int,
        mask: Tensor | None = None,
        drop_context: Tensor | None = None,
    ) -> Tensor | None:
        """The denoiser's cross-attention mask (see `denoise`), to build once per concept for
        :meth:`denoise_planned`."""
        device = self.den_prenet.weight.device
        return self._cross_mask(batch, n_query, n_slots, mask, drop_context, device)

    @torch.no_grad()
    def prepare_cross(
        self,
        plan: DenoiserPlan,
        cross_kv: CrossKV,
        mask: Tensor | None,
        fold: bool | None = None,
    ) -> list[PreparedCross]:
        """Every denoiser layer's cross-attention prepared for one generated concept (one
        query per row; :class:`~lcm.nn.PreparedCross`), for :meth:`denoise_planned`.

        The rows of a denoising call are then the B conditional rows of ``cross_kv`` followed,
        under guidance, by unconditional ones (which see only the zero slot).

        Args:
            plan: :meth:`denoiser_plan` of this model.
            cross_kv: :meth:`precompute_cross_kv` of ``shift_context(ctx, include_last=True)``,
                (B, H, S, hd) per layer, S = T + 1.
            mask: (B, T) bool validity of the context concepts, or None (all valid).
            fold: fold the query/output projections into the context; None = when that reads
                fewer numbers per step (B * H * S < d_model).
        """
        k = cross_kv[0][0]  # (B, H, S, hd)
        B, H, S, _ = k.shape
        if fold is None:
            fold = B * H * S < self.config.d_model
        slot_valid = None
        if mask is not None:  # slot 0 is the zero vector (always valid); slot j holds ctx_{j-1}
            slot_valid = torch.cat((mask.new_ones(B, 1), mask[:, : S - 1]), dim=1)  # (B, S)
        return [
            blk.prepare_cross(prep, kv, slot_valid, fold)
            for blk, prep, kv in zip(self.den_layers, plan.blocks, cross_kv, strict=True)
        ]

    def denoise_planned(
        self,
        x_t: Tensor,
        t: Tensor,
        plan: DenoiserPlan,
        cross_kv: CrossKV | None,
        cross_mask: Tensor | None,
        cross: list[PreparedCross] | None = None,
    ) -> Tensor:
        """:meth:`denoise` in eval mode from a :class:`DenoiserPlan`: equal up to rounding.

        Args:
            x_t: (B, Tq, D) noisy concepts.
            t: (B, Tq) or (B,) integer timesteps in [0, T_train).
            plan: :meth:`denoiser_plan` of this model (built after the last weight update).
            cross_kv: :meth:`precompute_cross_kv` of the shifted context.
            cross_mask: :meth:`cross_mask` for these rows (B, Tq, S slots).
            cross: :meth:`prepare_cross` of this concept (Tq = 1), replacing ``cross_kv`` and
                ``cross_mask``.

        Returns:
            (B, Tq, D) x0 predictions.
        """
        B, Tq, _ = x_t.shape
        L, _, n_mod, d = plan.modulation.shape
        if t.dim() == 1:  # one timestep per row: gather per row, broadcast over positions
            mod = plan.modulation[:, t].view(L, B, 1, n_mod, d)  # (L, B, 1, 9, d)
        else:
            mod = plan.modulation[:, t.reshape(-1)].view(L, B, Tq, n_mod, d)  # (L, B, Tq, 9, d)
        h = plan.prenet(x_t)  # (B, Tq, d)
        if cross is not None:
            for blk, prep, m, c in zip(self.den_layers, plan.blocks, mod, cross, strict=True):
                h = blk.forward_prepared(h, m, prep, None, None, c)  # (B, 1, d)
        else:
            for blk, prep, m, kv in zip(self.den_layers, plan.blocks, mod, cross_kv, strict=True):
                h = blk.forward_prepared(h, m, prep, kv, cross_mask)  # (B, Tq, d)
        return plan.postnet(self.den_norm(h))  # (B, Tq, D)

    def forward(
        self,
        x_clean: Tensor,
        x_noisy: Tensor,
        t: Tensor,
        mask: Tensor | None = None,
        drop_context: Tensor | None = None,
    ) -> Tensor:
        """Training pass: x0 predictions (B, T, D); position i predicts x_clean[:, i] from
        x_noisy[:, i], t[:, i] and x_clean[:, :i]."""
        ctx = self.contextualize(x_clean, mask)  # (B, T, d)
        return self.denoise(x_noisy, t, ctx, mask, drop_context)
