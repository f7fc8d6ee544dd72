"""Chain-to-root pointer chasing (difficulty = hops), the task of the refiner's CPU pilot.

An example is a random forest over N fresh concepts, given as N (child, parent) pairs in random
order; a root is its own parent. The question is a node; the answer is the root of its tree.

    x = [c_1, p_1, c_2, p_2, ..., c_N, p_N, query, answer]       length 2N + 2, no padding

The query sits `hops` links below its root: a chain root <- n_1 <- ... <- n_hops = query is built
first; the other N - hops - 1 nodes form distractor chains of 2 .. max_hops + 1 nodes (a last
single node is a root alone), so the query's chain is not told apart by its length. Candidates are
the N nodes, chance 1/N. One link per iteration is the natural algorithm, which is what makes hops
the difficulty of a recurrent model.

Shortcut to beat: the answer is always a root with at least one child, and roots are visible (a
self-pointing pair). Guessing among those without chasing scores `no_chasing_accuracy(batch)`
(about 0.3 with the defaults), well above chance; report it next to the accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lcm.tasks.base import Task, TaskBatch, random_units


class ChainToRoot(Task):
    """Pointer chasing to the root of a random forest.

    Args:
        dim: Concept dimension D.
        n_items: N, nodes per example (the pilot used 12).
        max_hops: Largest difficulty; the levels are 1 .. max_hops (needs max_hops < N). Also
            the longest distractor chain (max_hops + 1 nodes).
        scale: Norm of every concept.
    """

    name = "chain_to_root"

    def __init__(
        self,
        dim: int,
        n_items: int = 12,
        max_hops: int = 4,
        scale: float = 1.0,
    ) -> None:
        super().__init__(dim, scale)
        if not 1 <= max_hops < n_items:
            raise ValueError(f"need 1 <= max_hops < n_items, got {max_hops}, {n_items}")
        self.n_items = n_items
        self.max_hops = max_hops

    @property
    def difficulties(self) -> tuple[float, ...]:
        return tuple(range(1, self.max_hops + 1))

    @property
    def n_candidates(self) -> int:
        return self.n_items

    @property
    def seq_len(self) -> int:
        return 2 * self.n_items + 2

    def check_difficulty(self, level: float) -> None:
        if int(level) != level or not 0 <= level < self.n_items:
            raise ValueError(f"hops must be an integer in [0, {self.n_items - 1}], got {level}")

    def parents(self, hops: int, generator: torch.Generator | None = None) -> tuple[list[int], int]:
        """A random forest over N nodes: parent list (root = itself) and a query node exactly
        `hops` links below its root."""
        n = self.n_items
        perm = torch.randperm(n, generator=generator).tolist()
        parent = [0] * n
        chain = perm[: hops + 1]  # chain[0] is the root, chain[-1] the query
        parent[chain[0]] = chain[0]
        for up, down in zip(chain, chain[1:]):
            parent[down] = up
        rest = perm[hops + 1 :]
        lengths = torch.randint(2, self.max_hops + 2, (len(rest),), generator=generator).tolist()
        start = 0
        for length in lengths:  # distractor chains, root first
            seg = rest[start : start + length]
            if not seg:
                break
            parent[seg[0]] = seg[0]
            for up, down in zip(seg, seg[1:]):
                parent[down] = up
            start += length
        return parent, chain[-1]

    def sample(
        self,
        batch_size: int,
        difficulty: float | Sequence[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> TaskBatch:
        hops = self._difficulties(batch_size, difficulty, generator)
        n, T = self.n_items, self.seq_len
        nodes = self.scale * random_units((batch_size, n), self.dim, generator)  # (B, N, D)
        child_idx = torch.empty(batch_size, T, dtype=torch.long)  # node shown at each slot
        root = torch.empty(batch_size, dtype=torch.long)
        for b, h in enumerate(hops):
            parent, query = self.parents(int(h), generator)
            order = torch.randperm(n, generator=generator)  # edges in random order
            child_idx[b, 0 : 2 * n : 2] = order
            child_idx[b, 1 : 2 * n : 2] = torch.tensor(parent)[order]
            r = query
            while parent[r] != r:
                r = parent[r]
            child_idx[b, 2 * n] = query
            child_idx[b, 2 * n + 1] = r
            root[b] = r
        x = torch.gather(nodes, 1, child_idx[..., None].expand(-1, -1, self.dim))  # (B, T, D)
        mask = torch.ones(batch_size, T, dtype=torch.bool)
        loss_mask = torch.zeros(batch_size, T, dtype=torch.bool)
        loss_mask[:, -1] = True
        return TaskBatch(
            x=x,
            mask=mask,
            loss_mask=loss_mask,
            answer=x[:, -1].clone(),
            candidates=nodes,
            answer_index=root,
            difficulty=torch.tensor(hops, dtype=torch.float32),
        )

    def no_chasing_accuracy(self, batch: TaskBatch) -> float:
        """Expected accuracy of guessing uniformly among the roots that have a child, read off
        the pairs in x without following any pointer: the baseline a model must beat."""
        n = self.n_items
        child, parent = batch.x[:, 0 : 2 * n : 2], batch.x[:, 1 : 2 * n : 2]  # (B, N, D) each
        is_root = (child == parent).all(dim=-1)  # (B, N) self-pointing pairs
        # A root has a child if its vector appears as the parent of a non-root pair.
        same = (parent[:, :, None] == child[:, None, :]).all(dim=-1)  # (B, N pairs, N roots?)
        has_child = (same & (~is_root)[:, :, None]).any(dim=1)  # (B, N)
        n_guess = (is_root & has_child).sum(dim=1).clamp(min=1)  # (B,)
        return float((1.0 / n_guess).mean())
