"""Synthetic reasoning tasks with known answers, in the objective batch layout.

Example:
    from experiments.refinement.tasks import ChainToRoot, score
    task = ChainToRoot(dim=16)
    tb = task.sample(64, difficulty=[1, 2], generator=torch.Generator().manual_seed(0))
    out = objective.loss(tb.batch())                       # trains on the answer position only
    pred = objective.predict_next(*tb.prompt())            # (B, D)
    task.score(pred, tb).by_difficulty()                   # {hops: {"accuracy", "cosine", "n"}}
"""

from experiments.refinement.tasks.base import Task, TaskBatch, TaskScores, random_units, score
from experiments.refinement.tasks.chain import ChainToRoot
from experiments.refinement.tasks.cleanup import NoisyCleanup
from experiments.refinement.tasks.compose import OperatorComposition, random_orthogonal

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
