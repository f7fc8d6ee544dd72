"""Quant-LCM with a residual: the network predicts the RVQ codes of ``x_{t+1} - base_t`` with a
quantizer fitted on such residuals (and recorded as such), and the concept is ``base_t +
rvq.decode(codes)`` in the loss, teacher-forced prediction, ``predict_next``, cached generation
and the module's code accuracy. The shared residual tests (cached = uncached generation,
residual_scale) run Quant-LCM through test_residual.py's ``FAMILIES``."""

from __future__ import annotations

import copy

import pytest
import torch
from test_quant import overfit
from test_residual import QUANT_SIZE, D, quantizer

from lcm.generation import generate, make_step
from lcm.models import QuantLCMConfig
from lcm.normalizer import RobustNormalizer
from lcm.objectives import QuantObjective
from lcm.objectives.base import residual_base, shift_right
from lcm.quant import RESIDUALS, RVQ

RESIDUALS_TESTED = ["last", "context_mean"]


def _batch(seed=1):
    x = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(seed))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    return {"x": x, "mask": mask, "loss_mask": mask}


def _model(rvq):
    torch.manual_seed(0)
    model = QuantLCMConfig.from_name("tiny", sonar_dim=D, **QUANT_SIZE).build().eval()
    model.set_quantizer(rvq)
    return model


def _relabelled(rvq, residual):
    """The same codebooks recorded as fitted on ``residual``'s residuals."""
    other = copy.deepcopy(rvq)
    other.fitted_on.fill_(RESIDUALS.index(residual))
    return other


def test_rvq_residual_names_follow_the_objectives_residual():
    from typing import get_args

    from lcm.objectives.base import Residual

    assert RESIDUALS == get_args(Residual)


def test_none_is_the_networks_own_output_bit_for_bit():
    """residual='none' (the default): the loss's prediction is the decoded argmax of the logits
    for the codes of the next concepts, a sample is the decoded sampled codes, and the step
    returns the decoded codes; no base anywhere."""
    rvq = quantizer("none")
    model = _model(rvq)
    obj = QuantObjective(model)
    assert obj.residual == "none" and rvq.residual == "none"
    b = _batch()
    x, mask = b["x"], b["mask"]
    out = obj.loss(b)
    codes = rvq.encode(x)
    next_codes = torch.cat((codes[:, 1:], torch.zeros_like(codes[:, :1])), dim=1)
    with torch.no_grad():
        logits = model(x, mask, next_codes)
    assert torch.equal(out.pred, shift_right(rvq.decode(logits.argmax(dim=-1))))
    assert torch.equal(obj.target_codes(b), codes)  # code accuracy's targets: the concepts'
    pred, pred_codes = obj.predict_all_with_codes(b, torch.Generator().manual_seed(2))
    assert torch.equal(pred[:, 0], torch.zeros_like(pred[:, 0]))
    assert torch.equal(pred[:, 1:], rvq.decode(pred_codes[:, 1:]))
    nxt, nxt_codes = obj.predict_next_with_info(x, mask, torch.Generator().manual_seed(3))
    assert torch.equal(nxt, rvq.decode(nxt_codes))


@pytest.mark.parametrize("residual", RESIDUALS_TESTED)
def test_residual_is_the_plain_prediction_plus_the_base(residual):
    """Same network, same codebooks (recorded once as concepts', once as residuals'), same
    draws: the sampled codes do not depend on the base, so every prediction of the residual
    objective is the plain one plus the base, in teacher-forced prediction, predict_next and the
    generation step (cached and uncached); the loss's targets become the residuals' codes."""
    rvq = quantizer("none")
    plain = QuantObjective(_model(rvq))
    res = QuantObjective(_model(_relabelled(rvq, residual)), residual=residual)
    b = _batch()
    x, mask = b["x"], b["mask"]
    base = residual_base(x, mask, residual)  # (B, T, D) base of concept t+1

    pa, ca = plain.predict_all_with_codes(b, torch.Generator().manual_seed(2))
    pb, cb = res.predict_all_with_codes(b, torch.Generator().manual_seed(2))
    assert torch.equal(ca, cb)
    torch.testing.assert_close(pb[:, 1:], pa[:, 1:] + base[:, :-1])
    na = plain.predict_next(x, mask, torch.Generator().manual_seed(3))
    nb = res.predict_next(x, mask, torch.Generator().manual_seed(3))
    want = x[1, :4].mean(dim=0) if residual == "context_mean" else x[1, 3]
    torch.testing.assert_close(nb[1], na[1] + want)
    torch.testing.assert_close(nb, na + res.next_base(x, mask))

    # the targets: codes of x_i - base_{i-1} (position 0 has no base and is never scored)
    target = res.target_codes(b)
    torch.testing.assert_close(target[:, 1:], rvq.encode(x[:, 1:] - base[:, :-1]), rtol=0, atol=0)
    assert torch.equal(target[:, 0], torch.zeros_like(target[:, 0]))
    assert not torch.equal(target[:, 1:], plain.target_codes(b)[:, 1:])
    a, c = plain.loss(b), res.loss(b)
    assert not torch.allclose(a.loss, c.loss)
    assert torch.equal(c.target, x) and torch.equal(c.weight, a.weight)

    # generation: one concept from each row's valid prefix, cached and uncached
    norm = RobustNormalizer.fit(torch.randn(200, D, generator=torch.Generator().manual_seed(4)))
    prompts = [norm.denormalize(x[0]), norm.denormalize(x[1, :4])]
    outs = {}
    for name, obj in (("plain", plain), ("res", res)):
        for use_cache in (True, False):
            gen = generate(
                make_step(obj, use_cache=use_cache),
                prompts,
                norm,
                generator=[torch.Generator().manual_seed(i) for i in range(2)],
                max_new_concepts=1,
                repeat_threshold=2.0,
            )
            outs[name, use_cache] = norm.normalize(torch.stack([c[0] for c in gen.concepts]))
    torch.testing.assert_close(outs["res", True], outs["res", False], atol=1e-5, rtol=1e-5)
    bases = torch.stack([res.next_base(x[:1], None)[0], res.next_base(x[1:, :4], None)[0]])
    torch.testing.assert_close(outs["res", True], outs["plain", True] + bases, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("residual", RESIDUALS_TESTED)
def test_residual_quant_lcm_learns_the_quantized_residual(residual):
    """Trained on one batch, the teacher-forced argmax and the greedy prediction are exactly
    what the codes can express: the base plus the quantized residual, and the module's code
    accuracy (on the residuals' codes) is 1."""
    from lcm.train.module import QuantModule

    x = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 6, dtype=torch.bool)
    batch = {"x": x, "mask": mask, "loss_mask": mask}
    rvq = quantizer(residual, seed=1)
    torch.manual_seed(0)
    module = QuantModule(
        arch=QuantLCMConfig.from_name("tiny", sonar_dim=D, **QUANT_SIZE), residual=residual
    )
    module.objective.model.set_quantizer(rvq)
    obj, model = module.objective, module.objective.model
    first, out = overfit(obj, batch)
    assert first > 1.0 and out.loss.item() < 0.05
    base = residual_base(x, mask, residual)[:, :-1]  # base of concepts 1..
    gold = base + rvq.decode(rvq.encode(x[:, 1:] - base))
    model.eval()
    torch.testing.assert_close(obj.loss(batch).pred[:, 1:], gold)
    greedy = obj.predict_all(batch, temperature=0.0)
    torch.testing.assert_close(greedy[:, 1:], gold)
    pred, extra = module.eval_predict(obj, batch, torch.Generator().manual_seed(0))
    torch.testing.assert_close(pred, greedy)
    assert torch.equal(extra["code_accuracy"][:, 1:], torch.ones(2, 5))
    # scored against the concepts' own codes instead, the same predictions are mostly wrong
    _, codes = obj.predict_all_with_codes(batch, temperature=0.0)
    assert (codes[:, 1:] == rvq.encode(x[:, 1:])).float().mean() < 0.5


def test_a_quantizer_fitted_on_other_data_is_refused(tmp_path):
    from lcm.train.module import QuantModule

    concepts, residuals = quantizer("none"), quantizer("context_mean")
    assert residuals.residual == "context_mean" and "residual=context_mean" in repr(residuals)
    with pytest.raises(ValueError, match="fitted on concepts but the objective has residual="):
        QuantObjective(_model(concepts), residual="context_mean")
    with pytest.raises(ValueError, match="fitted on residuals over 'context_mean' but the "):
        QuantObjective(_model(residuals))
    with pytest.raises(ValueError, match="residuals over 'context_mean'.*residual='last'"):
        QuantObjective(_model(residuals), residual="last")
    # a quantizer set after the objective was built is checked when it is used
    unfitted = QuantLCMConfig.from_name("tiny", sonar_dim=D, **QUANT_SIZE).build()
    obj = QuantObjective(unfitted, residual="last")
    obj.model.set_quantizer(concepts)
    with pytest.raises(ValueError, match="fitted on concepts"):
        obj.loss(_batch())
    with pytest.raises(ValueError, match="fitted on concepts"):
        obj.predict_next(_batch()["x"])
    with pytest.raises(ValueError, match="fitted on concepts"):
        make_step(obj).start(_batch()["x"], _batch()["mask"])
    # precomputed codes are codes of concepts: refused with a residual
    ok = QuantObjective(_model(residuals), residual="context_mean")
    with pytest.raises(ValueError, match="computed per batch"):
        ok.loss({**_batch(), "codes": torch.zeros(2, 6, 4, dtype=torch.long)})

    # the file records what it was fitted on; the module names the file it refuses
    path = tmp_path / "rvq_cm.pt"
    residuals.save(path)
    loaded = RVQ.load(path)
    assert loaded.residual == "context_mean" and torch.equal(loaded.codebooks, residuals.codebooks)
    arch = QuantLCMConfig.from_name("tiny", sonar_dim=D, **QUANT_SIZE)
    module = QuantModule(arch=arch, rvq_path=str(path), residual="context_mean")
    assert module.rvq.residual == "context_mean"
    assert int(module.state_dict()["objective.model.rvq.fitted_on"]) == 2  # in checkpoints
    with pytest.raises(ValueError, match=f"{path}: the quantizer was fitted on residuals"):
        QuantModule(arch=arch, rvq_path=str(path))
    # an EMA copy carries the record with the codebooks (buffers are copied)
    ema = QuantModule(arch=arch, residual="context_mean", ema_decay=0.9)
    ema.objective.model.set_quantizer(residuals)
    ema.ema_model.update(ema.objective.model)
    assert ema.eval_objective().rvq.residual == "context_mean"
    # a file written before the record existed holds a quantizer of concepts
    blob = torch.load(path, weights_only=True)
    del blob["state_dict"]["fitted_on"]
    torch.save(blob, tmp_path / "old.pt")
    assert RVQ.load(tmp_path / "old.pt").residual == "none"
    with pytest.raises(ValueError, match="fitted on concepts"):
        QuantModule(arch=arch, rvq_path=str(tmp_path / "old.pt"), residual="context_mean")
    with pytest.raises(ValueError, match="unknown residual 'mean'"):
        RVQ(D, **QUANT_SIZE).fit(torch.randn(700, D), residual="mean")


def test_residual_samples_and_fit_rvq_use_whole_training_windows(tmp_path):
    """``sample_residuals`` cuts each document into the training windows and takes
    ``x_{t+1} - base_t`` inside each; ``lcm fit-rvq --residual`` fits on them and records it,
    and a residual module takes that file while a plain one refuses it."""
    import json

    import numpy as np
    from helpers_train import make_shards

    from lcm.cli import run
    from lcm.train import ConceptDataModule
    from lcm.train.data import window_starts
    from lcm.train.module import QuantModule

    shards = make_shards(tmp_path / "data", 40, seed=3)
    dm = ConceptDataModule(str(shards), val_fraction=0.25, max_seq_len=4, max_concepts_per_batch=4)
    got = dm.sample_residuals("train", 10_000, "context_mean", seed=0)
    parts = []
    for store, doc in dm._documents("train", 0):  # the same order as sample_concepts
        x = dm.normalizer.normalize(torch.from_numpy(np.array(store.vectors(dm.text_field, doc))))
        for s in window_starts(len(x), 4):
            z = x[s : s + 4]
            means = z.cumsum(0) / torch.arange(1, len(z) + 1)[:, None]
            parts.append(z[1:] - means[:-1])
    want = torch.cat(parts)
    torch.testing.assert_close(got, want)
    # windows overlap by one concept: every concept but a document's first gives one residual
    n_docs = len(np.unique(dm._splits["train"][1].doc))
    assert len(got) == len(dm.sample_concepts("train", 10_000)) - n_docs
    whole = ConceptDataModule(
        str(shards), val_fraction=0.25, max_seq_len=64, max_concepts_per_batch=64
    ).sample_residuals("train", 10_000, "context_mean")
    assert whole.shape == got.shape and not torch.allclose(whole, got)  # the base restarts
    assert torch.equal(dm.sample_residuals("train", 7, "context_mean"), got[:7])
    last = dm.sample_residuals("train", 10_000, "last")
    assert not torch.allclose(last, got)
    with pytest.raises(ValueError, match="only 'last' and 'context_mean'"):
        dm.sample_residuals("train", 10, "source_mean")

    out = tmp_path / "rvq_cm.pt"
    report = run(
        ["fit-rvq", f"--data_dir={shards}", f"--output={out}", "--n_codebooks=2",
         "--n_units=16", "--val_fraction=0.25", "--residual=context_mean", "--window=4"]
    )  # fmt: skip
    assert report["residual"] == "context_mean" and report["train_concepts"] == len(got)
    assert json.loads(out.with_suffix(".json").read_text())["residual"] == "context_mean"
    rvq = RVQ.load(out)
    assert rvq.residual == "context_mean"
    assert rvq.reconstruction_error(got)["relative"] == pytest.approx(
        report["relative_error"]["train"][2], rel=1e-6
    )
    arch = QuantLCMConfig.from_name("tiny", sonar_dim=16, n_codebooks=2, n_units=16)
    module = QuantModule(arch=arch, rvq_path=str(out), residual="context_mean")
    assert torch.equal(module.rvq.codebooks, rvq.codebooks)
    with pytest.raises(ValueError, match="fitted on residuals over 'context_mean'"):
        QuantModule(arch=arch, rvq_path=str(out))
