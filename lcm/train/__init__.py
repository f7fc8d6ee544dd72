"""Lightning training layer: data module over concept shards, per-family modules, the CLI.

    lcm fit --config configs/trainer/default.yaml --config configs/two_tower/tiny.yaml \\
        --data.data_dir shards/
"""

from lcm.train.data import ConceptDataModule
from lcm.train.module import (
    FAMILY_MODULES,
    BaseLCMModule,
    DiffusionModule,
    LCMModule,
    OneTowerModule,
    QuantModule,
    RefinerModule,
    TwoTowerModule,
    load_module,
)

__all__ = [
    "FAMILY_MODULES",
    "BaseLCMModule",
    "ConceptDataModule",
    "DiffusionModule",
    "LCMModule",
    "OneTowerModule",
    "QuantModule",
    "RefinerModule",
    "TwoTowerModule",
    "load_module",
]
