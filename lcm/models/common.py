"""What every LCM family shares: named presets, building (also on `meta`), parameter counting."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

C = TypeVar("C", bound="PresetConfig")
M = TypeVar("M", bound=nn.Module)


def param_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once, as `module.parameters()` yields them)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class PresetConfig:
    """Mixin for config dataclasses: `Config.from_name("tiny", sonar_dim=16)`.

    Subclasses set `presets: ClassVar[dict[str, dict]]` mapping a preset name to field values.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

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


class ConceptModel(nn.Module):
    """Base class of the LCM networks: only adds `param_count()`."""

    def param_count(self, trainable_only: bool = False) -> int:
        return param_count(self, trainable_only)
