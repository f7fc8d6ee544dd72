"""Clean-up of a noisy stored concept (difficulty = noise level).

An example stores N fresh random unit concepts, then shows a noisy copy of one of them; the
answer is the clean stored concept:

    x = [m_1, ..., m_N, query, answer],   query = normalize(m_j + sigma g / sqrt(D)), g ~ N(0, I)

so the noise has norm about sigma against a signal of norm 1 (sigma = 1: as much noise as
signal), and answer = m_j. Candidates are the N stored concepts, chance 1/N. At high noise the
nearest stored concept to the query is not always m_j, so even an ideal model stays below 1.0
there; `nearest_stored_accuracy` measures that ceiling on a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from experiments.refinement.tasks.base import Task, TaskBatch, random_units


class NoisyCleanup(Task):
    """Retrieve the stored concept behind a noisy query.

    Args:
        dim: Concept dimension D.
        n_items: N, stored concepts per example.
        noise_levels: The difficulty levels sigma drawn by default.
        scale: Norm of every concept.
    """

    name = "noisy_cleanup"

    def __init__(
        self,
        dim: int,
        n_items: int = 8,
        noise_levels: Sequence[float] = (0.25, 0.5, 0.75, 1.0, 1.25),
        scale: float = 1.0,
    ) -> None:
        super().__init__(dim, scale)
        if n_items < 2:
            raise ValueError(f"n_items must be >= 2, got {n_items}")
        self.n_items = n_items
        self.noise_levels = tuple(float(s) for s in noise_levels)

    @property
    def difficulties(self) -> tuple[float, ...]:
        return self.noise_levels

    @property
    def n_candidates(self) -> int:
        return self.n_items

    def check_difficulty(self, level: float) -> None:
        if level < 0:
            raise ValueError(f"noise level must be >= 0, got {level}")

    def sample(
        self,
        batch_size: int,
        difficulty: float | Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> TaskBatch:
        sigma = torch.tensor(self._difficulties(batch_size, difficulty, generator))  # (B,)
        n, D = self.n_items, self.dim
        stored = random_units((batch_size, n), D, generator)  # (B, N, D) unit
        j = torch.randint(0, n, (batch_size,), generator=generator)  # (B,)
        clean = stored[torch.arange(batch_size), j]  # (B, D)
        noise = torch.randn(batch_size, D, generator=generator) / math.sqrt(D)  # norm ~ 1
        query = F.normalize(clean + sigma[:, None] * noise, dim=-1)  # (B, D)
        x = self.scale * torch.cat((stored, query[:, None], clean[:, None]), dim=1)  # (B, N+2, D)
        mask = torch.ones(batch_size, n + 2, dtype=torch.bool)
        loss_mask = torch.zeros_like(mask)
        loss_mask[:, -1] = True
        return TaskBatch(
            x=x,
            mask=mask,
            loss_mask=loss_mask,
            answer=x[:, -1].clone(),
            candidates=x[:, :n].clone(),
            answer_index=j,
            difficulty=sigma.float(),
        )

    @staticmethod
    def nearest_stored_accuracy(batch: TaskBatch) -> float:
        """Accuracy of answering with the stored concept nearest (cosine) to the query: the
        ceiling a model that cleans up by similarity can reach on this batch."""
        query = batch.x[torch.arange(len(batch)), batch.answer_position - 1]  # (B, D)
        sims = F.cosine_similarity(query[:, None], batch.candidates, dim=-1)  # (B, N)
        return float((sims.argmax(dim=1) == batch.answer_index).float().mean())
