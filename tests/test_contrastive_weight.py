"""Base-LCM's ``contrastive_weight``: an InfoNCE term added to the MSE on the final prediction
(base plus network output with a residual). Off by default, and then exactly the MSE."""

from __future__ import annotations

import pytest
import torch

from lcm.models import BaseLCMConfig
from lcm.objectives import MSEObjective
from lcm.objectives.base import masked_mse, residual_base, shift_right, target_weight
from lcm.objectives.mse import regression_loss

D = 4


def _batch(seed: int = 0, dim: int = D):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 6, dim, generator=g)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 4:] = False
    return {"x": x, "mask": mask, "loss_mask": mask.clone()}


def _objective(weight: float = 0.0, residual: str = "none", **kw) -> MSEObjective:
    torch.manual_seed(0)
    model = BaseLCMConfig.from_name("tiny", sonar_dim=D).build()
    return MSEObjective(model, residual, contrastive_weight=weight, **kw)


def _by_hand(objective: MSEObjective, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(final prediction aligned to targets, weight, the plain masked MSE) computed by hand."""
    y = objective.model(batch["x"], batch["mask"])
    base = residual_base(batch["x"], batch["mask"], objective.residual)
    pred = shift_right(y if base is None else y + base)
    weight = target_weight(batch).clone()
    weight[:, 0] = False
    return pred, weight, masked_mse(pred, batch["x"], weight)


@pytest.mark.parametrize("residual", ["none", "context_mean"])
def test_default_off_is_exactly_the_mse_with_the_same_gradient(residual):
    batch = _batch()
    default = _objective(residual=residual)  # contrastive_weight not given
    assert default.contrastive_weight == 0.0
    out = default.loss(batch)
    _, _, mse = _by_hand(default, batch)
    assert torch.equal(out.loss, mse)  # bit-identical
    out.loss.backward()
    grads = [p.grad.clone() for p in default.parameters()]
    default.zero_grad()
    mse_again = _by_hand(default, batch)[2]
    mse_again.backward()
    for a, p in zip(grads, default.parameters(), strict=True):
        assert torch.equal(a, p.grad)


@pytest.mark.parametrize("residual", ["none", "context_mean"])
def test_weighted_term_is_infonce_on_the_final_prediction_and_trains_the_network(residual):
    batch = _batch(1)
    w = 0.5
    on, off = _objective(w, residual, temperature=0.1), _objective(0.0, residual, temperature=0.1)
    pred, weight, mse = _by_hand(on, batch)
    term = regression_loss(pred, batch["x"], weight, "infonce", 0.1)
    assert term.item() > 0.1  # random network: far from a perfect ranking
    value = on.loss(batch).loss
    torch.testing.assert_close(value, mse + w * term)
    torch.testing.assert_close(value - off.loss(batch).loss, w * term)
    # the term's own gradient reaches every network parameter
    on.zero_grad()
    (value - mse).backward()  # = w * term
    for name, p in on.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # and changes the total gradient against the MSE alone
    on.zero_grad()
    on.loss(batch).loss.backward()
    g_on = torch.cat([p.grad.flatten() for p in on.parameters()])
    off.zero_grad()
    off.loss(batch).loss.backward()
    g_off = torch.cat([p.grad.flatten() for p in off.parameters()])
    assert not torch.allclose(g_on, g_off)


def test_bad_weight_is_rejected_and_the_module_passes_it():
    with pytest.raises(ValueError, match="contrastive_weight must be >= 0"):
        _objective(-1.0)
    from lcm.train.module import BaseLCMModule

    module = BaseLCMModule(contrastive_weight=0.25, temperature=0.07)
    assert module.objective.contrastive_weight == 0.25
    assert module.objective.temperature == 0.07
    assert BaseLCMModule().objective.contrastive_weight == 0.0


def test_extra_negatives_are_wrong_answers_unless_equal_to_the_target():
    batch = _batch(2)
    pred, weight, _ = _by_hand(_objective(), batch)
    pred = pred.detach()
    x = batch["x"]
    negs = torch.randn(5, D, generator=torch.Generator().manual_seed(3))
    value = regression_loss(pred, x, weight, "infonce", 0.1, negatives=negs)
    # by hand: softmax over the N targets and the M negatives, cross-entropy to the own target
    p = torch.nn.functional.normalize(pred[weight], dim=-1)
    g = torch.nn.functional.normalize(torch.cat([x[weight], negs]), dim=-1)
    logits = p @ g.T / 0.1
    want = torch.nn.functional.cross_entropy(logits, torch.arange(len(p)))
    torch.testing.assert_close(value, want)
    assert value > regression_loss(pred, x, weight, "infonce", 0.1)  # more to out-rank
    # copies of the batch's targets (as a queue holds after an epoch): row i's own copy is
    # masked out, the others' copies stay wrong answers
    copies = regression_loss(pred, x, weight, "infonce", 0.1, negatives=x[weight] * 2.0)
    own = p @ torch.nn.functional.normalize(x[weight], dim=-1).T / 0.1  # (N, N)
    eye = torch.eye(len(p), dtype=torch.bool)
    both = torch.cat([own, own.masked_fill(eye, float("-inf"))], dim=1)
    want = torch.nn.functional.cross_entropy(both, torch.arange(len(p)))
    torch.testing.assert_close(copies, want)
    # none given, or an empty set: the batch-only loss, bit for bit
    empty = regression_loss(pred, x, weight, "infonce", 0.1, negatives=torch.empty(0, D))
    assert torch.equal(empty, regression_loss(pred, x, weight, "infonce", 0.1))


def test_the_queue_keeps_earlier_training_targets_newest_first_and_only_in_training():
    first, second = _batch(4), _batch(5)
    obj = _objective(0.5, contrastive_queue=20)
    obj.train()
    out1 = obj.loss(first)
    w1 = target_weight(first).clone()
    w1[:, 0] = False
    assert torch.equal(obj.queue, first["x"][w1])  # 13 weighted targets, under the cap
    plain = _objective(0.5)
    plain.train()
    torch.testing.assert_close(out1.loss, plain.loss(first).loss)  # empty queue: no change
    out2 = obj.loss(second)
    # the second batch's term also ranks against the first batch's 13 targets
    pred, weight, mse = _by_hand(obj, second)
    term = regression_loss(pred, second["x"], weight, "infonce", 0.05, negatives=first["x"][w1])
    torch.testing.assert_close(out2.loss, mse + 0.5 * term)
    assert obj.queue.shape == (20, D)  # capped: 13 new first, then 7 of the first batch
    assert torch.equal(obj.queue, torch.cat([second["x"][weight], first["x"][w1]])[:20])
    assert not obj.queue.requires_grad
    # in evaluation the queue is neither used nor updated
    obj.eval()
    before = obj.queue.clone()
    torch.testing.assert_close(obj.loss(second).loss, plain.eval().loss(second).loss)
    assert torch.equal(obj.queue, before)
    with pytest.raises(ValueError, match="contrastive_queue must be >= 0"):
        _objective(0.5, contrastive_queue=-1)
