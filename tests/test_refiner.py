"""Tests of the recurrent-depth refiner (lcm.models.refiner, lcm.objectives.refiner): CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lcm.models.refiner import INIT_STD, RecurrentRefinerLCM, RefinerConfig
from lcm.objectives.base import masked_mse, target_weight
from lcm.objectives.refiner import ExitRule, RefinerObjective, movement, sample_num_iterations

D = 16
ATOL = 1e-5


def tiny(**kw) -> RecurrentRefinerLCM:
    torch.manual_seed(0)
    return RefinerConfig.from_name("tiny", sonar_dim=D, **kw).build().eval()


def make_batch(B=3, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False  # one right-padded row
    return {"x": x, "mask": mask, "loss_mask": mask.clone()}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- network -----------------------------------------------------------------------------------


def test_presets_build_and_count():
    assert tiny().param_count() == 44_432  # the module docstring's accounting
    small = RefinerConfig.from_name("small").build(device="meta")
    assert small.param_count() == 132_779_008
    assert RefinerConfig.from_name("small").core_layers == 2


def test_init_state_truncated_normal_seeded_and_warm():
    model = tiny()
    s = model.init_state((64, 64), gen(3))
    assert s.shape == (64, 64, 32)
    assert s.abs().max() <= 3 * INIT_STD + 1e-6
    # Truncation at 3 std keeps 99.7% of the mass: std = 0.9866 * sqrt(2/5).
    assert s.std().item() == pytest.approx(0.9866 * math.sqrt(2 / 5), rel=0.02)
    torch.testing.assert_close(s, model.init_state((64, 64), gen(3)))
    assert not torch.equal(s, model.init_state((64, 64), gen(4)))
    warm = torch.randn(2, 3, 32)
    w = model.init_state((2, 3), warm=warm)
    torch.testing.assert_close(w, warm)
    assert w.data_ptr() != warm.data_ptr()
    with pytest.raises(ValueError):
        model.init_state((2, 4), warm=warm)


def test_outputs_are_causal_and_ignore_padding():
    model = tiny()
    b = make_batch()
    x, mask = b["x"], b["mask"]
    state = model.init_state(x.shape[:2], gen())
    y = model(x, mask, 5, state=state)  # (B, T, D)
    t = 2
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :])
    y2 = model(x2, mask, 5, state=state)
    torch.testing.assert_close(y[:, : t + 1], y2[:, : t + 1], atol=ATOL, rtol=0)
    assert not torch.allclose(y[:, t + 1 :], y2[:, t + 1 :])
    # Changing the padded tail of row 1 changes nothing in its valid part.
    x3 = x.clone()
    x3[1, 4:] = 100.0
    y3 = model(x3, mask, 5, state=state)
    torch.testing.assert_close(y[1, :4], y3[1, :4], atol=ATOL, rtol=0)


def test_state_is_necessary():
    """The prediction depends on the state (not only on the injection): different initial
    states give different outputs after one iteration."""
    model = tiny()
    x, mask = make_batch()["x"], make_batch()["mask"]
    y_a = model(x, mask, 1, generator=gen(1))
    y_b = model(x, mask, 1, generator=gen(2))
    assert (y_a - y_b).abs().max() > 1e-3


def test_cross_kv_reuse_equals_recompute():
    model = tiny()
    b = make_batch()
    x, mask = b["x"], b["mask"]
    T = x.shape[1]
    inject, ctx = model.contextualize(x, mask)
    cmask = model.cross_mask(mask, T, T, x.device)
    s0 = model.init_state(x.shape[:2], gen())
    reused = model.iterate(s0, inject, model.precompute_cross_kv(ctx), 6, cmask)
    s = s0
    for _ in range(6):  # K/V projected afresh each iteration
        s = model.step(s, inject, model.precompute_cross_kv(ctx), cmask)
    torch.testing.assert_close(reused, s, atol=0, rtol=0)
    # Projecting the context by hand inside the attention (source=) agrees too.
    h = model.adapter(torch.cat((s0, inject), dim=-1))
    blk = model.core[0]
    by_source = blk.cross_attn(blk.cross_attn_norm(h), ctx, attn_mask=cmask)
    by_kv = blk.cross_attn(
        blk.cross_attn_norm(h), kv=model.precompute_cross_kv(ctx)[0], attn_mask=cmask
    )
    torch.testing.assert_close(by_source, by_kv, atol=ATOL, rtol=0)


def test_incremental_context_and_cross_kv_equal_full():
    model = tiny()
    x = make_batch()["x"]
    _, ctx_full = model.contextualize(x)
    kv_full = model.precompute_cross_kv(ctx_full)
    cache = model.new_cache()
    _, ctx_a = model.contextualize(x[:, :4], cache=cache)
    kv = model.precompute_cross_kv(ctx_a)
    for t in range(4, x.shape[1]):  # one generated concept at a time
        _, ctx_t = model.contextualize(x[:, t : t + 1], cache=cache)
        kv = model.precompute_cross_kv(ctx_t, past=kv)
    for (k, v), (kf, vf) in zip(kv, kv_full):
        torch.testing.assert_close(k, kf, atol=ATOL, rtol=0)
        torch.testing.assert_close(v, vf, atol=ATOL, rtol=0)


def test_trajectory_matches_forward():
    model = tiny()
    b = make_batch()
    y, traj = model(b["x"], b["mask"], 4, generator=gen(), return_trajectory=True)
    assert traj.states.shape == (4, 3, 6, 32) and traj.preds.shape == (4, 3, 6, D)
    torch.testing.assert_close(y, model(b["x"], b["mask"], 4, generator=gen()))
    torch.testing.assert_close(traj.preds[1], model(b["x"], b["mask"], 2, generator=gen()))
    torch.testing.assert_close(traj.preds, model.readout(traj.states))


# ---- iteration-count sampling ------------------------------------------------------------------


@pytest.mark.parametrize("mean", [4.0, 8.0, 32.0])
def test_iteration_count_mean_and_spread(mean):
    r = sample_num_iterations(mean, 0.5, gen(0), size=(20_000,))
    assert r.dtype == torch.long and r.min() >= 1
    # E[r] = mean + P(r = 0) (the clamp); P(r=0) < 0.03 for mean >= 4.
    assert r.float().mean().item() == pytest.approx(mean, rel=0.03)
    # Log-normal rate: over-dispersed against a Poisson (whose variance equals its mean).
    expected_var = mean + mean**2 * (math.exp(0.25) - 1)
    assert r.float().var().item() == pytest.approx(expected_var, rel=0.12)
    poisson = sample_num_iterations(mean, 0.0, gen(0), size=(20_000,))
    assert poisson.float().var().item() == pytest.approx(mean, rel=0.1)


def test_objective_draws_are_seeded_and_capped():
    obj = RefinerObjective(tiny(), mean_iterations=16, max_train_iterations=12)
    a = [obj.sample_num_iterations(gen(s)) for s in range(200)]
    b = [obj.sample_num_iterations(gen(s)) for s in range(200)]
    assert a == b
    assert max(a) == 12 and min(a) >= 1


# ---- truncated backprop ------------------------------------------------------------------------


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _reference_loss(model, batch, r, k, seed):
    """The first r - k iterations run *with* autograd, then their output is replaced by its
    detached value; the last k iterations run normally."""
    x, mask = batch["x"], batch["mask"]
    T = x.shape[1]
    inject, ctx = model.contextualize(x, mask)
    kv = model.precompute_cross_kv(ctx)
    cmask = model.cross_mask(mask, T, T, x.device)
    s = model.init_state(x.shape[:2], gen(seed))
    for _ in range(r - k):
        s = model.step(s, inject, kv, cmask)
    s = s.detach()
    for _ in range(k):
        s = model.step(s, inject, kv, cmask)
    y = model.readout(s)
    pred = torch.cat((torch.zeros_like(y[:, :1]), y[:, :-1]), dim=1)
    weight = target_weight(batch).clone()
    weight[:, 0] = False
    return masked_mse(pred, x, weight)


@pytest.mark.parametrize("r,k", [(6, 2), (5, 5), (3, 4)])
def test_truncated_backprop_equals_detached_reference(r, k):
    batch = make_batch()
    model = tiny()
    obj = RefinerObjective(model, backprop_depth=k)
    out = obj.loss(batch, gen(7), num_iterations=r)
    assert out.num_iterations == r
    out.loss.backward()
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    ref = _reference_loss(model, batch, r, min(k, r), seed=7)
    ref.backward()
    want = _grads(model)
    torch.testing.assert_close(out.loss, ref, atol=1e-6, rtol=0)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5, msg=name)
    # Every part of the network learns (prenet and contextualizer through the last k iterations).
    for prefix in ("prenet", "contextualizer", "adapter", "core", "postnet"):
        assert any(n.startswith(prefix) and g.abs().sum() > 0 for n, g in got.items()), prefix
    if r > k:  # and full backprop would give different gradients
        model.zero_grad(set_to_none=True)
        _reference_loss(model, batch, r, r, seed=7).backward()
        full = _grads(model)
        assert not torch.allclose(full["adapter.weight"], got["adapter.weight"])


def test_only_last_k_iterations_see_gradients():
    model = tiny()
    obj = RefinerObjective(model, backprop_depth=3)
    calls: list[bool] = []  # per iteration: does its output carry an autograd graph?
    got_grad: dict[int, float] = {}

    def hook(module, inputs, output):
        i = len(calls)
        calls.append(output.requires_grad)
        if output.requires_grad:
            output.register_hook(lambda g: got_grad.__setitem__(i, g.abs().sum().item()))

    handle = model.adapter.register_forward_hook(hook)
    try:
        obj.loss(make_batch(), gen(), num_iterations=8).loss.backward()
    finally:
        handle.remove()
    # One adapter call per iteration; the first r - k keep no activations (run under no_grad).
    assert calls == [False] * 5 + [True] * 3
    assert sorted(got_grad) == [5, 6, 7]
    assert all(v > 0 for v in got_grad.values())


def test_training_reduces_loss():
    torch.manual_seed(0)
    model = RefinerConfig.from_name("tiny", sonar_dim=D).build()
    obj = RefinerObjective(model, mean_iterations=4, backprop_depth=2)
    batch = make_batch(B=4, T=5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = gen(0)
    first = obj.loss(batch, gen(0), num_iterations=4).loss.item()
    for _ in range(60):
        loss = obj.loss(batch, g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = obj.loss(batch, gen(0), num_iterations=4).loss.item()
    assert last < 0.5 * first


# ---- adaptive exit -----------------------------------------------------------------------------

BIG, SMALL = 0.5, 1e-3  # angle steps (rad): 1 - cos = 0.12 and 5e-7; threshold 1e-3


def circle_trajectory(steps: list[float]) -> torch.Tensor:
    """(n, 2) unit vectors y_1..y_n whose consecutive angles differ by `steps` (len n - 1)."""
    angles = torch.tensor([0.0, *steps], dtype=torch.float64).cumsum(0)
    return torch.stack((angles.cos(), angles.sin()), dim=-1).float()


PATTERNS = {
    # name: (8 angle steps between y_i and y_{i+1}, patience, expected exit with n = 9 iterates)
    "settles": ([BIG, BIG, SMALL, SMALL, SMALL, BIG, BIG, BIG], 2, 5),
    "settles_at_once": ([SMALL] * 8, 2, 3),
    "needs_patience_3": ([SMALL, SMALL, BIG, SMALL, SMALL, SMALL, BIG, BIG], 3, 7),
    "alternates": ([SMALL, BIG] * 4, 2, 9),  # never two in a row: runs to the cap
    "never": ([BIG] * 8, 1, 9),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_exit_rule_on_constructed_trajectories(name):
    steps, patience, expected = PATTERNS[name]
    traj = circle_trajectory(steps)
    rule = ExitRule(exit_threshold=1e-3, exit_patience=patience, max_iterations=64)
    assert int(rule.exit_steps(traj[:, None])) == min(expected, len(traj))
    # Never before `patience` consecutive hits: the exit is at least patience + 1 ...
    assert int(rule.exit_steps(traj[:, None])) >= patience + 1
    # ... and a cap below the natural exit wins.
    capped = ExitRule(exit_threshold=1e-3, exit_patience=patience, max_iterations=expected - 1)
    assert int(capped.exit_steps(traj[:, None])) == expected - 1


def test_movement_is_one_minus_cosine():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    torch.testing.assert_close(movement(a, b), torch.tensor([1.0]))
    torch.testing.assert_close(movement(a, 3 * a), torch.tensor([0.0]))


class ScriptedCore(nn.Module):
    """Stand-in network whose iterates follow given trajectories: the state stores
    (iteration, row), `readout` looks the prediction up. Lets the online loop of
    `RefinerObjective.refine` be checked against hand-built trajectories."""

    def __init__(self, table: torch.Tensor) -> None:  # (n, B, D)
        super().__init__()
        self.table = table

    def step(self, state, inject, cross_kv, cross_mask):
        return state + torch.tensor([1.0, 0.0])  # (b, 1, 2): iteration + 1, row unchanged

    def readout(self, state):
        it, row = state[..., 0].long(), state[..., 1].long()  # (b, 1)
        return self.table[it - 1, row]  # (b, 1, D)


def test_online_exit_matches_constructed_trajectories():
    names = sorted(PATTERNS)
    n = 9
    table = torch.stack([circle_trajectory(PATTERNS[k][0]) for k in names], dim=1)  # (n, B, 2)
    B = len(names)
    for patience, r_max in [(2, 64), (3, 64), (1, 64), (2, 4)]:
        rule = ExitRule(exit_threshold=1e-3, exit_patience=patience, max_iterations=r_max)
        obj = RefinerObjective(ScriptedCore(table), exit_rule=rule)
        state = torch.stack((torch.zeros(B), torch.arange(B).float()), dim=-1)[:, None]
        inject = torch.zeros(B, 1, 1)
        kv = [(torch.zeros(B, 1, 1, 1), torch.zeros(B, 1, 1, 1))]
        if r_max > n:  # the script has n iterates: cap at n
            rule = ExitRule(exit_threshold=1e-3, exit_patience=patience, max_iterations=n)
        pred, steps = obj.refine(inject, kv, None, state=state, rule=rule)
        want = rule.exit_steps(table)  # (B,) offline rule
        assert steps[:, 0].tolist() == want.tolist()
        torch.testing.assert_close(pred[:, 0], table[want - 1, torch.arange(B)])
        if r_max > n:  # the hand-derived exits of the patterns built for this patience
            for i, k in enumerate(names):
                if PATTERNS[k][1] == patience:
                    assert steps[i, 0] == PATTERNS[k][2], k


def test_predict_next_exit_matches_offline_rule_on_model():
    model = tiny()
    obj = RefinerObjective(model, init="embed", exit_rule=ExitRule(1e-2, 2, 40))
    b = make_batch()
    x, mask = b["x"], b["mask"]
    pred, steps = obj.predict_next_with_exit(x, mask)
    assert pred.shape == (3, D) and steps.shape == (3,)
    traj = obj.trajectory(x, mask, 40)  # every position, all 40 iterates
    last = mask.long().sum(1) - 1
    rows = torch.arange(3)
    want_steps = obj.exit_rule.exit_steps(traj.preds)[rows, last]
    assert steps.tolist() == want_steps.tolist()
    torch.testing.assert_close(pred, traj.preds[want_steps - 1, rows, last], atol=ATOL, rtol=0)
    # Teacher-forced exits agree with the same offline rule at every position.
    _, all_steps = obj.predict_all_with_exit(b)
    off = obj.exit_rule.exit_steps(traj.preds)  # (B, T) about concept t+1
    assert torch.equal(all_steps[:, 1:], off[:, :-1])
    # Fixed r: predict_next equals the last valid position of the full forward.
    fixed, fsteps = obj.predict_next_with_exit(x, mask, num_iterations=7)
    assert fsteps.tolist() == [7, 7, 7]
    torch.testing.assert_close(fixed, traj.preds[6, rows, last], atol=ATOL, rtol=0)


def test_predict_all_is_aligned_and_seeded():
    model = tiny()
    obj = RefinerObjective(model)
    b = make_batch()
    p1 = obj.predict_all(b, gen(5), num_iterations=3)
    p2 = obj.predict_all(b, gen(5), num_iterations=3)
    torch.testing.assert_close(p1, p2)
    y = model(b["x"], b["mask"], 3, generator=gen(5))
    torch.testing.assert_close(p1[:, 1:], y[:, :-1])
    assert torch.all(p1[:, 0] == 0)
    with pytest.raises(ValueError):
        obj.predict_all(b, num_iterations=0)
