"""Quant-LCM's expected decoding (``decoding="expected"``): each level adds the probability-weighted
mean of its code vectors to the prefix, the concept is the final prefix and the codes are each
level's argmax. Checked against a hand computation, against greedy decoding when the weights are
one-hot, cached against uncached generation; the default (``"sample"``) is bit-identical to the
code-drawing decoding it replaced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_residual import QUANT_SIZE, D, quantizer

from lcm.api import Settings, generation_options
from lcm.generation import generate, make_step
from lcm.models import QuantLCMConfig
from lcm.normalizer import RobustNormalizer
from lcm.objectives import QuantObjective, sample_logits
from lcm.objectives.base import residual_base, shift_right

K = QUANT_SIZE["n_codebooks"]


def _objective(residual="none", **kwargs):
    rvq = quantizer(residual)
    torch.manual_seed(0)
    model = QuantLCMConfig.from_name("tiny", sonar_dim=D, **QUANT_SIZE).build().eval()
    model.set_quantizer(rvq)
    return QuantObjective(model, residual=residual, **kwargs)


def _batch(seed=1):
    x = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(seed))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    return {"x": x, "mask": mask, "loss_mask": mask}


def _by_hand(obj, h, temperature, top_p=1.0):
    """The expected decoding written out: per level the weights (nucleus, renormalized) times
    the codebook, added to the prefix; the codes are the argmax per level."""
    model, books = obj.model, obj.model.rvq.codebooks
    cache = model.new_depth_cache()
    prefix = torch.zeros(h.shape[0], D)
    codes = []
    for j in range(K):
        logits = model.next_level_logits(h, prefix, cache)  # (N, U)
        p = F.softmax(logits / temperature, dim=-1)
        order = p.argsort(dim=-1, descending=True)
        keep = torch.zeros_like(p, dtype=torch.bool)
        for n in range(p.shape[0]):  # the smallest set of likeliest units reaching top_p
            mass = 0.0
            for u in order[n].tolist():
                keep[n, u] = True
                mass += float(p[n, u])
                if mass >= top_p:
                    break
        w = torch.where(keep, p, 0.0)
        w = w / w.sum(dim=-1, keepdim=True)
        prefix = prefix + sum(w[:, u : u + 1] * books[j, u] for u in range(books.shape[1]))
        codes.append(logits.argmax(dim=-1))
    return prefix, torch.stack(codes, dim=1)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.5, 1.0), (1.0, 0.6)])
def test_expected_decoding_equals_the_weighted_sums_by_hand(temperature, top_p):
    obj = _objective()
    h = torch.randn(5, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want_y, want_codes = _by_hand(obj, h, temperature, top_p)
    y, codes = obj.decode_levels(h, temperature=temperature, top_p=top_p, decoding="expected")
    torch.testing.assert_close(y, want_y, atol=1e-5, rtol=1e-5)
    assert torch.equal(codes, want_codes)
    # a point prediction: no draw, so any generator gives the same concept
    again, _ = obj.decode_levels(
        h, torch.Generator().manual_seed(9), temperature=temperature, top_p=top_p,
        decoding="expected",
    )  # fmt: skip
    assert torch.equal(again, y)
    # and not the sum of the argmax codes' vectors (the weights are spread at these settings)
    assert not torch.allclose(y, obj.rvq.decode(codes), atol=1e-3)


def test_peaked_weights_give_greedy_decoding():
    obj = _objective()
    b = _batch()
    greedy, greedy_codes = obj.predict_all_with_codes(b, temperature=0.0)
    # temperature 0: one-hot weights on the argmax, which is greedy decoding
    zero, zero_codes = obj.predict_all_with_codes(b, temperature=0.0, decoding="expected")
    assert torch.equal(zero_codes, greedy_codes)
    torch.testing.assert_close(zero, greedy, atol=1e-6, rtol=0)
    # a tiny temperature makes softmax one-hot in floating point: the same concept
    peaked, peaked_codes = obj.predict_all_with_codes(b, temperature=1e-4, decoding="expected")
    assert torch.equal(peaked_codes, greedy_codes)
    torch.testing.assert_close(peaked, greedy, atol=1e-5, rtol=0)
    warm = obj.predict_all(b, temperature=1.0, decoding="expected")
    assert not torch.allclose(warm[:, 1:], greedy[:, 1:], atol=1e-3)


def test_default_sample_decoding_is_the_code_drawing_one():
    """The default ("sample") draws the same codes from the same generator as the decoding
    written out here (draw per level, sum the drawn vectors), bit for bit."""
    obj = _objective()
    assert obj.decoding == "sample"
    b = _batch()
    x, mask = b["x"], b["mask"]
    h = obj.model.contextualize(x, mask).reshape(12, -1)
    g = torch.Generator().manual_seed(4)
    cache = obj.model.new_depth_cache()
    prefix = torch.zeros(12, D)
    codes = []
    with torch.no_grad():
        for j in range(K):
            c = sample_logits(obj.model.next_level_logits(h, prefix, cache), 1.0, 0.9, g)
            codes.append(c)
            prefix = prefix + obj.rvq.codebooks[j, c]
    codes = torch.stack(codes, dim=1)
    want = shift_right(obj.rvq.decode(codes).reshape(2, 6, D))
    for options in ({}, {"decoding": "sample"}):
        pred, got = obj.predict_all_with_codes(b, torch.Generator().manual_seed(4), **options)
        assert torch.equal(got, shift_right(codes.reshape(2, 6, K)))
        assert torch.equal(pred, want)
    assert obj.options() == {"temperature": None, "top_p": None, "decoding": None}
    with pytest.raises(ValueError, match="decoding must be one of"):
        obj.predict_all(b, decoding="mean")
    with pytest.raises(ValueError, match="decoding must be one of"):
        QuantObjective(obj.model, decoding="mode")
    # an objective whose default is expected decoding predicts it without being asked
    exp = QuantObjective(obj.model, temperature=0.5, decoding="expected")
    torch.testing.assert_close(
        exp.predict_all(b), obj.predict_all(b, temperature=0.5, decoding="expected"), rtol=0, atol=0
    )


@pytest.mark.parametrize("residual", ["none", "context_mean"])
def test_expected_generation_cached_equals_uncached(residual):
    obj = _objective(residual)
    b = _batch()
    x, mask = b["x"], b["mask"]
    norm = RobustNormalizer.fit(torch.randn(200, D, generator=torch.Generator().manual_seed(4)))
    prompts = [norm.denormalize(x[0]), norm.denormalize(x[1, :4])]
    outs = {}
    for decoding in ("expected", "sample"):
        for use_cache in (True, False):
            gen = generate(
                make_step(obj, use_cache=use_cache, decoding=decoding, temperature=0.7),
                prompts,
                norm,
                generator=[torch.Generator().manual_seed(i) for i in range(2)],
                max_new_concepts=3,
                repeat_threshold=2.0,
            )
            outs[decoding, use_cache] = torch.stack(list(gen.concepts))
    assert outs["expected", True].shape == (2, 3, D)
    torch.testing.assert_close(outs["expected", True], outs["expected", False], atol=1e-4, rtol=0)
    assert not torch.allclose(outs["expected", True], outs["sample", True], atol=1e-3)
    # the first generated concept is predict_next's (with its residual base)
    first = obj.predict_next(x, mask, temperature=0.7, decoding="expected")
    torch.testing.assert_close(
        norm.normalize(outs["expected", True][:, 0]), first, atol=1e-4, rtol=0
    )
    if residual != "none":  # the network's output is added to the base of the context
        y, _ = obj.decode_levels(
            obj.model.contextualize(x, mask)[:, [5, 3]].diagonal().T, temperature=0.7,
            decoding="expected",
        )  # fmt: skip
        torch.testing.assert_close(first, y + obj.next_base(x, mask), atol=1e-5, rtol=0)
        assert obj.next_base(x, mask) is not None
        torch.testing.assert_close(
            obj.next_base(x, mask)[1], residual_base(x, mask, residual)[1, 3], atol=1e-6, rtol=0
        )


def test_module_eval_decoding_and_settings():
    from lcm.train.module import QuantModule

    torch.manual_seed(0)
    arch = QuantLCMConfig.from_name("tiny", sonar_dim=D, **QUANT_SIZE)
    module = QuantModule(arch=arch)
    assert module.eval_decoding == "sample"
    assert module.eval_kwargs() == {"temperature": 0.0, "decoding": "sample"}
    module.objective.model.set_quantizer(quantizer("none"))
    module.eval()
    b = _batch()
    obj = module.objective
    pred, extra = module.eval_predict(obj, b, torch.Generator().manual_seed(0))
    assert torch.equal(pred, obj.predict_all(b, temperature=0.0))
    module.eval_decoding, module.eval_temperature = "expected", 0.5
    pred, extra = module.eval_predict(obj, b, torch.Generator().manual_seed(0))
    want, codes = obj.predict_all_with_codes(b, temperature=0.5, decoding="expected")
    assert torch.equal(pred, want)
    # code accuracy: the share of levels whose argmax is the target's code
    target = obj.target_codes(b)
    assert torch.equal(extra["code_accuracy"], (codes == target).float().mean(dim=-1))
    with pytest.raises(ValueError, match="decoding must be one of"):
        QuantModule(arch=arch, eval_decoding="mean")

    assert Settings().decoding is None and generation_options(Settings())["decoding"] is None
    assert generation_options(Settings(decoding="expected"))["decoding"] == "expected"
    with pytest.raises(ValueError, match="decoding must be 'sample' or 'expected'"):
        Settings(decoding="mean")
