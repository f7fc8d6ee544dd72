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

Two encodings of the same forest (`encoding`):

- ``"slots"`` (above): child and parent in two consecutive concepts. Following one link needs a
  previous-slot binding in the model (the parent slot must know which child it belongs to)
  before any content match, and that binding is what small models struggle to learn.
- ``"edges"``: one concept per link, the child's code in the first half and the parent's in the
  second (node codes are random units of dimension D/2; an edge is ``concat(child, parent) /
  sqrt(2)``, a unit concept):

      x = [edge_1, ..., edge_N, edge(query), edge(root)]       length N + 2, no padding

  The query is the query node's own edge and the answer is the root's self-loop, so `hops`
  content lookups lead from query to answer ("find the edge whose child is my parent"), and the
  answer is a fixed point of that lookup. Candidates are the N edges. This isolates the
  iterated lookup, the part whose depth a recurrent model can extend at test time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from experiments.refinement.tasks.base import Task, TaskBatch, random_units


class ChainToRoot(Task):
    """Pointer chasing to the root of a random forest.

    Args:
        dim: Concept dimension D.
        n_items: N, nodes per example (the pilot used 12).
        max_hops: Largest difficulty; the levels are 1 .. max_hops (needs max_hops < N). Also
            the longest distractor chain (max_hops + 1 nodes).
        scale: Norm of every concept.
        encoding: ``"slots"`` (child and parent in consecutive concepts) or ``"edges"`` (one
            concept per link; needs an even `dim`). Module docstring.
    """

    name = "chain_to_root"

    def __init__(
        self,
        dim: int,
        n_items: int = 12,
        max_hops: int = 4,
        scale: float = 1.0,
        encoding: Literal["slots", "edges"] = "slots",
    ) -> None:
        super().__init__(dim, scale)
        if not 1 <= max_hops < n_items:
            raise ValueError(f"need 1 <= max_hops < n_items, got {max_hops}, {n_items}")
        if encoding not in ("slots", "edges"):
            raise ValueError(f"encoding must be 'slots' or 'edges', got {encoding!r}")
        if encoding == "edges" and dim % 2:
            raise ValueError(f"the 'edges' encoding needs an even dim, got {dim}")
        self.n_items = n_items
        self.max_hops = max_hops
        self.encoding = encoding

    @property
    def difficulties(self) -> tuple[float, ...]:
        return tuple(range(1, self.max_hops + 1))

    @property
    def n_candidates(self) -> int:
        return self.n_items

    @property
    def seq_len(self) -> int:
        return (2 if self.encoding == "slots" else 1) * self.n_items + 2

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
        if self.encoding == "edges":
            return self._sample_edges(hops, generator)
        n, T = self.n_items, self.seq_len
        nodes = self.scale * random_units((batch_size, n), self.dim, generator)  # (B, N, D)
        child_idx = torch.empty(batch_size, T, dtype=torch.long)  # node shown at each slot
        root = torch.empty(batch_size, dtype=torch.long)
        for b, h in enumerate(hops):
            parent, query = self.parents(int(h), generator)
            order = torch.randperm(n, generator=generator)  # edges in random order
            child_idx[b, 0 : 2 * n : 2] = order
            child_idx[b, 1 : 2 * n : 2] = torch.tensor(parent)[order]
            child_idx[b, 2 * n] = query
            child_idx[b, 2 * n + 1] = root[b] = self.root_of(parent, query)
        x = torch.gather(nodes, 1, child_idx[..., None].expand(-1, -1, self.dim))  # (B, T, D)
        return self._batch(x, nodes, root, hops)

    @staticmethod
    def root_of(parent: list[int], node: int) -> int:
        """The root above `node` in a parent list (a root is its own parent)."""
        while parent[node] != node:
            node = parent[node]
        return node

    def _sample_edges(self, hops: list[float], generator: torch.Generator | None) -> TaskBatch:
        """The ``"edges"`` encoding (module docstring)."""
        B, n = len(hops), self.n_items
        forests = [self.parents(int(h), generator) for h in hops]
        roots = [self.root_of(p, q) for p, q in forests]
        codes = random_units((B, n), self.dim // 2, generator)  # (B, N, D/2)
        parent = torch.tensor([p for p, _ in forests])  # (B, N)
        parent_codes = torch.gather(codes, 1, parent[..., None].expand_as(codes))  # (B, N, D/2)
        edges = self.scale * torch.cat((codes, parent_codes), dim=-1) / math.sqrt(2)  # (B, N, D)
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(B)])  # (B, N)
        query = torch.tensor([q for _, q in forests])  # (B,)
        root = torch.tensor(roots)  # (B,)
        idx = torch.cat((order, query[:, None], root[:, None]), dim=1)  # (B, N + 2) edge ids
        x = torch.gather(edges, 1, idx[..., None].expand(-1, -1, self.dim))  # (B, N + 2, D)
        return self._batch(x, edges, root, hops)

    @staticmethod
    def _batch(x: Tensor, candidates: Tensor, root: Tensor, hops: list[float]) -> TaskBatch:
        B, T = x.shape[:2]
        mask = torch.ones(B, T, dtype=torch.bool)
        loss_mask = torch.zeros(B, T, dtype=torch.bool)
        loss_mask[:, -1] = True
        return TaskBatch(
            x=x,
            mask=mask,
            loss_mask=loss_mask,
            answer=x[:, -1].clone(),
            candidates=candidates,
            answer_index=root,
            difficulty=torch.tensor(hops, dtype=torch.float32),
        )

    def edge_pairs(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """(child, parent) (B, N, .) of the N links shown in `batch`, in either encoding."""
        n = self.n_items
        if self.encoding == "slots":
            return batch.x[:, 0 : 2 * n : 2], batch.x[:, 1 : 2 * n : 2]
        half = self.dim // 2
        return batch.x[:, :n, :half], batch.x[:, :n, half:]

    def no_chasing_accuracy(self, batch: TaskBatch) -> float:
        """Expected accuracy of guessing uniformly among the roots that have a child, read off
        the pairs in x without following any pointer: the baseline a model must beat."""
        child, parent = self.edge_pairs(batch)  # (B, N, .) each
        is_root = (child == parent).all(dim=-1)  # (B, N) self-pointing pairs
        # A root has a child if its vector appears as the parent of a non-root pair.
        same = (parent[:, :, None] == child[:, None, :]).all(dim=-1)  # (B, N pairs, N roots?)
        has_child = (same & (~is_root)[:, :, None]).any(dim=1)  # (B, N)
        n_guess = (is_root & has_child).sum(dim=1).clamp(min=1)  # (B,)
        return float((1.0 / n_guess).mean())
