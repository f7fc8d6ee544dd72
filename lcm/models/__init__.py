"""LCM networks: pure `nn.Module`s over (B, T, D) concept sequences, one config dataclass each.

Example:
    >>> from lcm.models import TwoTowerConfig
    >>> model = TwoTowerConfig.from_name("tiny", sonar_dim=16).build()
    >>> TwoTowerConfig.from_name("7B").build(device="meta").param_count()
    6930781696
"""

from lcm.models.base_lcm import BaseLCM, BaseLCMConfig
from lcm.models.common import (
    TINY_WIDTHS,
    ConceptNetwork,
    PresetConfig,
    TransformerConfig,
    build,
    param_count,
)
from lcm.models.one_tower import OneTowerConfig, OneTowerLCM
from lcm.models.quant_lcm import QuantLCM, QuantLCMConfig
from lcm.models.refiner import CoreBlock, RecurrentRefinerLCM, RefinerConfig
from lcm.models.two_tower import CrossKV, DenoiserPlan, TwoTowerConfig, TwoTowerLCM
from lcm.nn.transformer import DenoiserBlock, TransformerBlock

TRANSFORMER_LAYERS: tuple[type, ...] = (TransformerBlock, DenoiserBlock, CoreBlock)
"""The layer classes of every family: the unit of FSDP sharding and activation checkpointing
(every attention of every network sits inside one of them; tests/test_scale.py checks it)."""

FAMILIES: dict[str, type[PresetConfig]] = {
    "base_lcm": BaseLCMConfig,
    "one_tower": OneTowerConfig,
    "two_tower": TwoTowerConfig,
    "refiner": RefinerConfig,
    "quant_lcm": QuantLCMConfig,
}
"""Model family name -> config class (each config has `from_name(preset)` and `build()`)."""

__all__ = [
    "FAMILIES",
    "BaseLCM",
    "BaseLCMConfig",
    "ConceptNetwork",
    "CrossKV",
    "DenoiserPlan",
    "OneTowerConfig",
    "OneTowerLCM",
    "PresetConfig",
    "QuantLCM",
    "QuantLCMConfig",
    "RecurrentRefinerLCM",
    "RefinerConfig",
    "TINY_WIDTHS",
    "TRANSFORMER_LAYERS",
    "TransformerConfig",
    "TwoTowerConfig",
    "TwoTowerLCM",
    "build",
    "param_count",
]
