"""Synthetic reasoning tasks with known answers, in the objective batch layout.

Example:
    from lcm.tasks import ChainToRoot, score
    task = ChainToRoot(dim=16)
    tb = task.sample(64, difficulty=[1, 2], generator=torch.Generator().manual_seed(0))
    out = objective.loss(tb.batch())                       # trains on the answer position only
    pred = objective.predict_next(*tb.prompt())            # (B, D)
    task.score(pred, tb).by_difficulty()                   # {hops: {"accuracy", "cosine", "n"}}
"""

from lcm.tasks.base import Task, TaskBatch, TaskScores, random_units, score
from lcm.tasks.chain import ChainToRoot
from lcm.tasks.cleanup import NoisyCleanup
from lcm.tasks.compose import OperatorComposition, random_orthogonal

TASKS: dict[str, type[Task]] = {
    ChainToRoot.name: ChainToRoot,
    OperatorComposition.name: OperatorComposition,
    NoisyCleanup.name: NoisyCleanup,
}
"""Task name -> class."""

__all__ = [
    "TASKS",
    "ChainToRoot",
    "NoisyCleanup",
    "OperatorComposition",
    "Task",
    "TaskBatch",
    "TaskScores",
    "random_orthogonal",
    "random_units",
    "score",
]
