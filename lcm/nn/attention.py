"""Multi-head attention over `F.scaled_dot_product_attention`, and an incremental KV cache.

Mask convention everywhere in `lcm`: boolean, True = this query may attend to this key (the SDPA
convention). Padding masks are (B, T) bools with True = valid concept.

Projections carry biases (q, k, v and output) because Meta's LCM attention does
(`StandardMultiheadAttention(bias=True)` and `mha_output_proj_bias=True` in every preset).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcm.nn.layers import RotaryEmbedding, Rotation


class LayerKVCache:
    """Keys and values of one attention layer for the positions processed so far.

    Stored in a buffer that grows by doubling, so appending one position per generated concept
    costs amortized O(1) copies instead of one full `torch.cat` per step. Meant for inference
    (`torch.no_grad()`): the buffer is written in place.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None  # (B, H, capacity, hd)
        self.v: Tensor | None = None
        self.length = 0

    def extend(self, k: Tensor, v: Tensor, update: bool = True) -> tuple[Tensor, Tensor]:
        """Return (cached + new) keys and values, (B, H, length + T, hd) each.

        With update=False the new positions are attended to but not stored (used to query the
        cache with a position that must not become context, e.g. a noisy concept); the returned
        view is valid until the next call.
        """
        t_new = k.size(2)
        if self.k is None or self.v is None:
            if not update:
                return k, v
            cap = max(16, 2 * t_new)
            self.k = k.new_empty(*k.shape[:2], cap, k.size(3))
            self.v = v.new_empty(*v.shape[:2], cap, v.size(3))
        end = self.length + t_new
        if not update:
            if end > self.k.size(2):  # no spare room: a copy (the next update grows the buffer)
                n = self.length
                return torch.cat((self.k[:, :, :n], k), 2), torch.cat((self.v[:, :, :n], v), 2)
            # Write the query-only positions into the spare capacity past `length` and return a
            # view: O(t_new) per call instead of copying the whole cache (a denoising step of
            # One-Tower queries the cache this way 40 times per concept). `length` is unchanged,
            # so the next update overwrites them.
            self.k[:, :, self.length : end] = k
            self.v[:, :, self.length : end] = v
            return self.k[:, :, :end], self.v[:, :, :end]
        if end >= self.k.size(2):  # keep a spare slot: a query-only call never copies
            cap = 2 * end
            k_buf = self.k.new_empty(*self.k.shape[:2], cap, self.k.size(3))
            v_buf = self.v.new_empty(*self.v.shape[:2], cap, self.v.size(3))
            k_buf[:, :, : self.length] = self.k[:, :, : self.length]
            v_buf[:, :, : self.length] = self.v[:, :, : self.length]
            self.k, self.v = k_buf, v_buf
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """Incremental state of a causal transformer stack: per-layer K/V, key validity, length.

    `length` is the number of positions stored, which is also the RoPE position of the next one.
    `key_mask` (B, length) is the padding mask of the stored positions (None = all valid).
    """

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerKVCache() for _ in range(n_layers)]
        self.key_mask: Tensor | None = None
        self.length = 0


class MultiheadAttention(nn.Module):
    """Scaled dot-product attention with H heads (Vaswani et al. 2017, eq. 1):
    softmax(Q K^T / sqrt(d_head)) V, heads concatenated and projected back to d_model.

    Self-attention: `forward(x, ...)`. Cross-attention: `forward(x, source)` or, with keys and
    values precomputed once by `project_kv(source)`, `forward(x, kv=(k, v))`.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        rope_theta: float | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.rope = RotaryEmbedding(self.head_dim, rope_theta) if rope_theta else None

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.n_heads, self.head_dim)).transpose(1, 2)  # (B,T,d)->(B,H,T,hd)

    def project_kv(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """source (B, S, d) -> keys, values (B, H, S, hd) each, without RoPE."""
        return self._split_heads(self.k_proj(source)), self._split_heads(self.v_proj(source))

    def forward(
        self,
        x: Tensor,
        source: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        positions: Tensor | Rotation | None = None,
        kv: tuple[Tensor, Tensor] | None = None,
        cache: LayerKVCache | None = None,
        update_cache: bool = True,
    ) -> Tensor:
        """
        Args:
            x: queries (B, T, d).
            source: keys/values input (B, S, d) for cross-attention; None = self-attention on x.
            attn_mask: bool, broadcastable to (B, H, T, S); True = may attend.
            is_causal: plain causal mask without materializing it (lets SDPA use flash kernels).
            positions: (T,) or (B, T) RoPE positions of the queries, and of the new keys in
                self-attention, or their ``rope.rotation``. Required when the layer has RoPE.
            kv: precomputed (k, v) from `project_kv`; skips the key/value projections.
            cache: self-attention KV cache; new keys/values are appended (if update_cache).

        Returns:
            (B, T, d)
        """
        q = self._split_heads(self.q_proj(x))  # (B, H, T, hd)
        if self.rope is not None and positions is None:
            raise ValueError("this attention layer uses RoPE: pass `positions`")
        if kv is None:
            k, v = self.project_kv(x if source is None else source)  # (B, H, S_new, hd)
            if self.rope is not None:
                k = self.rope(k, positions)
        else:
            k, v = kv
        if self.rope is not None:
            q = self.rope(q, positions)
        if cache is not None:
            k, v = cache.extend(k, v, update=update_cache)  # (B, H, S, hd)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal and attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, hd)
        return self.out_proj(y.transpose(1, 2).flatten(2))  # (B, T, d)
