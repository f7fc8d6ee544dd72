"""Building blocks shared by every LCM family: RMSNorm, RoPE, SwiGLU, timestep embedding, AdaLN.

The parameter layout follows Meta's `large_concept_model` (fairseq2) so that parameter counts can be
compared one to one:
- RMSNorm has a weight and no bias (their `build_rms_layer_norm` passes `bias=False`).
- SwiGLU has a bias on all three projections and rounds its hidden width like fairseq2's
  `GLUFeedForwardNetwork(inner_dim_scale=2/3, inner_dim_to_multiple=256)`.
- The timestep embedding is DiT's: a 256-d [cos, sin] sinusoid, Linear, SiLU, Linear.
- AdaLN is DiT's adaLN-Zero: SiLU then one Linear to (shift, scale, gate) for every sub-block,
  zero-initialized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w   (Zhang & Sennrich 2019).

    Normalizes in fp32 whatever the input dtype, as fairseq2's RMSNorm does: under bf16 the mean of
    squares of a 2048-wide row loses most of its mantissa.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps)  # (..., dim) fp32
        return (y * self.weight.float()).type_as(x)


class Rotation(NamedTuple):
    """Precomputed RoPE angles (:meth:`RotaryEmbedding.rotation`)."""

    cos: Tensor  # (T, hd/2) or (B, 1, T, hd/2)
    sin: Tensor
    head_dim: int
    theta: float


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021, RoFormer eq. 34) on interleaved pairs.

    Pair k of a head, (x_{2k}, x_{2k+1}), is rotated by the angle p * theta^(-2k/head_dim), p the
    position. q.k then depends on positions only through their difference, which is what makes
    the KV cache valid: cached keys keep the rotation of their own absolute position.

    No parameters and no buffers: the angles are recomputed per call (head_dim/2 values per
    position), so a model built on the `meta` device needs no buffer re-initialization.
    """

    def __init__(self, head_dim: int, theta: float = 10_000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta

    def rotation(self, positions: Tensor, device: torch.device | None = None) -> Rotation:
        """(cos, sin) of the angles of ``positions`` ((T,) or (B, T)), shaped to broadcast over
        (B, H, T, hd/2); :meth:`forward` takes them in place of the positions, so a stack whose
        layers share head_dim and theta computes them once per forward instead of per layer."""
        device = positions.device if device is None else device
        exponent = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32)
        inv_freq = self.theta ** (-exponent / self.head_dim)  # (hd/2,)
        angles = positions.to(device, torch.float32)[..., None] * inv_freq  # (T|B,T, hd/2)
        if angles.dim() == 3:
            angles = angles[:, None]  # (B, 1, T, hd/2): broadcast over heads
        return Rotation(angles.cos(), angles.sin(), self.head_dim, self.theta)

    def forward(self, x: Tensor, positions: Tensor | Rotation) -> Tensor:
        """x: (B, H, T, head_dim); positions: (T,) or (B, T) integer positions, or their
        :meth:`rotation` (computed by a RotaryEmbedding of the same head_dim and theta)."""
        if isinstance(positions, Rotation):
            if (positions.head_dim, positions.theta) != (self.head_dim, self.theta):
                raise ValueError("a rotation computed for another head_dim or theta")
            cos, sin = positions.cos, positions.sin
        else:
            cos, sin = self.rotation(positions, x.device)[:2]
        x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, T, hd/2) each
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B,H,T,hd/2,2)
        return out.flatten(-2).type_as(x)  # (B, H, T, hd)


def swiglu_hidden_dim(ffn_dim: int, multiple_of: int = 256, scale: float = 2 / 3) -> int:
    """Hidden width of a SwiGLU FFN with nominal width `ffn_dim`.

    Three matrices instead of two, so the width is scaled by 2/3 to keep the parameter budget of a
    plain ffn_dim FFN (Shazeer 2020), then rounded *up* to a multiple of `multiple_of` for matmul
    efficiency. Same integer arithmetic as fairseq2: int() truncation first, then ceil to the
    multiple. Examples: 8192 -> 5632 (d=2048), 16384 -> 11008 (d=4096).
    """
    hidden = int(ffn_dim * scale)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """FFN(x) = W_down (SiLU(W_gate x) * W_up x)   (Shazeer 2020, "GLU variants", eq. 6)."""

    def __init__(
        self, d_model: int, ffn_dim: int, *, multiple_of: int = 256, bias: bool = True
    ) -> None:
        super().__init__()
        hidden = swiglu_hidden_dim(ffn_dim, multiple_of)
        self.hidden_dim = hidden
        self.gate_proj = nn.Linear(d_model, hidden, bias=bias)
        self.up_proj = nn.Linear(d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (..., d_model)


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """[cos(t f_0..f_{h-1}), sin(t f_0..f_{h-1})] with f_k = max_period^(-k/h), h = dim // 2.

    DiT's timestep features (and Meta's `DiTTimestepEncoder`): cos first, then sin. t may be
    integer diffusion steps of any shape; returns t.shape + (dim,) in fp32.
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (half,)
    args = t.float()[..., None] * freqs  # (..., half)
    emb = torch.cat((args.cos(), args.sin()), dim=-1)  # (..., 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """t -> 256-d sinusoid -> Linear -> SiLU -> Linear -> (..., d_model)   (DiT, Peebles & Xie)."""

    def __init__(self, d_model: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, d_model)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DiT / Meta init: small normal weights, zero biases.
        for fc in (self.fc1, self.fc2):
            nn.init.normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)

    def forward(self, t: Tensor) -> Tensor:
        freq = sinusoidal_embedding(t, self.freq_dim).to(self.fc1.weight.dtype)  # (..., 256)
        return self.fc2(self.act(self.fc1(freq)))  # (..., d_model)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN affine: x * (1 + scale) + shift. With shift = scale = 0 this is x."""
    return x * (1 + scale) + shift


class AdaLNModulation(nn.Module):
    """(shift, scale, gate) for `n_sub` sub-blocks from a conditioning vector (DiT adaLN-Zero).

    A modulated sub-block computes  x + gate * f(modulate(norm(x), shift, scale)).  The projection
    is zero-initialized, so gate = 0 at init and every sub-block starts as the identity; DiT
    (section 3.2) found this the best-conditioned start for diffusion transformers.
    """

    def __init__(self, d_cond: int, d_model: int, n_sub: int = 3) -> None:
        super().__init__()
        self.n_sub = n_sub
        self.act = nn.SiLU()
        self.proj = nn.Linear(d_cond, 3 * n_sub * d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, cond: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """cond: (..., d_cond) -> n_sub tuples (shift, scale, gate), each (..., d_model)."""
        params = self.proj(self.act(cond))  # (..., 3 * n_sub * d_model)
        return [tuple(p.chunk(3, dim=-1)) for p in params.chunk(self.n_sub, dim=-1)]  # type: ignore[misc]


@dataclass(frozen=True)
class PreparedLinear:
    """An inference-only copy of a linear map ``y = x W^T + b``, laid out for few-row inputs.

    ``transposed=True`` stores ``W^T`` contiguous, (in, out), and computes ``addmm(b, x, W^T)``.
    On the 2-core CPU this project benchmarks on (MKL, AMD EPYC), a 2-row fp32 product with a
    (1024, 2816) weight ran about 1.6x faster in that layout than ``F.linear`` on the (out, in)
    parameter (bench/RESULTS.md); it costs a second copy of the weight. ``transposed=False``
    keeps ``F.linear`` (GPUs, or to save memory). Several maps of the same input can be stacked
    into one (e.g. SwiGLU's gate and up projections).

    ``onednn=True`` (CPU, fp32) also keeps a copy packed by oneDNN for products of 2 or more
    rows (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor's CPU linear uses); MKL's
    small-M GEMM reads the weight at about half the speed of its 1-row GEMV, the packed oneDNN
    one ran a 2-row product 1.3-1.5x faster than ``addmm`` on the (in, out) copy (bench/
    RESULTS.md, 2026-11-29). A single row still goes through ``F.linear`` on the (out, in)
    weight (there oneDNN was 0.76-1.0x).
    """

    weight: Tensor  # (in, out) if transposed else (out, in)
    bias: Tensor | None  # (out,)
    transposed: bool
    packed: Tensor | None = None  # oneDNN-packed (out, in) weight (opaque layout), or None

    @classmethod
    def of(
        cls, weight: Tensor, bias: Tensor | None, transposed: bool, onednn: bool = False
    ) -> PreparedLinear:
        """From a (out, in) weight and its bias. Transposed: a copy; else the tensors themselves
        (detached, no copy; a plan holding them is rebuilt when they change in place). With
        ``onednn`` (not transposed), plus a oneDNN-packed copy for several rows."""
        w = weight.detach()
        b = None if bias is None else bias.detach()
        if onednn:
            packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 2)
            return cls(w, b, False, packed)
        w = w.t().contiguous() if transposed else w
        return cls(w, b, transposed)

    def __call__(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out)."""
        if self.packed is not None and x.numel() > x.size(-1):  # 2 or more rows
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if not self.transposed:
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.size(-1))  # (N, in)
        y = rows @ self.weight if self.bias is None else torch.addmm(self.bias, rows, self.weight)
        return y.view(*x.shape[:-1], y.size(-1))  # (..., out)
