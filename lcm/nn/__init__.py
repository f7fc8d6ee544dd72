"""Pure-PyTorch building blocks of the LCM networks (no Lightning, no fairseq2)."""

from lcm.nn.attention import KVCache, LayerKVCache, MultiheadAttention
from lcm.nn.layers import (
    AdaLNModulation,
    PreparedLinear,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    TimestepEmbedding,
    modulate,
    sinusoidal_embedding,
    swiglu_hidden_dim,
)
from lcm.nn.transformer import (
    CausalTransformer,
    DenoiserBlock,
    PreparedCross,
    PreparedDenoiserBlock,
    TransformerBlock,
    causal_allowed,
)

__all__ = [
    "AdaLNModulation",
    "CausalTransformer",
    "DenoiserBlock",
    "KVCache",
    "LayerKVCache",
    "MultiheadAttention",
    "PreparedCross",
    "PreparedDenoiserBlock",
    "PreparedLinear",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "TimestepEmbedding",
    "TransformerBlock",
    "causal_allowed",
    "modulate",
    "sinusoidal_embedding",
    "swiglu_hidden_dim",
]
