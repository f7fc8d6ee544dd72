"""Tests of the synthetic reasoning tasks (experiments.refinement.tasks): answers are right by
construction, an oracle that reads only the sequence scores 1.0, random guesses score chance.
CPU, seconds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from experiments.refinement.tasks import (
    TASKS,
    ChainToRoot,
    NoisyCleanup,
    OperatorComposition,
    TaskBatch,
    TaskScores,
    random_orthogonal,
    score,
)
from lcm.models.refiner import RefinerConfig
from lcm.objectives.refiner import RefinerObjective

D = 16


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def make_tasks(scale=1.0):
    return [
        ChainToRoot(D, n_items=12, max_hops=4, scale=scale),
        OperatorComposition(D, n_ops=4, max_k=4, scale=scale),
        NoisyCleanup(D, n_items=8, scale=scale),
    ]


def index_of(vectors: torch.Tensor, v: torch.Tensor) -> int:
    """Row of `vectors` (N, D) equal to v (exact match required)."""
    hits = (vectors == v).all(dim=-1).nonzero()
    assert len(hits) == 1
    return int(hits[0])


# ---- oracles: answer from the sequence alone ---------------------------------------------------


def chain_oracle(task: ChainToRoot, tb: TaskBatch) -> tuple[torch.Tensor, list[int]]:
    preds, hops = [], []
    n = task.n_items
    for b in range(len(tb)):
        x = tb.x[b]
        parent = {}
        for i in range(n):
            parent[index_of(tb.candidates[b], x[2 * i])] = index_of(tb.candidates[b], x[2 * i + 1])
        node, h = index_of(tb.candidates[b], x[2 * n]), 0
        while parent[node] != node:
            node, h = parent[node], h + 1
        preds.append(tb.candidates[b, node])
        hops.append(h)
    return torch.stack(preds), hops


def compose_oracle(task: OperatorComposition, tb: TaskBatch) -> torch.Tensor:
    preds = []
    for b in range(len(tb)):
        L = int(tb.answer_position[b])
        names = tb.x[b, 1:L]  # (k, D)
        ops = (names @ task.op_names.T).argmax(dim=1).tolist()
        v = tb.x[b, 0]
        for i in ops:
            v = task.operators[i] @ v
        preds.append(v)
    return torch.stack(preds)


def cleanup_oracle(task: NoisyCleanup, tb: TaskBatch) -> torch.Tensor:
    stored, query = tb.x[:, : task.n_items], tb.x[:, task.n_items]
    best = F.cosine_similarity(query[:, None], stored, dim=-1).argmax(dim=1)
    return stored[torch.arange(len(tb)), best]


# ---- layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", make_tasks(scale=4.0), ids=lambda t: t.name)
def test_batch_layout(task):
    tb = task.sample(64, generator=gen(1))
    B, T, _ = tb.x.shape
    assert tb.mask.shape == tb.loss_mask.shape == (B, T)
    assert tb.loss_mask.sum(dim=1).tolist() == [1] * B  # exactly one target per example
    assert not (tb.loss_mask & ~tb.mask).any()
    last_valid = tb.mask.long().sum(dim=1) - 1
    assert torch.equal(tb.answer_position, last_valid)  # the answer ends each sequence
    assert torch.equal(tb.answer, tb.x[torch.arange(B), last_valid])
    assert torch.equal(tb.candidates[torch.arange(B), tb.answer_index], tb.answer)
    assert tb.candidates.shape == (B, task.n_candidates, D)
    norms = tb.x.norm(dim=-1)[tb.mask]
    torch.testing.assert_close(norms, torch.full_like(norms, 4.0))  # every concept at `scale`
    assert torch.all(tb.x[~tb.mask] == 0)
    assert set(tb.difficulty.tolist()) == set(map(float, task.difficulties))
    # Seeded; objective batch; prompt without the answer.
    again = task.sample(64, generator=gen(1))
    assert torch.equal(again.x, tb.x) and torch.equal(again.answer_index, tb.answer_index)
    batch = tb.batch()
    assert set(batch) == {"x", "mask", "loss_mask"}
    x_p, mask_p = tb.prompt()
    assert torch.equal(mask_p, tb.mask & ~tb.loss_mask)
    assert torch.all(x_p[torch.arange(B), last_valid] == 0)


@pytest.mark.parametrize("task", make_tasks(), ids=lambda t: t.name)
def test_examples_use_fresh_concepts(task):
    a, b = task.sample(32, generator=gen(1)), task.sample(32, generator=gen(2))
    va, vb = a.x[a.mask], b.x[b.mask]
    if isinstance(task, OperatorComposition):  # operator names are the fixed rule
        names = task.op_names
        va = va[(va @ names.T).abs().max(dim=1).values < 0.999]
        vb = vb[(vb @ names.T).abs().max(dim=1).values < 0.999]
    assert (va @ vb.T).abs().max() < 0.99  # nothing recurs across batches


@pytest.mark.parametrize("task", make_tasks(), ids=lambda t: t.name)
def test_difficulty_selection_and_validation(task):
    level = task.difficulties[-1]
    tb = task.sample(16, difficulty=level, generator=gen())
    assert set(tb.difficulty.tolist()) == {float(level)}
    few = task.difficulties[:2]
    assert set(task.sample(64, difficulty=few, generator=gen()).difficulty.tolist()) == set(
        map(float, few)
    )
    with pytest.raises(ValueError):
        task.sample(4, difficulty=-1)


# ---- correct by construction -------------------------------------------------------------------


def test_chain_oracle_is_perfect_and_hops_are_the_difficulty():
    task = ChainToRoot(D, n_items=12, max_hops=5)
    tb = task.sample(200, generator=gen(3))
    pred, hops = chain_oracle(task, tb)
    assert hops == [int(h) for h in tb.difficulty.tolist()]
    s = task.score(pred, tb)
    assert s.accuracy == 1.0 and s.mean_cosine == pytest.approx(1.0)
    # The no-chasing baseline: uniform guess among roots with a child, counted by hand.
    expected = []
    for bi in range(len(tb)):
        x, cands = tb.x[bi], tb.candidates[bi]
        parent = {
            index_of(cands, x[2 * i]): index_of(cands, x[2 * i + 1]) for i in range(task.n_items)
        }
        roots = {c for c, p in parent.items() if c == p}
        expected.append(1 / len({p for c, p in parent.items() if c != p and p in roots}))
    baseline = task.no_chasing_accuracy(tb)
    assert baseline == pytest.approx(sum(expected) / len(expected))
    assert task.chance < baseline < 0.5
    # Copying the query is never right (it is `hops` >= 1 links below the root).
    query = tb.x[:, 2 * task.n_items]
    assert task.score(query, tb).accuracy == 0.0


def test_chain_edges_encoding_needs_exactly_hops_lookups():
    """In the 'edges' encoding, "find the edge whose child is my parent" applied to the query
    reaches the answer after exactly `hops` lookups and stays there (the root's self-loop)."""
    task = ChainToRoot(2 * D, n_items=12, max_hops=6, encoding="edges")
    tb = task.sample(300, generator=gen(11))
    n, half = task.n_items, D
    assert tb.x.shape == (300, n + 2, 2 * D) and task.seq_len == n + 2
    torch.testing.assert_close(tb.x.norm(dim=-1), torch.ones(300, n + 2))
    edges, state = tb.x[:, :n], tb.x[:, n]
    # Every candidate (the N edges) is shown once in the context.
    for b in range(10):
        assert sorted(index_of(tb.candidates[b], e) for e in edges[b]) == list(range(n))
    hops = tb.difficulty.long()
    reached = torch.full((300,), -1)
    for step in range(1, 9):
        match = (state[:, None, half:] * edges[:, :, :half]).sum(-1)  # parent . child codes
        state = edges[torch.arange(300), match.argmax(dim=1)]
        at_answer = (state == tb.answer).all(dim=-1)
        reached[(reached < 0) & at_answer] = step
        assert at_answer[hops <= step].all()  # once there, the lookup is a fixed point
    assert torch.equal(reached, hops)
    assert task.score(tb.answer, tb).accuracy == 1.0
    assert task.score(tb.x[:, n], tb).accuracy == 0.0  # the query is never the answer
    # The shortcut floor is counted on the edges the same way as on slots.
    child, parent = task.edge_pairs(tb)  # (B, N, D) each, context order
    assert torch.equal(child, edges[..., :half]) and torch.equal(parent, edges[..., half:])
    assert torch.equal(tb.answer[:, :half], tb.answer[:, half:])  # the root's self-loop
    assert task.chance < task.no_chasing_accuracy(tb) < 0.6
    with pytest.raises(ValueError, match="even dim"):
        ChainToRoot(7, encoding="edges")
    with pytest.raises(ValueError, match="encoding"):
        ChainToRoot(8, encoding="pairs")  # type: ignore[arg-type]


def test_composition_oracle_is_perfect_and_order_matters():
    task = OperatorComposition(D, n_ops=4, max_k=4)
    Q = task.operators
    torch.testing.assert_close(
        Q @ Q.transpose(1, 2), torch.eye(D).expand(4, D, D), atol=1e-5, rtol=0
    )
    tb = task.sample(200, generator=gen(4))
    s = task.score(compose_oracle(task, tb), tb)
    assert s.accuracy == 1.0 and s.mean_cosine == pytest.approx(1.0, abs=1e-5)
    # Stopping one operator short lands on a distractor (the last intermediate).
    short = []
    for b in range(len(tb)):
        L = int(tb.answer_position[b])
        ops = (tb.x[b, 1 : L - 1] @ task.op_names.T).argmax(dim=1).tolist()
        short.append(task.apply(tb.x[b, 0], ops))
    assert task.score(torch.stack(short), tb).accuracy == 0.0
    # Haar sampler gives orthogonal matrices with both determinant signs.
    dets = torch.linalg.det(random_orthogonal(64, 3, gen()))
    torch.testing.assert_close(dets.abs(), torch.ones(64), atol=1e-5, rtol=0)
    assert (dets > 0).any() and (dets < 0).any()


def test_cleanup_answer_is_the_stored_source_of_the_query():
    task = NoisyCleanup(D, n_items=8, noise_levels=(0.1,))
    tb = task.sample(200, generator=gen(5))
    s = task.score(cleanup_oracle(task, tb), tb)
    assert s.accuracy == 1.0
    assert NoisyCleanup.nearest_stored_accuracy(tb) == 1.0
    # The query's cosine to its source matches the noise level: cos ~ 1 / sqrt(1 + sigma^2).
    query = tb.x[:, task.n_items]
    cos = F.cosine_similarity(query, tb.answer, dim=-1)
    assert cos.mean().item() == pytest.approx(1 / math.sqrt(1 + 0.1**2), abs=0.01)
    # Higher noise makes similarity clean-up fail sometimes: the difficulty is real.
    hard = task.sample(400, difficulty=2.0, generator=gen(6))
    assert NoisyCleanup.nearest_stored_accuracy(hard) < 0.9


@pytest.mark.parametrize("task", make_tasks(), ids=lambda t: t.name)
def test_random_guesses_score_chance(task):
    tb = task.sample(3000, generator=gen(7))
    guess = torch.randn(3000, D, generator=gen(8))
    s = task.score(guess, tb)
    sd = math.sqrt(task.chance * (1 - task.chance) / 3000)
    assert abs(s.accuracy - task.chance) < 4 * sd
    assert abs(s.mean_cosine) < 0.02


def test_scores_by_difficulty_and_cat():
    task = ChainToRoot(D, n_items=6, max_hops=3)
    tb = task.sample(90, generator=gen(9))
    pred, _ = chain_oracle(task, tb)
    pred[tb.difficulty == 3] = -pred[tb.difficulty == 3]  # get the 3-hop cases wrong
    s = score(pred, tb)
    table = s.by_difficulty()
    assert set(table) == {1.0, 2.0, 3.0}
    assert table[1.0]["accuracy"] == table[2.0]["accuracy"] == 1.0
    assert table[3.0]["accuracy"] == 0.0 and table[3.0]["cosine"] == pytest.approx(-1.0)
    assert sum(v["n"] for v in table.values()) == 90
    both = TaskScores.cat([s, s])
    assert both.correct.shape == (180,) and both.accuracy == s.accuracy


def test_registry_and_objective_wiring():
    assert set(TASKS) == {"chain_to_root", "operator_composition", "noisy_cleanup"}
    task = ChainToRoot(D, n_items=5, max_hops=2)
    tb = task.sample(4, generator=gen())
    torch.manual_seed(0)
    obj = RefinerObjective(RefinerConfig.from_name("tiny", sonar_dim=D).build(), init="embed")
    out = obj.loss(tb.batch(), gen(), num_iterations=2)
    assert out.weight.sum() == 4 and out.weight[:, -1].all()  # only the answers count
    pred, steps = obj.predict_next_with_exit(*tb.prompt(), max_iterations=6)
    assert pred.shape == (4, D) and steps.max() <= 6
    # predict_next on the prompt is the teacher-forced prediction of the answer position.
    torch.testing.assert_close(
        pred, obj.predict_all(tb.batch(), max_iterations=6)[:, -1], atol=1e-5, rtol=0
    )
    assert 0.0 <= task.score(pred, tb).accuracy <= 1.0
