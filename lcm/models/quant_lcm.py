"""Quant-LCM-d (paper section 2.5): predict the residual-quantization codes of the next concept,
coarse to fine, with a softmax over the units of each codebook.

    x (B, T, D) --PreNet--> CausalTransformer --> h (B, T, d)        h_t sees x_0 .. x_t

Depth decoder (ours; the layout of RQ-Transformer, Lee et al. 2022): for the concept predicted
by position t, a small causal transformer runs over the K codebooks. Its input at depth j is

    u_j = h_t + level_j + W_in (sum_{i<j} C_i[c_i]) / rms         (the prefix sum is 0 at j = 0)

i.e. codebook j is conditioned on the codes < j through their partial sum, the coarse
reconstruction so far (`RVQ.decode_prefix`). Its output o_j gives the logits of codebook j as a
soft nearest-unit assignment of a predicted residual q_j:

    q_j = W_out o_j  (D,)
    logit_j[u] = -beta_j ||q_j - C_j[u] / rms_j||^2 + b_j[u]

with rms_j the RMS of codebook j's entries (residuals shrink with depth), beta_j a learned inverse
temperature and b_j a learned prior per unit. Every unit wins for some q_j (its Voronoi cell), and
no (K, n_units, d) embedding table or (K, d, n_units) head is needed: with the paper's 64 x 8192
units and d = 2048 each of those would hold 1.07B parameters. The codebooks are the RVQ's own
(the `rvq` submodule, buffers, never trained).

Convention: logits[:, t] are those of the codes of concept t+1; the network does no shifting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lcm.models.common import TINY_WIDTHS, ConceptNetwork, TransformerConfig
from lcm.nn import KVCache
from lcm.quant import RVQ


@dataclass
class QuantLCMConfig(TransformerConfig):
    """Quant-LCM-d hyper-parameters. `QuantLCMConfig.from_name("tiny", sonar_dim=16)`.

    The shared fields (:class:`~lcm.models.common.TransformerConfig`) apply to both
    transformers.

    Args:
        n_layers: layers of the causal transformer over concepts.
        depth_layers: layers of the depth transformer over the K codebooks.
        n_codebooks: K, codebooks of the RVQ.
        n_units: units per codebook.
    """

    d_model: int = 1024
    n_layers: int = 16
    ffn_dim: int = 4096
    depth_layers: int = 2
    n_codebooks: int = 64
    n_units: int = 8192

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU tests: the "tiny" RVQ (4 x 64).
        "tiny": {**TINY_WIDTHS, "n_layers": 2, "depth_layers": 1, "n_codebooks": 4, "n_units": 64},
        # One GPU, the paper's 64 x 8192 RVQ: 235,182,144 parameters (D = 1024),
        # plus the 64 x 8192 x 1024 codebook buffer (2.1 GB in fp32).
        "small": dict(d_model=1024, n_heads=16, ffn_dim=4096, n_layers=16, depth_layers=2),
    }


class QuantLCM(ConceptNetwork, config=QuantLCMConfig):
    """Causal transformer over concepts + depth transformer over the codes of the next one.

    The RVQ codebooks are the buffers of the `rvq` submodule: load a fitted RVQ with
    `set_quantizer(rvq)` (or a checkpoint) before training.
    """

    def __init__(self, config: QuantLCMConfig) -> None:
        super().__init__(config)
        c = config
        self.rvq = RVQ(c.sonar_dim, c.n_codebooks, c.n_units)
        self.prenet = nn.Linear(c.sonar_dim, c.d_model)
        self.transformer = c.causal_transformer(c.n_layers)
        self.level_embed = nn.Parameter(torch.zeros(c.n_codebooks, c.d_model))
        self.prefix_in = nn.Linear(c.sonar_dim, c.d_model)
        self.depth = c.causal_transformer(c.depth_layers)
        self.residual_out = nn.Linear(c.d_model, c.sonar_dim)
        # beta_j = exp(log_beta_j) / D: logits start at an O(1) spread for any D.
        self.log_beta = nn.Parameter(torch.zeros(c.n_codebooks))
        self.unit_bias = nn.Parameter(torch.zeros(c.n_codebooks, c.n_units))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.level_embed, std=0.02)

    def set_quantizer(self, rvq: RVQ) -> None:
        """Copy a fitted RVQ's codebooks (and what it was fitted on, ``RVQ.residual``) into
        this network."""
        if rvq.codebooks.shape != self.rvq.codebooks.shape:
            raise ValueError(
                f"RVQ codebooks {tuple(rvq.codebooks.shape)} do not match the config "
                f"{tuple(self.rvq.codebooks.shape)}"
            )
        self.rvq.load_state_dict(rvq.state_dict())
        self.rvq.beam_size = rvq.beam_size

    # ---- concepts ------------------------------------------------------------------------------

    def new_cache(self) -> KVCache:
        """Empty KV cache for incremental `contextualize`."""
        return self.transformer.new_cache()

    def contextualize(
        self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """x (B, T, D) (only the new concepts with a cache) -> h (B, T, d)."""
        return self.transformer(self.prenet(x), mask, cache)

    # ---- codes of the next concept -------------------------------------------------------------

    def _scales(self) -> tuple[Tensor, Tensor]:
        books = self.rvq.codebooks  # (K, U, D)
        level_rms = books.pow(2).mean(dim=(1, 2)).sqrt().clamp(min=1e-6)  # (K,)
        total_rms = books.sum(0).pow(2).mean().sqrt().clamp(min=1e-6)  # scale of a full sum
        return level_rms, total_rms

    def depth_inputs(self, h: Tensor, prefix_sums: Tensor, levels: Tensor) -> Tensor:
        """u_j = h + level_j + W_in(prefix sum / rms): h (N, d), prefix_sums (N, J, D),
        levels (J,) -> (N, J, d)."""
        _, total_rms = self._scales()
        return h[:, None] + self.level_embed[levels] + self.prefix_in(prefix_sums / total_rms)

    def level_logits(self, out: Tensor, levels: Tensor) -> Tensor:
        """Logits of codebooks `levels` (J,) from depth outputs out (N, J, d) -> (N, J, U)."""
        level_rms, _ = self._scales()
        books = self.rvq.codebooks[levels] / level_rms[levels, None, None]  # (J, U, D) unit RMS
        q = self.residual_out(out)  # (N, J, D)
        # ||q - c||^2 = ||q||^2 - 2 q.c + ||c||^2
        dist = (
            q.pow(2).sum(-1, keepdim=True)
            - 2 * torch.einsum("njd,jud->nju", q, books)
            + books.pow(2).sum(-1)[None]
        )  # (N, J, U)
        beta = self.log_beta[levels].exp() / math.sqrt(self.config.sonar_dim)  # (J,)
        return -beta[None, :, None] * dist + self.unit_bias[levels][None]

    def code_logits(self, h: Tensor, codes: Tensor) -> Tensor:
        """Teacher-forced logits of every codebook: h (N, d), codes (N, K) -> (N, K, U).

        Depth j sees codes < j only (the prefix sums are shifted and the depth transformer is
        causal), so logits[:, j] never depend on codes[:, j:].
        """
        K = self.config.n_codebooks
        vectors = self.rvq.code_vectors(codes)  # (N, K, D)
        prefix = torch.cumsum(vectors, dim=1) - vectors  # (N, K, D): sum_{i<j}, 0 at j = 0
        levels = torch.arange(K, device=h.device)
        out = self.depth(self.depth_inputs(h, prefix, levels))  # (N, K, d)
        return self.level_logits(out, levels)

    def new_depth_cache(self) -> KVCache:
        """Empty KV cache of the depth transformer (one concept's code sequence)."""
        return self.depth.new_cache()

    def next_level_logits(self, h: Tensor, prefix_sum: Tensor, cache: KVCache) -> Tensor:
        """Logits (N, U) of codebook j = cache.length given the sum of the codes < j
        (N, D); appends depth j to the cache. Equals `code_logits(...)[:, j]` (tested)."""
        j = cache.length
        levels = torch.tensor([j], device=h.device)
        u = self.depth_inputs(h, prefix_sum[:, None], levels)  # (N, 1, d)
        return self.level_logits(self.depth(u, cache=cache), levels)[:, 0]  # (N, U)

    def forward(self, x: Tensor, mask: Tensor | None, codes: Tensor) -> Tensor:
        """
        Args:
            x: (B, T, D) concepts.
            mask: (B, T) bool, True = valid concept.
            codes: (B, T, K) codes of the concept each position predicts (those of x_{t+1}).

        Returns:
            (B, T, K, U) logits; position t, codebook j conditioned on x_0..x_t and codes[:, t, :j].
        """
        B, T, _ = x.shape
        h = self.contextualize(x, mask)  # (B, T, d)
        logits = self.code_logits(h.reshape(B * T, -1), codes.reshape(B * T, -1))
        return logits.reshape(B, T, *logits.shape[1:])  # (B, T, K, U)
