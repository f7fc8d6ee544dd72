"""Generation only dispatches: each family's objective builds its cached step (written in the
objective's own module), a bare network finds its objective through ``network=``, and
``lcm.generation`` holds no per-family code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from torch import nn

from lcm.generation import make_step
from lcm.models import BaseLCMConfig, OneTowerConfig, RefinerConfig, TwoTowerConfig
from lcm.objectives import Objective
from lcm.objectives.base import objective_for

GENERATION = Path(__file__).resolve().parents[1] / "lcm" / "generation"


def test_generation_imports_no_family():
    """No module of lcm.generation imports a network or a family's objective module."""
    for path in sorted(GENERATION.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("lcm.models"), (path.name, node.module)
                names = {a.name for a in node.names}
                family = {"mse", "diffusion", "refiner", "quant"}
                if node.module == "lcm.objectives.diffusion":
                    assert names == {"SamplingConfig"}, path.name  # re-exported setting type
                else:
                    assert node.module.rsplit(".", 1)[-1] not in family, (path.name, node.module)


@pytest.mark.parametrize(
    "cfg", [BaseLCMConfig, TwoTowerConfig, OneTowerConfig, RefinerConfig], ids=lambda c: c.__name__
)
def test_bare_network_gets_its_objectives_step(cfg):
    model = cfg.from_name("tiny", sonar_dim=8).build().eval()
    objective = objective_for(model)
    assert objective.model is model
    step = make_step(model, use_cache=False)
    assert type(step).__module__ == type(objective).__module__  # written beside the objective
    assert step.use_cache is False
    assert type(make_step(objective)) is type(step)


def test_unknown_family_is_a_clear_error():
    class Lone(nn.Linear):
        pass

    with pytest.raises(TypeError, match="no generation step for Lone"):
        make_step(Lone(2, 2))

    class NoStep(Objective):
        def loss(self, batch, generator=None):
            raise NotImplementedError

        def predict_all(self, batch, generator=None):
            raise NotImplementedError

        def predict_next(self, x, mask=None, generator=None):
            return x[:, -1]

    with pytest.raises(TypeError, match="NoStep.generation_step"):
        make_step(NoStep(nn.Identity()))
