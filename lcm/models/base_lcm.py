"""Base-LCM (paper section 2.2): next-concept regression with a causal transformer.

    x (B, T, D) --PreNet Linear(D->d)--> CausalTransformer (pre-norm RMSNorm, RoPE, SwiGLU,
    final RMSNorm) --PostNet Linear(d->D)--> y (B, T, D)

Convention: y[:, t] is the prediction of concept t+1 given concepts 0..t. The objective (MSE in
normalized SONAR space) pairs y[:, :-1] with x[:, 1:]; the network itself does no shifting.

Parameter count of the "1.6B" preset (d=2048, 32 layers, 16 heads, FFN 8192 -> SwiGLU 5632):
    PreNet   1024*2048 + 2048                                        =     2,099,200
    layer    attention 4*(2048^2 + 2048)                             =    16,785,408
             SwiGLU 3*2048*5632 + 2*5632 + 2048                      =    34,616,320
             2 RMSNorm weights                                       =         4,096
    32 layers                                                        = 1,644,986,368
    final RMSNorm                                                    =         2,048
    PostNet  2048*1024 + 1024                                        =     2,098,176
    total                                                            = 1,649,185,792
Meta's `base_lcm_1_6B` docstring says 1,647,635,456 (1,550,336 = 757 * 2048 fewer). The layout
above is what their code builds (fairseq2 GLU FFN with bias=True, inner_dim_scale=2/3,
inner_dim_to_multiple=256; q/k/v/out projections with bias; bias-free RMSNorm; no learned
positions since RoPE; PreNet/PostNet with bias), and the same accounting reproduces their
Two-Tower-7B docstring exactly (6,930,781,696). No consistent alternative (bias flags, norm
biases, FFN width with fairseq2's rounding, 20-40 layers, learned positions) gives 1,647,635,456,
so we take their 1.6B docstrings to be stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from lcm.models.common import TINY_WIDTHS, ConceptNetwork, TransformerConfig
from lcm.nn import KVCache


@dataclass
class BaseLCMConfig(TransformerConfig):
    """Base-LCM hyper-parameters. `BaseLCMConfig.from_name("1.6B")` gives the paper size.

    Args:
        n_layers: decoder layers.
        (the shared fields: :class:`~lcm.models.common.TransformerConfig`)
    """

    n_layers: int = 32

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # CPU tests and the quickstart: trains in seconds.
        "tiny": {**TINY_WIDTHS, "n_layers": 2},
        # One GPU: 207,825,920 parameters with sonar_dim=1024.
        "small": dict(d_model=1024, n_layers=16, n_heads=16, ffn_dim=4096),
        # Paper / Meta `base_lcm_1_6B`: 1,649,185,792 parameters (see module docstring).
        "1.6B": dict(d_model=2048, n_layers=32, n_heads=16, ffn_dim=8192),
    }


class BaseLCM(ConceptNetwork, config=BaseLCMConfig):
    """PreNet -> causal transformer -> PostNet. Output position t predicts concept t+1."""

    def __init__(self, config: BaseLCMConfig) -> None:
        super().__init__(config)
        c = config
        self.prenet = nn.Linear(c.sonar_dim, c.d_model)
        self.transformer = c.causal_transformer(c.n_layers)
        self.postnet = nn.Linear(c.d_model, c.sonar_dim)

    def new_cache(self) -> KVCache:
        """Empty KV cache for incremental generation (`forward(x_new, cache=cache)`)."""
        return self.transformer.new_cache()

    def forward(
        self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """
        Args:
            x: (B, T, D) concepts (normalized SONAR space). With a cache: only the new ones.
            mask: (B, T) bool, True = valid concept. Padded positions never influence valid ones.
            cache: KV cache from `new_cache()`; updated in place.

        Returns:
            (B, T, D); position t is the prediction of concept t+1.
        """
        h = self.prenet(x)  # (B, T, d)
        h = self.transformer(h, mask, cache)  # (B, T, d)
        return self.postnet(h)  # (B, T, D)
