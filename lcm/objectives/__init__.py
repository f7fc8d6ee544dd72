"""Training objectives: each wraps one LCM network and owns its loss and its sampling.

    from lcm.models import TwoTowerConfig
    from lcm.objectives import TwoTowerDiffusion
    objective = TwoTowerDiffusion(TwoTowerConfig.from_name("tiny", sonar_dim=16).build())
    out = objective.loss({"x": x, "mask": mask, "loss_mask": mask})   # out.loss, out.pred, ...
    next_concept = objective.predict_next(x, mask)                    # (B, D), DDIM + CFG

No Lightning here; :mod:`lcm.train.module` wires objectives into a trainer.
"""

from lcm.objectives.base import (
    Batch,
    Objective,
    ObjectiveOutput,
    SampledObjective,
    last_valid,
    masked_mse,
    target_weight,
    with_overrides,
)
from lcm.objectives.diffusion import (
    DiffusionObjective,
    OneTowerDiffusion,
    SamplingConfig,
    TwoTowerDiffusion,
    left_align,
)
from lcm.objectives.mse import MSEObjective
from lcm.objectives.quant import Decoding, QuantObjective, sample_logits
from lcm.objectives.refiner import ExitRule, RefinerObjective, RefinerOutput, sample_num_iterations

__all__ = [
    "Batch",
    "DiffusionObjective",
    "MSEObjective",
    "Objective",
    "ObjectiveOutput",
    "OneTowerDiffusion",
    "Decoding",
    "QuantObjective",
    "RefinerObjective",
    "RefinerOutput",
    "SampledObjective",
    "ExitRule",
    "SamplingConfig",
    "TwoTowerDiffusion",
    "last_valid",
    "left_align",
    "masked_mse",
    "sample_logits",
    "sample_num_iterations",
    "target_weight",
    "with_overrides",
]
