"""What every LCM family shares: named presets, building (also on `meta`), parameter counting.

A family plugs its network into its config with one class keyword:

    @dataclass
    class MyConfig(TransformerConfig):
        n_layers: int = 4
        presets = {"tiny": {**TINY_WIDTHS, "n_layers": 2}}

    class MyLCM(ConceptNetwork, config=MyConfig):   # MyConfig(...).build() -> MyLCM
        def __init__(self, config: MyConfig) -> None:
            super().__init__(config)                 # keeps self.config
            ...
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from lcm.nn import CausalTransformer

C = TypeVar("C", bound="PresetConfig")
M = TypeVar("M", bound=nn.Module)


def param_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once, as `module.parameters()` yields them)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@dataclasses.dataclass
class PresetConfig:
    """Base of the config dataclasses: `Config.from_name("tiny", sonar_dim=16)`.

    Subclasses set `presets: ClassVar[dict[str, dict]]` mapping a preset name to field values.
    Every class of a config's MRO is a dataclass, so jsonargparse (the CLI) shows the fields of
    an `arch: TwoTowerConfig` argument as one group (`--model.arch.d_model`, ...).
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    network_cls: ClassVar[type[nn.Module] | None] = None
    """The network :meth:`build` constructs; set by ``class Net(ConceptNetwork, config=Cfg)``."""

    @classmethod
    def from_name(cls: type[C], name: str, **overrides: Any) -> C:
        if name not in cls.presets:
            raise KeyError(f"unknown {cls.__name__} preset {name!r}; known: {sorted(cls.presets)}")
        return cls(**{**cls.presets[name], **overrides})

    @classmethod
    def preset_names(cls) -> list[str]:
        return list(cls.presets)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def build(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> nn.Module:
        """Build the network; `device="meta"` allocates nothing (for counting, FSDP)."""
        if self.network_cls is None:
            raise TypeError(
                f"{type(self).__name__} has no network: declare one with "
                f"`class Net(ConceptNetwork, config={type(self).__name__})`"
            )
        return build(self.network_cls, self, device, dtype)


TINY_WIDTHS: dict[str, Any] = dict(
    d_model=32, n_heads=4, ffn_dim=128, ffn_multiple_of=16, dropout=0.0
)
"""The widths every family's ``tiny`` preset shares (CPU tests and the quickstart: trains in
seconds); a family's preset adds its layer counts."""


@dataclasses.dataclass
class TransformerConfig(PresetConfig):
    """The fields every family's transformer stacks share (each family config adds its own).

    Args:
        sonar_dim: concept (sentence embedding) dimension D; 1024 for SONAR.
        d_model: transformer width d.
        n_heads: attention heads (head dim = d_model / n_heads).
        ffn_dim: nominal FFN width; the SwiGLU hidden width is ffn_dim*2/3 rounded up to a
            multiple of `ffn_multiple_of` (8192 -> 5632).
        ffn_multiple_of: rounding of the SwiGLU hidden width.
        dropout: residual dropout inside the layers (paper/Meta: 0.1).
        attn_dropout: dropout on attention weights (Meta: 0).
        bias: biases in attention and FFN projections (Meta: True).
        rope_theta: RoPE base.
        norm_eps: RMSNorm epsilon.
    """

    sonar_dim: int = 1024
    d_model: int = 2048
    n_heads: int = 16
    ffn_dim: int = 8192
    ffn_multiple_of: int = 256
    dropout: float = 0.1
    attn_dropout: float = 0.0
    bias: bool = True
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of one layer of any family (self-attention, denoiser or core)."""
        return dict(
            d_model=self.d_model,
            n_heads=self.n_heads,
            ffn_dim=self.ffn_dim,
            dropout=self.dropout,
            attn_dropout=self.attn_dropout,
            ffn_multiple_of=self.ffn_multiple_of,
            bias=self.bias,
            norm_eps=self.norm_eps,
        )

    def causal_transformer(self, n_layers: int) -> CausalTransformer:
        """A causal self-attention stack of `n_layers` layers with these settings."""
        return CausalTransformer(
            n_layers=n_layers, rope_theta=self.rope_theta, **self.layer_kwargs()
        )


def build(
    model_cls: type[M],
    config: Any,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> M:
    """Construct `model_cls(config)` directly on `device`.

    `device="meta"` allocates no memory, so the 7B preset can be built and counted on a laptop,
    or materialized later shard by shard (FSDP `to_empty` + `reset_parameters`).
    """
    ctx = torch.device(device) if device is not None else contextlib.nullcontext()
    with ctx:
        model = model_cls(config)
    if dtype is not None:
        model = model.to(dtype)
    return model


class ConceptNetwork(nn.Module):
    """Base class of the LCM networks: keeps `config`, adds `param_count()`.

    ``class Net(ConceptNetwork, config=NetConfig)`` makes ``NetConfig(...).build()`` construct a
    ``Net`` (the module docstring's example).
    """

    def __init_subclass__(cls, config: type[PresetConfig] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if config is not None:
            config.network_cls = cls

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    def param_count(self, trainable_only: bool = False) -> int:
        return param_count(self, trainable_only)
