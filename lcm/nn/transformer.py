"""Transformer stacks: a pre-norm causal decoder over (B, T, d) and the AdaLN denoiser block.

`CausalTransformer` is the contextualizer of every LCM family (Base-LCM, Two-Tower's context
tower, One-Tower). Layout, as in Meta's LCM presets: pre-norm RMSNorm, RoPE in self-attention,
SwiGLU FFN, residual dropout, and a final RMSNorm after the last layer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcm.nn.attention import KVCache, LayerKVCache, MultiheadAttention
from lcm.nn.layers import AdaLNModulation, PreparedLinear, RMSNorm, Rotation, SwiGLU, modulate


class TransformerBlock(nn.Module):
    """x <- x + drop(attn(norm(x))); x <- x + drop(ffn(norm(x)))   (pre-norm, Xiong et al. 2020)."""

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
        rope_theta: float | None = 10_000.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(d_model, norm_eps)
        self.attn = MultiheadAttention(
            d_model, n_heads, bias=bias, dropout=attn_dropout, rope_theta=rope_theta
        )
        self.ffn_norm = RMSNorm(d_model, norm_eps)
        self.ffn = SwiGLU(d_model, ffn_dim, multiple_of=ffn_multiple_of, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None,
        is_causal: bool,
        positions: Tensor | Rotation,
        cache: LayerKVCache | None = None,
        update_cache: bool = True,
    ) -> Tensor:
        h = self.attn(
            self.attn_norm(x),
            attn_mask=attn_mask,
            is_causal=is_causal,
            positions=positions,
            cache=cache,
            update_cache=update_cache,
        )  # (B, T, d)
        x = x + self.drop(h)
        return x + self.drop(self.ffn(self.ffn_norm(x)))  # (B, T, d)


def causal_allowed(
    start: int,
    length: int,
    device: torch.device | None,
    key_mask: Tensor | None = None,
    structure: Tensor | None = None,
) -> Tensor:
    """Bool (B|1, 1, T, S) attention mask of the queries at absolute positions
    ``start .. length - 1`` (T of them) over the keys ``0 .. length - 1`` (S = ``length``).

    Query t may attend key s when ``s <= start + t`` (or where ``structure`` (B|1, T, S) allows
    it, replacing that causal rule) and s is valid (``key_mask`` (B, S), None = all valid); it
    always sees itself, so no softmax row is empty (an all-masked row gives NaN in some SDPA
    kernels).
    """
    q_pos = torch.arange(start, length, device=device)[:, None]  # (T, 1) absolute index
    k_pos = torch.arange(length, device=device)[None, :]  # (1, S)
    allowed = structure if structure is not None else (k_pos <= q_pos)[None]  # (B|1, T, S)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, :]  # (B, T, S)
    return (allowed | (k_pos == q_pos)[None])[:, None]  # (B|1, 1, T, S)


class CausalTransformer(nn.Module):
    """Pre-norm causal transformer decoder over a (B, T, d) sequence, with an optional KV cache.

    Position t attends to positions <= t. With a cache, `forward` takes only the new positions,
    attends to everything cached plus causally to the new ones, appends the new keys/values, and
    returns outputs for the new positions only; these equal the full forward over the whole
    sequence (tested).

    Padded keys are never attended to. Every query may always attend to itself, even a padded
    one: for a query with no allowed key (e.g. left padding) some SDPA kernels return NaN, and
    a NaN value vector then leaks into valid rows through 0 * NaN inside softmax(.) @ V of the
    next layer.
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        *,
        attn_dropout: float = 0.0,
        ffn_multiple_of: int = 256,
        bias: bool = True,
        rope_theta: float = 10_000.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(
            TransformerBlock(
                d_model,
                n_heads,
                ffn_dim,
                dropout,
                attn_dropout=attn_dropout,
                ffn_multiple_of=ffn_multiple_of,
                bias=bias,
                rope_theta=rope_theta,
                norm_eps=norm_eps,
            )
            for _ in range(n_layers)
        )
        self.norm = RMSNorm(d_model, norm_eps)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.layers))

    def plan(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        *,
        attn_mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> StackPlan:
        """What :meth:`forward` derives from its arguments besides ``x``'s values: the final
        attention mask, RoPE angles (once for every layer) and the key mask to store. A caller
        that queries the same cache several times with the same structure (One-Tower's
        denoising steps) builds it once and passes it to ``forward(plan=...)``.

        No host sync: a ``mask`` given is stored as the key mask, whatever its values. A
        generation step whose prompt is all valid passes ``mask=None`` instead
        (:func:`lcm.objectives.step.prefill_mask` checks once per prompt, outside any compiled
        graph), so its later single-position steps need no mask at all.
        """
        B, T, _ = x.shape
        offset = cache.length if cache is not None else 0
        S = offset + T
        if positions is None:
            positions = torch.arange(offset, S, device=x.device)  # (T,)

        key_mask = mask
        if cache is not None and cache.key_mask is not None:
            new = mask if mask is not None else x.new_ones(B, T, dtype=torch.bool)
            key_mask = torch.cat((cache.key_mask, new), dim=1)  # (B, S)
        elif cache is not None and mask is not None and offset > 0:
            key_mask = torch.cat((mask.new_ones(B, offset), mask), dim=1)  # (B, S)

        # Plain causal, nothing cached, no padding: let SDPA pick its fused causal kernel.
        # A branch, not `... and offset == 0`: under torch.compile(dynamic=True) the cache
        # length is symbolic and SDPA's is_causal must be a real bool (a SymBool graph-breaks in
        # every layer); the branch guards on "empty cache" (one graph for the prefill, one for
        # cached steps).
        is_causal = False
        if attn_mask is None and key_mask is None and offset == 0:
            is_causal = True
        allowed = None
        if is_causal:
            pass
        elif T == 1 and attn_mask is None and mask is None:
            # One valid new query after the cache: every stored key is earlier and the new key
            # is itself, so the mask is the keys' validity alone.
            if key_mask is not None:
                allowed = key_mask[:, None, None, :]  # (B, 1, 1, S)
        else:
            allowed = causal_allowed(offset, S, x.device, key_mask, attn_mask)  # (B|1, 1, T, S)
        rope = self.layers[0].attn.rope if len(self.layers) else None
        rotation = rope.rotation(positions, x.device) if rope is not None else positions
        return StackPlan(allowed, is_causal, rotation, key_mask, S)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        *,
        attn_mask: Tensor | None = None,
        positions: Tensor | None = None,
        update_cache: bool = True,
        plan: StackPlan | None = None,
    ) -> Tensor:
        """
        Args:
            x: (B, T, d) inputs for the T new positions.
            mask: (B, T) bool padding mask of the new positions, True = valid. None = all valid.
            cache: KV cache of earlier positions; updated in place unless update_cache=False.
            attn_mask: (B|1, T, S) bool structure mask replacing the causal one (S = cached + T),
                e.g. One-Tower's interleaved mask. Padding and the self-diagonal are still applied.
            positions: (T,) or (B, T) RoPE positions; default cache.length + arange(T).
            update_cache: False attends to the cache and the new positions without storing them.
            plan: :meth:`plan` of the same arguments, built earlier (then ``mask``,
                ``attn_mask`` and ``positions`` are not read).

        Returns:
            (B, T, d) final-normed hidden states of the new positions.
        """
        if plan is None:
            plan = self.plan(x, mask, cache, attn_mask=attn_mask, positions=positions)
        for i, layer in enumerate(self.layers):
            x = layer(
                x,
                attn_mask=plan.allowed,
                is_causal=plan.is_causal,
                positions=plan.rotation,
                cache=cache.layers[i] if cache is not None else None,
                update_cache=update_cache,
            )  # (B, T, d)

        if cache is not None and update_cache:
            if plan.key_mask is not None:
                cache.key_mask = plan.key_mask
            cache.length = plan.length
        return self.norm(x)  # (B, T, d)


class StackPlan(NamedTuple):
    """:meth:`CausalTransformer.plan`: everything a forward derives from the structure.

    Attributes:
        allowed: bool (B|1, 1, T, S) attention mask, True = may attend; None = no mask.
        is_causal: plain causal attention without a mask (SDPA's fused kernel).
        rotation: RoPE angles of the new positions (or the positions, without RoPE).
        key_mask: (B, S) validity of every key after this forward, or None (all valid).
        length: S, the cache length after this forward (if it updates the cache).
    """

    allowed: Tensor | None
    is_causal: bool
    rotation: Any
    key_mask: Tensor | None
    length: int


class PreparedDenoiserBlock(NamedTuple):
    """Inference copies of one :class:`DenoiserBlock`'s weights (see `DenoiserBlock.prepare`).

    Attributes:
        self_ov: the diagonal self-attention as one map, W_o W_v h + (W_o b_v + b_o); None runs
            the general attention module instead (Q/K projections and SDPA with a diagonal mask).
        cross_q: cross-attention query projection.
        cross_out: cross-attention output projection.
        ffn_gate: SwiGLU gate projection; with ``ffn_up=None``, the gate and up projections
            stacked into one map d -> 2 * hidden (one product instead of two; a copy).
        ffn_up: SwiGLU up projection, or None (stacked into ``ffn_gate``).
        ffn_down: SwiGLU down projection.
    """

    self_ov: PreparedLinear | None
    cross_q: PreparedLinear
    cross_out: PreparedLinear
    ffn_gate: PreparedLinear
    ffn_up: PreparedLinear | None
    ffn_down: PreparedLinear


class PreparedCross(NamedTuple):
    """One denoiser layer's cross-attention for one query per row, prepared once per generated
    concept (:meth:`DenoiserBlock.prepare_cross`).

    The first ``n_cond`` rows are conditional: each attends to its document's context slots.
    The other rows (the unconditional half of classifier-free guidance) see only slot 0, the
    zero vector, whose key and value are the projection biases: softmax over one key is 1, so
    their output is one constant, ``uncond``, and they need no query, attention or output
    product at all.

    Folded (``q_fold`` not None), the query and output projections are multiplied into the
    context once per concept: per head h, ``q_h . k_s = h . (W_q,h^T k_s) + b_q,h . k_s`` and
    ``W_o,h (sum_s p_s v_s) = sum_s p_s (W_o,h v_s)``, so a step reads 2 * B * H * S * d numbers
    instead of the 2 * d * d of W_q and W_o (fewer while B * H * S < d: a short context).

    Attributes:
        n_cond: conditional rows (the first ones).
        uncond: (1, 1, d) the output of every unconditional row.
        q_fold: (B, d, H*S) ``W_q,h^T k_s / sqrt(hd)`` per document, or None (not folded).
        bias: (B, 1, H*S) ``b_q,h . k_s / sqrt(hd)``, -inf on padded slots (folded only).
        out_fold: (B, H*S, d) ``W_o,h v_s`` per document (folded only).
        out_bias: (d,) the output projection's bias, or None (folded only).
        kv: keys, values (B, H, S, hd) (not folded).
        mask: (B, 1, 1, S) bool slot validity, or None (not folded).
    """

    n_cond: int
    uncond: Tensor
    q_fold: Tensor | None
    bias: Tensor | None
    out_fold: Tensor | None
    out_bias: Tensor | None
    kv: tuple[Tensor, Tensor] | None
    mask: Tensor | None


class DenoiserBlock(nn.Module):
    """Two-Tower denoiser layer: AdaLN-modulated diagonal self-attention, cross-attention, SwiGLU.

    For each sub-block f with its (shift, scale, gate) from the timestep embedding c (DiT eq. in
    section 3.2, "adaLN-Zero"):
        x <- x + gate(c) * drop(f(norm(x) * (1 + scale(c)) + shift(c)))
    The modulation is zero-initialized, so each sub-block, hence the whole block, starts as the
    identity.

    Self-attention is diagonal (each position attends only to itself, as Meta's
    `NoAttentionMaskFactory`): positions of the denoiser never exchange information, so one
    position can be denoised alone with exactly the same result. Softmax over a single key is 1,
    so it reduces to out_proj(v_proj(h)); it is still computed through SDPA so that q_proj and
    k_proj stay in the autograd graph (zero gradient, but DDP does not flag them as unused) and
    the parameter layout matches Meta's checkpoints and counts.
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
        d_cond: int | None = None,
    ) -> None:
        super().__init__()
        self.self_attn_norm = RMSNorm(d_model, norm_eps)
        self.self_attn = MultiheadAttention(d_model, n_heads, bias=bias, dropout=attn_dropout)
        self.cross_attn_norm = RMSNorm(d_model, norm_eps)
        self.cross_attn = MultiheadAttention(d_model, n_heads, bias=bias, dropout=attn_dropout)
        self.ffn_norm = RMSNorm(d_model, norm_eps)
        self.ffn = SwiGLU(d_model, ffn_dim, multiple_of=ffn_multiple_of, bias=bias)
        self.modulation = AdaLNModulation(d_cond or d_model, d_model, n_sub=3)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        temb: Tensor,
        cross_kv: tuple[Tensor, Tensor],
        cross_mask: Tensor | None,
    ) -> Tensor:
        """
        Args:
            x: (B, T, d) noisy-concept hidden states.
            temb: (B, T, d_cond) timestep embedding per position.
            cross_kv: keys, values (B, H, S, hd) of the shifted context (`project_kv`).
            cross_mask: bool broadcastable to (B, H, T, S), True = may attend.

        Returns:
            (B, T, d)
        """
        (sh_sa, sc_sa, g_sa), (sh_ca, sc_ca, g_ca), (sh_ff, sc_ff, g_ff) = self.modulation(temb)
        diag = torch.eye(x.size(1), dtype=torch.bool, device=x.device)  # (T, T)

        h = modulate(self.self_attn_norm(x), sh_sa, sc_sa)  # (B, T, d)
        x = x + g_sa * self.drop(self.self_attn(h, attn_mask=diag))
        h = modulate(self.cross_attn_norm(x), sh_ca, sc_ca)
        x = x + g_ca * self.drop(self.cross_attn(h, kv=cross_kv, attn_mask=cross_mask))
        h = modulate(self.ffn_norm(x), sh_ff, sc_ff)
        return x + g_ff * self.drop(self.ffn(h))  # (B, T, d)

    # ---- inference fast path -------------------------------------------------------------------

    @torch.no_grad()
    def prepare(
        self, transposed: bool = False, diagonal: bool = True, onednn: bool = False
    ) -> PreparedDenoiserBlock:
        """Copies of this block's weights for :meth:`forward_prepared` (inference only).

        Args:
            transposed: store weights as (in, out) for few-row CPU products
                (:class:`~lcm.nn.PreparedLinear`; a copy of the block's weights). False: the
                parameters themselves, plus the fused W_ov (d x d).
            diagonal: fuse the diagonal self-attention into one map W_o W_v (the product is
                taken in float64, then rounded once); False keeps the general attention path.
            onednn: products of several rows through oneDNN-packed copies (CPU, fp32;
                :class:`~lcm.nn.PreparedLinear`); replaces ``transposed``.
        """
        if onednn:
            transposed = False
        sa, ca, ffn = self.self_attn, self.cross_attn, self.ffn
        ov = None
        if diagonal:
            wv, wo = sa.v_proj.weight.double(), sa.out_proj.weight.double()  # (d, d) each
            w_ov = (wo @ wv).to(sa.v_proj.weight.dtype)  # (d, d)
            b_ov = None
            if sa.out_proj.bias is not None or sa.v_proj.bias is not None:
                b = torch.zeros_like(wo[:, 0])  # (d,) float64
                if sa.v_proj.bias is not None:
                    b = b + wo @ sa.v_proj.bias.double()
                if sa.out_proj.bias is not None:
                    b = b + sa.out_proj.bias.double()
                b_ov = b.to(w_ov.dtype)
            ov = PreparedLinear.of(w_ov, b_ov, transposed, onednn)
        gate, up = ffn.gate_proj, ffn.up_proj
        if transposed or onednn:  # a copy anyway: stack gate and up into one product
            gu_bias = None if gate.bias is None else torch.cat((gate.bias, up.bias))  # (2h,)
            gu = torch.cat((gate.weight, up.weight))  # (2h, d)
            ffn_gate = PreparedLinear.of(gu, gu_bias, transposed, onednn)
            ffn_up = None
        else:  # no copies of the big FFN weights (GPU memory)
            ffn_gate = PreparedLinear.of(gate.weight, gate.bias, False)
            ffn_up = PreparedLinear.of(up.weight, up.bias, False)
        return PreparedDenoiserBlock(
            self_ov=ov,
            cross_q=PreparedLinear.of(ca.q_proj.weight, ca.q_proj.bias, transposed, onednn),
            cross_out=PreparedLinear.of(ca.out_proj.weight, ca.out_proj.bias, transposed, onednn),
            ffn_gate=ffn_gate,
            ffn_up=ffn_up,
            ffn_down=PreparedLinear.of(
                ffn.down_proj.weight, ffn.down_proj.bias, transposed, onednn
            ),
        )

    @torch.no_grad()
    def prepare_cross(
        self,
        prep: PreparedDenoiserBlock,
        cross_kv: tuple[Tensor, Tensor],
        slot_valid: Tensor | None,
        fold: bool,
    ) -> PreparedCross:
        """This layer's :class:`PreparedCross` for one concept of B documents.

        Args:
            prep: :meth:`prepare` output (its output projection gives ``uncond``).
            cross_kv: keys, values (B, H, S, hd) of the shifted context; slot 0 must be the
                zero vector (:meth:`~lcm.models.TwoTowerLCM.shift_context`).
            slot_valid: (B, S) bool, True = a conditional row may attend to that slot; None =
                every slot.
            fold: fold the query and output projections into the context (see
                :class:`PreparedCross`).
        """
        attn = self.cross_attn
        k, v = cross_kv  # (B, H, S, hd)
        B, H, S, hd = k.shape
        # slot 0 is the zero vector: its value is v_proj's bias, the same for every document
        uncond = prep.cross_out(v[:1, :, :1].transpose(1, 2).flatten(2))  # (1, 1, d)
        if not fold:
            mask = None if slot_valid is None else slot_valid[:, None, None, :]
            return PreparedCross(B, uncond, None, None, None, None, (k, v), mask)
        scale = hd**-0.5
        wq = attn.q_proj.weight.view(H, hd, -1)  # (H, hd, d)
        q_fold = torch.einsum("bhsj,hjd->bdhs", k, wq).mul_(scale).reshape(B, -1, H * S)
        bias = k.new_zeros(B, H, S)
        if attn.q_proj.bias is not None:
            bias = torch.einsum("bhsj,hj->bhs", k, attn.q_proj.bias.view(H, hd)).mul_(scale)
        if slot_valid is not None:
            bias = bias.masked_fill(~slot_valid[:, None, :], float("-inf"))
        wo = attn.out_proj.weight.view(-1, H, hd)  # (d, H, hd)
        out_fold = torch.einsum("bhsj,dhj->bhsd", v, wo).reshape(B, H * S, -1)  # (B, H*S, d)
        return PreparedCross(
            B, uncond, q_fold, bias.reshape(B, 1, H * S), out_fold, attn.out_proj.bias, None, None
        )

    def _cross_prepared(self, h: Tensor, prep: PreparedDenoiserBlock, c: PreparedCross) -> Tensor:
        """Cross-attention of (M, 1, d) queries from a :class:`PreparedCross` -> (M, 1, d)."""
        B = c.n_cond
        hc = h[:B] if h.size(0) > B else h  # (B, 1, d) conditional rows
        attn = self.cross_attn
        if c.q_fold is not None:
            scores = torch.baddbmm(c.bias, hc, c.q_fold)  # (B, 1, H*S)
            p = torch.softmax(scores.view(B, attn.n_heads, -1), dim=-1).view(B, 1, -1)
            out = torch.bmm(p, c.out_fold)  # (B, 1, d)
            if c.out_bias is not None:
                out = out + c.out_bias
        else:
            q = prep.cross_q(hc).unflatten(-1, (attn.n_heads, attn.head_dim)).transpose(1, 2)
            k, v = c.kv  # (B, H, S, hd)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=c.mask)  # (B, H, 1, hd)
            out = prep.cross_out(y.transpose(1, 2).flatten(2))  # (B, 1, d)
        if h.size(0) == B:
            return out
        return torch.cat((out, c.uncond.expand(h.size(0) - B, -1, -1)))  # (M, 1, d)

    def modulation_table(self, temb: Tensor) -> Tensor:
        """AdaLN parameters for timestep embeddings (N, d_cond) -> (N, 9, d), rows
        [shift, 1 + scale, gate] x [self-attn, cross-attn, FFN]; the form `forward_prepared`
        takes (the "1 +" is added here once instead of at every call)."""
        params = self.modulation.proj(self.modulation.act(temb))  # (N, 9d)
        table = params.unflatten(-1, (9, -1)).clone()  # (N, 9, d)
        table[:, 1::3] += 1
        return table

    def forward_prepared(
        self,
        x: Tensor,
        mod: Tensor,
        prep: PreparedDenoiserBlock,
        cross_kv: tuple[Tensor, Tensor] | None,
        cross_mask: Tensor | None,
        cross: PreparedCross | None = None,
    ) -> Tensor:
        """:meth:`forward` in eval mode, from precomputed modulation and prepared weights.

        Args:
            x: (B, T, d) noisy-concept hidden states.
            mod: (B, T, 9, d) rows of :meth:`modulation_table` for each position's timestep.
            prep: :meth:`prepare` output.
            cross_kv: keys, values (B, H, S, hd) of the shifted context.
            cross_mask: bool broadcastable to (B, H, T, S), True = may attend.
            cross: the cross-attention prepared for this concept (:meth:`prepare_cross`; T = 1);
                replaces ``cross_kv`` and ``cross_mask``.

        Returns:
            (B, T, d), equal to ``forward`` up to float rounding (tested).
        """
        if self.training:
            raise RuntimeError("forward_prepared is an inference path; call .eval() first")
        m = mod.unbind(-2)  # 9 x (B, T, d)
        h = torch.addcmul(m[0], self.self_attn_norm(x), m[1])  # norm(x) * (1 + scale) + shift
        if prep.self_ov is None:
            diag = torch.eye(x.size(1), dtype=torch.bool, device=x.device)  # (T, T)
            sa = self.self_attn(h, attn_mask=diag)
        else:
            sa = prep.self_ov(h)  # softmax over one key is 1: out_proj(v_proj(h))
        x = torch.addcmul(x, m[2], sa)  # (B, T, d)

        h = torch.addcmul(m[3], self.cross_attn_norm(x), m[4])
        if cross is not None:
            x = torch.addcmul(x, m[5], self._cross_prepared(h, prep, cross))
        else:
            attn = self.cross_attn
            q = prep.cross_q(h).unflatten(-1, (attn.n_heads, attn.head_dim)).transpose(1, 2)
            k, v = cross_kv  # (B, H, S, hd)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=cross_mask)  # (B, H, T, hd)
            x = torch.addcmul(x, m[5], prep.cross_out(y.transpose(1, 2).flatten(2)))

        h = torch.addcmul(m[6], self.ffn_norm(x), m[7])
        if prep.ffn_up is None:
            gate, up = prep.ffn_gate(h).chunk(2, dim=-1)  # (B, T, hidden) each
        else:
            gate, up = prep.ffn_gate(h), prep.ffn_up(h)  # (B, T, hidden) each
        return torch.addcmul(x, m[8], prep.ffn_down(F.silu(gate) * up))  # (B, T, d)
