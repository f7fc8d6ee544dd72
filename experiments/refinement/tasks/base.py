"""What every synthetic reasoning task shares: the batch it yields and how answers are scored.

A task draws *fresh* random concepts for every example, so nothing can be memorized: the answer is
a function of the example's own concepts (and, for operator composition, of a fixed rule). Each
example is one right-padded concept sequence that ends with its answer:

    x          (B, T, D)  the example's concepts, answer included (teacher forcing)
    mask       (B, T)     True = real concept
    loss_mask  (B, T)     True only at the answer position: the one prediction target

which is the objective batch layout (:mod:`lcm.objectives.base`), so any objective trains on it
as is. `TaskBatch.prompt()` gives the sequence without its answer, for `predict_next`.

Scoring: retrieval of the nearest candidate (cosine) among the example's own concepts (accuracy,
chance = 1 / number of candidates) and the cosine between prediction and answer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor


def random_units(
    shape: tuple[int, ...], dim: int, generator: torch.Generator | None = None
) -> Tensor:
    """Uniform random unit vectors (*shape, dim) (normalized Gaussians), float32 on CPU."""
    v = torch.randn((*shape, dim), generator=generator)
    return F.normalize(v, dim=-1)


@dataclass
class TaskBatch:
    """A batch of task examples (module docstring for the layout).

    Attributes:
        x: (B, T, D) concepts, right-padded, answer at `answer_position`.
        mask: (B, T) bool, True = real concept.
        loss_mask: (B, T) bool, True only at the answer position.
        answer: (B, D) the answer concept (= x at the answer position).
        candidates: (B, N, D) the concepts retrieval chooses from; the answer is one of them.
        answer_index: (B,) int64, the answer's row in `candidates`.
        difficulty: (B,) float32, the task's difficulty of each example.
    """

    x: Tensor
    mask: Tensor
    loss_mask: Tensor
    answer: Tensor
    candidates: Tensor
    answer_index: Tensor
    difficulty: Tensor

    @property
    def answer_position(self) -> Tensor:
        """(B,) int64 index of the answer in each sequence (its last real concept)."""
        return self.loss_mask.long().argmax(dim=1)

    def batch(self) -> dict[str, Tensor]:
        """The objective batch: {"x", "mask", "loss_mask"}."""
        return {"x": self.x, "mask": self.mask, "loss_mask": self.loss_mask}

    def prompt(self) -> tuple[Tensor, Tensor]:
        """(x, mask) without the answer (zeroed, mask False): the input of `predict_next`."""
        keep = self.mask & ~self.loss_mask  # (B, T)
        return self.x * keep[..., None].to(self.x.dtype), keep

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class TaskScores:
    """Per-example scores.

    Attributes:
        correct: (B,) bool, the nearest candidate (cosine) is the answer.
        cosine: (B,) cosine between prediction and answer.
        difficulty: (B,) difficulty of each example.
    """

    correct: Tensor
    cosine: Tensor
    difficulty: Tensor

    @property
    def accuracy(self) -> float:
        return float(self.correct.float().mean())

    @property
    def mean_cosine(self) -> float:
        return float(self.cosine.mean())

    @staticmethod
    def cat(scores: Sequence[TaskScores]) -> TaskScores:
        names = [f.name for f in fields(TaskScores)]
        return TaskScores(*(torch.cat([getattr(s, n) for s in scores]) for n in names))

    def by_difficulty(self) -> dict[float, dict[str, float]]:
        """{difficulty: {"accuracy", "cosine", "n"}} over the levels present."""
        out = {}
        for level in torch.unique(self.difficulty).tolist():
            sel = self.difficulty == level
            out[level] = {
                "accuracy": float(self.correct[sel].float().mean()),
                "cosine": float(self.cosine[sel].mean()),
                "n": int(sel.sum()),
            }
        return out


def score(pred: Tensor, batch: TaskBatch) -> TaskScores:
    """Score predictions (B, D) of the answers of `batch` by retrieval and cosine."""
    pred = pred.to(batch.candidates)
    sims = F.cosine_similarity(pred[:, None], batch.candidates, dim=-1)  # (B, N)
    correct = sims.argmax(dim=1) == batch.answer_index  # (B,)
    cosine = F.cosine_similarity(pred, batch.answer, dim=-1)  # (B,)
    return TaskScores(correct.cpu(), cosine.cpu(), batch.difficulty.cpu())


class Task(ABC):
    """A family of synthetic examples with known answers.

    Args:
        dim: Concept dimension D.
        scale: Norm of every concept (1 = unit concepts; sqrt(dim) gives unit per-coordinate
            variance, like normalized SONAR space).
    """

    name: ClassVar[str]

    def __init__(self, dim: int, scale: float = 1.0) -> None:
        if dim < 2:
            raise ValueError(f"dim must be >= 2, got {dim}")
        self.dim = dim
        self.scale = scale

    @property
    @abstractmethod
    def difficulties(self) -> tuple[float, ...]:
        """The difficulty levels drawn when `sample(difficulty=None)`."""

    @property
    @abstractmethod
    def n_candidates(self) -> int:
        """Candidates per example (retrieval chance = 1 / n_candidates)."""

    @property
    def chance(self) -> float:
        return 1.0 / self.n_candidates

    def _difficulties(
        self,
        batch_size: int,
        difficulty: float | Sequence[float] | None,
        generator: torch.Generator | None,
    ) -> list[float]:
        """One difficulty per example: fixed, or uniform over a sequence (default: all levels)."""
        if difficulty is not None and not isinstance(difficulty, Sequence):
            levels: Sequence[float] = [difficulty]
        else:
            levels = self.difficulties if difficulty is None else difficulty
        if not levels:
            raise ValueError("no difficulty level to draw from")
        for level in levels:
            self.check_difficulty(level)
        idx = torch.randint(0, len(levels), (batch_size,), generator=generator)
        return [levels[i] for i in idx.tolist()]

    @abstractmethod
    def check_difficulty(self, level: float) -> None:
        """Raise ValueError for a difficulty this task cannot build."""

    @abstractmethod
    def sample(
        self,
        batch_size: int,
        difficulty: float | Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> TaskBatch:
        """Draw a batch (CPU tensors; `TaskBatch.to(device)` moves it).

        Args:
            batch_size: B.
            difficulty: One level for every example, a sequence to draw from uniformly (e.g. a
                curriculum's current levels), or None for all of `difficulties`.
            generator: Drives every random draw (reproducible batches).
        """

    def score(self, pred: Tensor, batch: TaskBatch) -> TaskScores:
        return score(pred, batch)
