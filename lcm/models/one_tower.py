"""One-Tower diffusion LCM (paper section 2.3.3): one causal transformer over interleaved clean
and noisy concepts. Not in Meta's released code; the layout below is ours.

Interleaving (slot = position in the transformer's sequence, length 2T):
    slot 2i   : noisy concept  x~_i = PreNet(x_t_i) + TimestepEmbedding(t_i)
    slot 2i+1 : clean concept  x_i  = PreNet(x_i)
    [x~_0, x_0, x~_1, x_1, ..., x~_{T-1}, x_{T-1}]
Attention (True = may attend):
    clean x_i   -> clean x_j for j <= i            (a causal LM over the clean concepts)
    noisy x~_i  -> clean x_j for j < i, and itself (never its own clean x_i, never other noisy)
Every allowed key sits at an earlier-or-same slot, so the mask is a sub-mask of the causal one.
Both slots of concept i get RoPE position i: the noisy x~_i is "concept i" as far as the
clean prefix is concerned, and relative offsets match those of incremental generation.
The output at slot 2i is the x0-prediction of x_i.

Because clean slots never see noisy ones, the clean slots' hidden states are those of a plain
causal transformer over x_0..x_{T-1}. Generation therefore caches only clean concepts
(`encode_clean(x, cache=cache)`) and denoises the next concept with `denoise_next`, which attends
to the cache and to itself without storing itself; this equals the full forward (tested).

`drop_context` (classifier-free guidance): the noisy x~_i attends only to itself.

Parameter count: PreNet + timestep embedding + causal transformer + PostNet. Meta published no
One-Tower config; our "1.6B" preset reuses the Base-LCM 1.6B tower (32 layers x 2048):
1,649,185,792 + (256*2048 + 2048) + (2048*2048 + 2048) = 1,653,908,480.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lcm.models.base_lcm import BaseLCMConfig
from lcm.models.common import ConceptNetwork, TransformerConfig
from lcm.nn import KVCache, TimestepEmbedding
from lcm.nn.transformer import StackPlan


@dataclass
class OneTowerConfig(TransformerConfig):
    """One-Tower diffusion LCM hyper-parameters.

    Args:
        n_layers: layers of the one tower.
        timestep_freq_dim: width of the sinusoidal timestep features.
        (the shared fields: :class:`~lcm.models.common.TransformerConfig`)
    """

    n_layers: int = 32
    timestep_freq_dim: int = 256

    # The Base-LCM tower sizes plus a timestep embedding: small 209,138,688 parameters, 1.6B
    # 1,653,908,480 (sonar_dim=1024).
    presets: ClassVar[dict[str, dict[str, Any]]] = BaseLCMConfig.presets


class OneTowerLCM(ConceptNetwork, config=OneTowerConfig):
    """One causal tower over [x~_0, x_0, x~_1, x_1, ...]; slot 2i predicts the clean x_i."""

    def __init__(self, config: OneTowerConfig) -> None:
        super().__init__(config)
        c = config
        self.prenet = nn.Linear(c.sonar_dim, c.d_model)
        self.time_embed = TimestepEmbedding(c.d_model, c.timestep_freq_dim)
        self.transformer = c.causal_transformer(c.n_layers)
        self.postnet = nn.Linear(c.d_model, c.sonar_dim)

    def new_cache(self) -> KVCache:
        """Empty KV cache of clean concepts, for `encode_clean` / `denoise_next`."""
        return self.transformer.new_cache()

    def _embed_noisy(self, x_noisy: Tensor, t: Tensor) -> Tensor:
        if t.dim() == 1:
            t = t[:, None].expand(x_noisy.shape[:2])
        return self.prenet(x_noisy) + self.time_embed(t)  # (B, T, d)

    @staticmethod
    def interleaved_mask(
        n_concepts: int, drop_context: Tensor | None = None, device: torch.device | None = None
    ) -> Tensor:
        """Bool (B|1, 2T, 2T) attention structure of the interleaved sequence (module docstring)."""
        slot = torch.arange(2 * n_concepts, device=device)
        concept, is_clean = slot // 2, slot % 2 == 1  # (2T,), (2T,)
        q_c, k_c = concept[:, None], concept[None, :]
        earlier = torch.where(is_clean[:, None], k_c <= q_c, k_c < q_c)  # (2T, 2T)
        diag = slot[:, None] == slot[None, :]
        allowed = (is_clean[None, :] & earlier) | diag  # (2T, 2T)
        if drop_context is None:
            return allowed[None]
        dropped = torch.zeros(
            drop_context.size(0), 2 * n_concepts, dtype=torch.bool, device=device
        )  # (B, 2T)
        dropped[:, 0::2] = drop_context
        return torch.where(dropped[:, :, None], diag[None], allowed[None])  # (B, 2T, 2T)

    def forward(
        self,
        x_clean: Tensor,
        x_noisy: Tensor,
        t: Tensor,
        mask: Tensor | None = None,
        drop_context: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            x_clean: (B, T, D) clean concepts.
            x_noisy: (B, T, D) noisy versions of the same concepts.
            t: (B, T) or (B,) integer diffusion timesteps of x_noisy.
            mask: (B, T) bool, True = valid concept.
            drop_context: (B, T) bool; True = that noisy concept sees no clean context (CFG).

        Returns:
            (B, T, D): position i is the x0-prediction of x_clean[:, i], made from x_noisy[:, i],
            t[:, i] and x_clean[:, :i].
        """
        B, T, _ = x_clean.shape
        h_clean = self.prenet(x_clean)  # (B, T, d)
        h_noisy = self._embed_noisy(x_noisy, t)  # (B, T, d)
        h = torch.stack((h_noisy, h_clean), dim=2).flatten(1, 2)  # (B, 2T, d) [x~0, x0, x~1, ...]
        positions = torch.arange(T, device=h.device).repeat_interleave(2)  # (2T,) 0,0,1,1,...
        slot_mask = mask.repeat_interleave(2, dim=1) if mask is not None else None  # (B, 2T)
        attn = self.interleaved_mask(T, drop_context, h.device)  # (B|1, 2T, 2T)
        out = self.transformer(h, slot_mask, attn_mask=attn, positions=positions)  # (B, 2T, d)
        return self.postnet(out[:, 0::2])  # (B, T, D) from the noisy slots

    def encode_clean(self, x_clean: Tensor, mask: Tensor | None, cache: KVCache) -> None:
        """Append clean concepts (B, T_new, D) to the cache (their RoPE positions continue it)."""
        self.transformer(self.prenet(x_clean), mask, cache)

    def denoise_plan(
        self,
        cache: KVCache,
        drop_context: Tensor | None,
        batch: int,
        device: torch.device | None = None,
    ) -> StackPlan:
        """The structure of :meth:`denoise_next`'s query at this cache length (attention mask
        with ``drop_context``, RoPE angles of the next concept): the same for every denoising
        step of one concept, so a sampler builds it once and passes it to each step."""
        attn = None
        if drop_context is not None:
            S = cache.length + 1
            only_self = torch.arange(S, device=device) == S - 1  # (S,)
            attn = torch.where(drop_context[:, None, None], only_self, torch.ones_like(only_self))
            attn = attn.expand(batch, 1, S)  # (B, 1, S)
        shape_of = torch.empty(batch, 1, 0, device=device)  # the plan reads shape and device
        return self.transformer.plan(shape_of, None, cache, attn_mask=attn)

    def denoise_next(
        self,
        x_noisy: Tensor,
        t: Tensor,
        cache: KVCache,
        drop_context: Tensor | None = None,
        plan: StackPlan | None = None,
    ) -> Tensor:
        """x0-prediction of concept `cache.length` from its noisy version.

        Args:
            x_noisy: (B, 1, D); t: (B, 1) or (B,); drop_context: (B,) bool.
            cache: clean concepts 0..cache.length-1 from `encode_clean`; left unchanged.
            plan: :meth:`denoise_plan` of the same cache and ``drop_context`` (built here when
                None).

        Returns:
            (B, 1, D)
        """
        h = self._embed_noisy(x_noisy, t)  # (B, 1, d)
        if plan is None:
            plan = self.denoise_plan(cache, drop_context, x_noisy.size(0), h.device)
        out = self.transformer(h, None, cache, update_cache=False, plan=plan)  # (B, 1, d)
        return self.postnet(out)  # (B, 1, D)
