"""LCM networks: pure `nn.Module`s over (B, T, D) concept sequences, one config dataclass each.

Example:
    >>> from lcm.models import TwoTowerConfig
    >>> model = TwoTowerConfig.from_name("tiny", sonar_dim=16).build()
    >>> TwoTowerConfig.from_name("7B").build(device="meta").param_count()
    6930781696
"""

from lcm.models.base_lcm import BaseLCM, BaseLCMConfig
from lcm.models.common import (
    ConceptNetwork,
    PresetConfig,
    TransformerConfig,
    build,
    param_count,
)
from lcm.models.one_tower import OneTowerConfig, OneTowerLCM
from lcm.models.quant_lcm import QuantLCM, QuantLCMConfig
from lcm.models.refiner import RecurrentRefinerLCM, RefinerConfig
from lcm.models.two_tower import CrossKV, DenoiserPlan, TwoTowerConfig, TwoTowerLCM

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
    "TransformerConfig",
    "TwoTowerConfig",
    "TwoTowerLCM",
    "build",
    "param_count",
]
