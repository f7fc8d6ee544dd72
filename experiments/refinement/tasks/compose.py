"""k-fold composition of random orthogonal operators (difficulty = k).

The task has a fixed set of n_ops random orthogonal D x D operators Q_1..Q_n, each named by a
fixed random concept (the rule to learn). An example applies k of them, in the given order, to a
fresh random unit concept v:

    x = [v, name(i_1), ..., name(i_k), answer],   answer = Q_{i_k} ... Q_{i_1} v
    right-padded to length max_k + 2

Orthogonal operators keep the norm, so every intermediate is a unit concept and no shortcut
through the norm exists. Candidates (shuffled, fixed count max_k + n_ops): the answer, v, the
k - 1 intermediate results, every wrong last step (Q_j applied to the last intermediate, j not
i_k), and fresh random concepts to fill up. A model that stops early or applies a wrong operator
retrieves a wrong candidate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from experiments.refinement.tasks.base import Task, TaskBatch, random_units


def random_orthogonal(n: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """n Haar-random orthogonal matrices (n, dim, dim): QR of Gaussians with the signs of R's
    diagonal moved into Q (Mezzadri 2007), so the distribution is uniform."""
    g = torch.randn(n, dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # scale columns
    return q.float()


class OperatorComposition(Task):
    """Apply k named random rotations to a fresh concept.

    Args:
        dim: Concept dimension D.
        n_ops: Number of operators (fixed per task, drawn from `seed`).
        max_k: Largest difficulty; levels 1 .. max_k.
        seed: Seed of the operators and their names (the task's rule).
        scale: Norm of every concept.
    """

    name = "operator_composition"

    def __init__(
        self, dim: int, n_ops: int = 4, max_k: int = 4, seed: int = 0, scale: float = 1.0
    ) -> None:
        super().__init__(dim, scale)
        if n_ops < 2 or max_k < 1:
            raise ValueError(f"need n_ops >= 2 and max_k >= 1, got {n_ops}, {max_k}")
        self.n_ops = n_ops
        self.max_k = max_k
        rule = torch.Generator().manual_seed(seed)
        self.operators = random_orthogonal(n_ops, dim, rule)  # (n_ops, D, D)
        self.op_names = scale * random_units((n_ops,), dim, rule)  # (n_ops, D)

    @property
    def difficulties(self) -> tuple[float, ...]:
        return tuple(range(1, self.max_k + 1))

    @property
    def n_candidates(self) -> int:
        return self.max_k + self.n_ops

    def check_difficulty(self, level: float) -> None:
        if int(level) != level or not 1 <= level <= self.max_k:
            raise ValueError(f"k must be an integer in [1, {self.max_k}], got {level}")

    def apply(self, v: Tensor, ops: Sequence[int]) -> Tensor:
        """Q_{ops[-1]} ... Q_{ops[0]} v for v (..., D)."""
        for i in ops:
            v = v @ self.operators[i].T  # row vectors: (Q v)^T = v^T Q^T
        return v

    def sample(
        self,
        batch_size: int,
        difficulty: float | Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> TaskBatch:
        ks = [int(k) for k in self._difficulties(batch_size, difficulty, generator)]
        T, N, D = self.max_k + 2, self.n_candidates, self.dim
        v = self.scale * random_units((batch_size,), D, generator)  # (B, D)
        x = torch.zeros(batch_size, T, D)
        mask = torch.zeros(batch_size, T, dtype=torch.bool)
        loss_mask = torch.zeros(batch_size, T, dtype=torch.bool)
        candidates = torch.empty(batch_size, N, D)
        answer_index = torch.empty(batch_size, dtype=torch.long)
        fill = self.scale * random_units((batch_size, N), D, generator)  # (B, N, D) spare
        for b, k in enumerate(ks):
            ops = torch.randint(0, self.n_ops, (k,), generator=generator).tolist()
            states = [v[b]]
            for i in ops:
                states.append(self.apply(states[-1], [i]))  # v, Q_{i1} v, ..., answer
            x[b, 0] = v[b]
            x[b, 1 : k + 1] = self.op_names[ops]
            x[b, k + 1] = states[-1]
            mask[b, : k + 2] = True
            loss_mask[b, k + 1] = True
            wrong_last = [self.apply(states[-2], [j]) for j in range(self.n_ops) if j != ops[-1]]
            cands = [states[-1], *states[:-1], *wrong_last]  # answer first, k + n_ops at most
            cands = torch.stack(cands + list(fill[b, : N - len(cands)]))  # (N, D)
            order = torch.randperm(N, generator=generator)
            candidates[b] = cands[order]
            answer_index[b] = int((order == 0).nonzero())
        return TaskBatch(
            x=x,
            mask=mask,
            loss_mask=loss_mask,
            answer=x[torch.arange(batch_size), torch.tensor(ks) + 1].clone(),
            candidates=candidates,
            answer_index=answer_index,
            difficulty=torch.tensor(ks, dtype=torch.float32),
        )
