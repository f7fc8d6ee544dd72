"""The generator's way to a family's "next concept" step: :func:`make_step` dispatches to the
family's objective, which builds its own cached step beside its ``predict_next``
(:meth:`lcm.objectives.Objective.generation_step`; the protocol, :class:`NextConceptStep`, and
the options, :class:`StepOptions`, are in :mod:`lcm.objectives.step`). Nothing here is written
per family: a new family plugs in by defining its objective's ``generation_step`` and naming its
network (``class ToyObjective(Objective, network=ToyNet)``).
"""

from __future__ import annotations

from typing import Any

import torch

from lcm.objectives import Objective
from lcm.objectives.base import check_residual_scale, objective_for
from lcm.objectives.step import _COMPILED, NextConceptStep, StepOptions

__all__ = ["COMPILE_BACKEND", "NextConceptStep", "StepOptions", "make_step", "_COMPILED"]

#: ``torch.compile`` backend of the compiled generation steps (``compile=True``) when the call
#: names none; tests use ``"eager"`` (no C++ builds).
COMPILE_BACKEND = "inductor"


def make_step(model: torch.nn.Module, **options: Any) -> NextConceptStep:
    """The generation step of ``model``'s family; ``model`` is an objective (whose scheduler,
    sampling settings, exit rule and temperature are the defaults: the checkpoint's own, for a
    trained module's objective) or a bare network of a registered family (wrapped in its
    objective, :func:`lcm.objectives.base.objective_for`).

    Args:
        model: :class:`~lcm.objectives.Objective` or network.
        **options: Fields of :class:`StepOptions`.
    """
    opts = StepOptions(**options)
    if opts.compile_backend is None:
        opts.compile_backend = COMPILE_BACKEND
    objective = model if isinstance(model, Objective) else objective_for(model)
    step = objective.generation_step(opts)
    scale = objective.residual_scale if opts.residual_scale is None else opts.residual_scale
    step.residual_scale = check_residual_scale(scale, objective.residual)
    return step
