"""The ``residual`` option: a family predicts concept t+1 as a base from the context (the last
concept or the context mean) plus the network's output, in training, teacher-forced prediction
and cached generation alike (Quant-LCM's own tests: test_quant_residual.py)."""

from __future__ import annotations

import pytest
import torch

from lcm.generation import SamplingConfig, generate, make_step
from lcm.models import BaseLCMConfig, OneTowerConfig, QuantLCMConfig, RefinerConfig, TwoTowerConfig
from lcm.normalizer import RobustNormalizer
from lcm.objectives import (
    MSEObjective,
    OneTowerDiffusion,
    QuantObjective,
    RefinerObjective,
    TwoTowerDiffusion,
)
from lcm.objectives.base import residual_base
from lcm.objectives.diffusion import with_base
from lcm.quant import RVQ

D = 16
RESIDUALS = ["last", "context_mean"]
FAMILIES = [
    (BaseLCMConfig, MSEObjective),
    (TwoTowerConfig, TwoTowerDiffusion),
    (OneTowerConfig, OneTowerDiffusion),
    (RefinerConfig, RefinerObjective),
    (QuantLCMConfig, QuantObjective),
]
IDS = ["base_lcm", "two_tower", "one_tower", "refiner", "quant_lcm"]
QUANT_SIZE = {"n_codebooks": 4, "n_units": 16}  # faiss wants >= 39 * 16 fit points


def quantizer(residual, n_docs=100, length=8, seed=0):
    """A tiny RVQ (4 x 16) fitted on random concepts (``"none"``) or on the residuals over
    ``residual``'s base of random length-``length`` documents, as a residual Quant-LCM needs."""
    x = torch.randn(n_docs, length, D, generator=torch.Generator().manual_seed(seed))
    base = residual_base(x, None, residual)
    data = x.reshape(-1, D) if base is None else (x[:, 1:] - base[:, :-1]).reshape(-1, D)
    return RVQ(D, **QUANT_SIZE).fit(data, niter=5, residual=residual)


@pytest.fixture(scope="module")
def normalizer():
    torch.manual_seed(0)
    return RobustNormalizer.fit(torch.randn(200, D) * 2 + 1)


def _objective(cfg, objective_cls, residual):
    torch.manual_seed(1)
    if objective_cls is QuantObjective:
        model = cfg.from_name("tiny", sonar_dim=D, **QUANT_SIZE).build().eval()
        model.set_quantizer(quantizer(residual))
        return QuantObjective(model, residual=residual)
    model = cfg.from_name("tiny", sonar_dim=D).build().eval()
    if objective_cls is MSEObjective:
        return MSEObjective(model, residual)
    if objective_cls is RefinerObjective:
        return RefinerObjective(model, residual=residual)
    sampling = SamplingConfig(num_inference_steps=4, guidance_scale=2.0)
    return objective_cls(model, sampling=sampling, residual=residual).eval()


def _generate(objective, prompts, normalizer, use_cache=True, seed=0):
    step = make_step(objective, use_cache=use_cache)
    g = torch.Generator().manual_seed(seed)
    return generate(
        step, prompts, normalizer, generator=g, max_new_concepts=4, repeat_threshold=2.0
    )


def test_residual_base_values_with_right_and_left_padding():
    x = torch.arange(1.0, 7.0).reshape(1, 3, 2)  # concepts (1,2), (3,4), (5,6)
    assert torch.equal(residual_base(x, None, "last"), x)
    assert residual_base(x, None, "none") is None
    mean = residual_base(x, None, "context_mean")
    torch.testing.assert_close(mean[0], torch.tensor([[1.0, 2.0], [2.0, 3.0], [3.0, 4.0]]))
    # right padding: the padded last slot does not change the earlier means
    right = residual_base(x, torch.tensor([[True, True, False]]), "context_mean")
    torch.testing.assert_close(right[0, :2], mean[0, :2])
    # left padding: the padded first slot is left out of every mean
    left = residual_base(x, torch.tensor([[False, True, True]]), "context_mean")
    torch.testing.assert_close(left[0, 1:], torch.tensor([[3.0, 4.0], [4.0, 5.0]]))
    with pytest.raises(ValueError, match="unknown residual 'first'"):
        residual_base(x, None, "first")  # type: ignore[arg-type]


@pytest.mark.parametrize("residual", RESIDUALS)
@pytest.mark.parametrize("cfg,objective_cls", FAMILIES, ids=IDS)
def test_cached_generation_equals_uncached_with_a_residual(
    cfg, objective_cls, residual, normalizer
):
    objective = _objective(cfg, objective_cls, residual)
    prompts = [torch.randn(3, D), torch.randn(6, D)]
    a = _generate(objective, prompts, normalizer)
    b = _generate(objective, prompts, normalizer, use_cache=False)
    plain = _generate(_objective(cfg, objective_cls, "none"), prompts, normalizer)
    for x, y, z in zip(a.concepts, b.concepts, plain.concepts):
        assert x.shape == (4, D)
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(x, z, atol=1e-3)  # the base changes what is generated


@pytest.mark.parametrize("residual", RESIDUALS)
def test_base_lcm_residual_adds_the_base_everywhere(residual, normalizer):
    """With a zero PostNet the network outputs 0, so every prediction is the base itself: the
    loss, teacher-forced prediction, predict_next and the generation step agree on it."""
    objective = _objective(BaseLCMConfig, MSEObjective, residual)
    torch.nn.init.zeros_(objective.model.postnet.weight)
    torch.nn.init.zeros_(objective.model.postnet.bias)
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    expected = residual_base(x, mask, residual)  # (B, T, D): base of concept t+1
    pred = objective.predict_all({"x": x, "mask": mask})
    torch.testing.assert_close(pred[:, 1:], expected[:, :-1])
    out = objective.loss({"x": x, "mask": mask, "loss_mask": mask})
    torch.testing.assert_close(out.pred, pred)
    nxt = objective.predict_next(x, mask)
    torch.testing.assert_close(nxt[0], expected[0, 4])
    torch.testing.assert_close(nxt[1], expected[1, 2])
    if residual == "last":
        torch.testing.assert_close(nxt[1], x[1, 2])
    else:
        torch.testing.assert_close(nxt[1], x[1, :3].mean(dim=0))
    # generation from the second row's three concepts (raw space) gives the same next concept
    prompt = normalizer.denormalize(x[1, :3])
    gen = generate(
        make_step(objective), [prompt], normalizer, max_new_concepts=1, repeat_threshold=2.0
    )
    torch.testing.assert_close(
        gen.concepts[0][0], normalizer.denormalize(nxt[1]), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("residual", RESIDUALS)
def test_refiner_residual_adds_the_base_everywhere(residual, normalizer):
    """With a zero PostNet the readout is 0, so every prediction of the refiner is the base
    itself: the loss, teacher-forced prediction (fixed r and adaptive exit), predict_next and
    the cached generation step agree on it."""
    objective = _objective(RefinerConfig, RefinerObjective, residual)
    torch.nn.init.zeros_(objective.model.postnet.weight)
    torch.nn.init.zeros_(objective.model.postnet.bias)
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    batch = {"x": x, "mask": mask, "loss_mask": mask}
    expected = residual_base(x, mask, residual)  # (B, T, D): base of concept t+1
    g = torch.Generator().manual_seed(0)
    out = objective.loss(batch, g, num_iterations=3)
    torch.testing.assert_close(out.pred[:, 1:], expected[:, :-1])
    pred, steps = objective.predict_all_with_exit(batch, g)
    torch.testing.assert_close(pred[:, 1:], expected[:, :-1])
    assert (steps[:, 1:] == objective.exit_rule.exit_patience + 1).all()  # the base never moves
    fixed = objective.predict_all(batch, g, num_iterations=2)
    torch.testing.assert_close(fixed, pred)
    nxt = objective.predict_next(x, mask, g)
    torch.testing.assert_close(nxt[0], expected[0, 4])
    torch.testing.assert_close(nxt[1], expected[1, 2])
    want = x[1, 2] if residual == "last" else x[1, :3].mean(dim=0)
    torch.testing.assert_close(nxt[1], want)
    prompt = normalizer.denormalize(x[1, :3])
    gen = generate(
        make_step(objective), [prompt], normalizer, max_new_concepts=1, repeat_threshold=2.0
    )
    torch.testing.assert_close(
        gen.concepts[0][0], normalizer.denormalize(nxt[1]), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("residual", RESIDUALS)
def test_refiner_residual_is_the_plain_prediction_plus_the_base(residual):
    """Same weights and random draws: with a fixed r the residual refiner's loss prediction and
    teacher-forced prediction are the plain refiner's plus the base, and residual='none' is the
    plain network's readout (no base anywhere)."""
    torch.manual_seed(1)
    model = RefinerConfig.from_name("tiny", sonar_dim=D).build().eval()
    plain = RefinerObjective(model)
    res = RefinerObjective(model, residual=residual)
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[True] * 5, [True, True, True, True, False]])
    batch = {"x": x, "mask": mask, "loss_mask": mask}
    base = residual_base(x, mask, residual)
    a = plain.loss(batch, torch.Generator().manual_seed(3), num_iterations=4)
    b = res.loss(batch, torch.Generator().manual_seed(3), num_iterations=4)
    torch.testing.assert_close(b.pred[:, 1:], a.pred[:, 1:] + base[:, :-1])
    torch.testing.assert_close(b.target, a.target)
    assert not torch.allclose(a.loss, b.loss)
    # residual='none': the prediction is the network's readout after r iterations, bit for bit
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        inject, ctx = model.contextualize(x, mask)
        cmask = model.cross_mask(mask, 5, 5, x.device)
        state = plain.initial_state(inject, g)
        state = model.iterate(state, inject, model.precompute_cross_kv(ctx), 4, cmask)
        assert torch.equal(a.pred[:, 1:], model.readout(state)[:, :-1])
    pa = plain.predict_all(batch, torch.Generator().manual_seed(5), num_iterations=4)
    pb = res.predict_all(batch, torch.Generator().manual_seed(5), num_iterations=4)
    torch.testing.assert_close(pb[:, 1:], pa[:, 1:] + base[:, :-1])
    na = plain.predict_next(x, mask, torch.Generator().manual_seed(5), num_iterations=4)
    nb = res.predict_next(x, mask, torch.Generator().manual_seed(5), num_iterations=4)
    torch.testing.assert_close(nb, na + res.next_base(x, mask))


@pytest.mark.parametrize("residual", RESIDUALS)
@pytest.mark.parametrize("objective_cls,cfg", [(TwoTowerDiffusion, TwoTowerConfig)])
def test_diffusion_loss_adds_the_shifted_base_to_the_x0_estimate(objective_cls, cfg, residual):
    torch.manual_seed(1)
    model = cfg.from_name("tiny", sonar_dim=D).build()
    plain = objective_cls(model, cfg_dropout=0.0)
    res = objective_cls(model, cfg_dropout=0.0, residual=residual)
    x = torch.randn(2, 5, D)
    mask = torch.ones(2, 5, dtype=torch.bool)
    batch = {"x": x, "mask": mask, "loss_mask": mask}
    a = plain.loss(batch, torch.Generator().manual_seed(3))
    b = res.loss(batch, torch.Generator().manual_seed(3))
    base = residual_base(x, mask, residual)
    torch.testing.assert_close(b.pred[:, 0], a.pred[:, 0])  # the first concept has no base
    torch.testing.assert_close(b.pred[:, 1:], a.pred[:, 1:] + base[:, :-1])
    torch.testing.assert_close(b.target, a.target)  # the target is still the concept


def test_unconditional_rows_get_no_base():
    base = torch.ones(2, 1, D)

    def zeros(x_t, t, drop):
        return torch.zeros_like(x_t)

    fn = with_base(zeros, base)
    drop = torch.tensor([False, False, True, True])  # conditional half, unconditional half
    out = fn(torch.zeros(4, 1, D), torch.zeros(4, dtype=torch.long), drop)
    assert torch.equal(out[:2], torch.ones(2, 1, D))
    assert torch.equal(out[2:], torch.zeros(2, 1, D))


def test_residual_is_recorded_and_refused_where_unsupported():
    from lcm.train.module import BaseLCMModule, QuantModule, RefinerModule, TwoTowerModule

    quant_arch = QuantLCMConfig.from_name("tiny", sonar_dim=D)

    arch = BaseLCMConfig.from_name("tiny", sonar_dim=D)
    module = BaseLCMModule(arch=arch, residual="context_mean")
    assert module.hparams["residual"] == "context_mean"
    assert module.objective.residual == "context_mean"
    two = TwoTowerModule(arch=TwoTowerConfig.from_name("tiny", sonar_dim=D), residual="last")
    assert two.objective.residual == "last" and two.hparams["residual"] == "last"
    assert BaseLCMModule(arch=arch).objective.residual == "none"  # the default changes nothing
    quant = QuantModule(arch=quant_arch, residual="last")
    assert quant.objective.residual == "last" and quant.hparams["residual"] == "last"
    with pytest.raises(ValueError, match="QuantObjective does not support residual='source_mean'"):
        QuantModule(arch=quant_arch, residual="source_mean")
    ref = RefinerModule(arch=RefinerConfig.from_name("tiny", sonar_dim=D), residual="context_mean")
    assert ref.objective.residual == "context_mean" and ref.hparams["residual"] == "context_mean"
    with pytest.raises(
        ValueError, match="RefinerObjective does not support residual='source_mean'"
    ):
        RefinerModule(arch=RefinerConfig.from_name("tiny", sonar_dim=D), residual="source_mean")
    # the diffusion families take the source bases too, with the module's separator
    two = TwoTowerModule(arch=TwoTowerConfig.from_name("tiny", sonar_dim=D), residual="source_lead")
    assert two.objective.residual == "source_lead" and two.hparams["residual"] == "source_lead"
    assert torch.equal(two.objective._separator(), two.separator)
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        TwoTowerModule(
            arch=TwoTowerConfig.from_name("tiny", sonar_dim=D),
            residual="last",
            prediction_type="epsilon",
        )


def test_attach_refuses_an_objective_built_without_the_modules_residual():
    """A plug-in family whose build forgets to pass the module's residual to its objective is
    stopped at attach, not trained silently without the residual."""
    from lcm.objectives.mse import MSEObjective
    from lcm.train.module import BaseLCMModule

    arch = BaseLCMConfig.from_name("tiny", sonar_dim=D)
    module = BaseLCMModule(arch=arch, residual="context_mean")
    with pytest.raises(
        ValueError, match="residual='none' but the module has residual='context_mean'"
    ):
        module.attach(MSEObjective(arch.build()))
    assert module.objective.residual == "context_mean"  # the module keeps its own objective


def test_source_mean_is_the_mean_of_the_source_without_end_of_text_and_separator():
    sep = torch.tensor([9.0, -9.0])
    # [a, b, EOT, SEP, s1]: from the separator on, the base is mean(a, b); EOT and SEP never enter
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [7.0, 7.0], [9.0, -9.0], [5.0, 0.0]]])
    base = residual_base(x, None, "source_mean", sep)
    torch.testing.assert_close(base[0, 3:], torch.tensor([[2.0, 3.0], [2.0, 3.0]]))
    torch.testing.assert_close(base[0, :2], torch.tensor([[1.0, 2.0], [2.0, 3.0]]))
    # left padding (generation) shifts nothing; a row without a separator is context_mean
    padded = torch.cat((torch.zeros(1, 2, 2), x), dim=1)
    mask = torch.tensor([[False, False] + [True] * 5])
    torch.testing.assert_close(residual_base(padded, mask, "source_mean", sep)[0, 5:], base[0, 3:])
    plain = x[:, :3]
    torch.testing.assert_close(
        residual_base(plain, None, "source_mean", sep), residual_base(plain, None, "context_mean")
    )
    with pytest.raises(ValueError, match="needs the separator"):
        residual_base(x, None, "source_mean")


def test_source_lead_is_the_midpoint_of_the_source_mean_and_its_first_concept():
    sep = torch.tensor([9.0, -9.0])
    # [a, b, EOT, SEP, s1]: from the separator on, (mean(a, b) + a) / 2; EOT and SEP never enter
    x = torch.tensor([[[1.0, 2.0], [3.0, 5.0], [7.0, 7.0], [9.0, -9.0], [5.0, 0.0]]])
    base = residual_base(x, None, "source_lead", sep)
    torch.testing.assert_close(base[0, 3:], torch.tensor([[1.5, 2.75], [1.5, 2.75]]))
    torch.testing.assert_close(base[0, 0], torch.tensor([1.0, 2.0]))  # a alone: mean = first
    # left padding (generation): padded slots are not the first concept, and their base is 0
    padded = torch.cat((torch.full((1, 2, 2), 4.0), x), dim=1)
    mask = torch.tensor([[False, False] + [True] * 5])
    left = residual_base(padded, mask, "source_lead", sep)
    torch.testing.assert_close(left[0, 2:], base[0])
    assert torch.equal(left[0, :2], torch.zeros(2, 2))
    with pytest.raises(ValueError, match="'source_lead' needs the separator"):
        residual_base(x, None, "source_lead")


def test_base_lcm_source_lead_agrees_in_training_and_generation(normalizer):
    """With a zero PostNet the teacher-forced and the generated summary concept are both the
    midpoint of the source mean and the source's first concept (batched, left-padded prompts
    of different lengths in generation)."""
    objective = _objective(BaseLCMConfig, MSEObjective, "source_lead")
    torch.nn.init.zeros_(objective.model.postnet.weight)
    torch.nn.init.zeros_(objective.model.postnet.bias)
    sep = torch.randn(D)
    objective.separator = lambda: sep
    prompts, expected = [], []
    for n_src in (4, 2):
        src, eot = torch.randn(n_src, D), torch.randn(D)
        x = torch.cat((src, eot[None], sep[None], torch.randn(1, D)))[None]
        pred = objective.predict_all({"x": x, "mask": torch.ones(1, n_src + 3, dtype=torch.bool)})
        lead = (src.mean(dim=0) + src[0]) / 2
        torch.testing.assert_close(pred[0, n_src + 2], lead)
        prompts.append(normalizer.denormalize(x[0, : n_src + 2]))
        expected.append(normalizer.denormalize(lead))
    gen = generate(
        make_step(objective), prompts, normalizer, max_new_concepts=1, repeat_threshold=2.0
    )
    for got, want in zip(gen.concepts, expected):
        torch.testing.assert_close(got[0], want, atol=1e-4, rtol=1e-4)


def test_base_lcm_source_mean_agrees_in_training_and_generation(normalizer):
    """A zero PostNet makes every prediction the base: the teacher-forced prediction of the
    first summary concept and the generated one are both the mean of the source's content."""
    objective = _objective(BaseLCMConfig, MSEObjective, "source_mean")
    torch.nn.init.zeros_(objective.model.postnet.weight)
    torch.nn.init.zeros_(objective.model.postnet.bias)
    sep = torch.randn(D)
    objective.separator = lambda: sep
    src, eot = torch.randn(4, D), torch.randn(D)
    x = torch.cat((src, eot[None], sep[None], torch.randn(2, D)))[None]  # (1, 8, D)
    pred = objective.predict_all({"x": x, "mask": torch.ones(1, 8, dtype=torch.bool)})
    torch.testing.assert_close(pred[0, 6], src.mean(dim=0))
    torch.testing.assert_close(pred[0, 7], src.mean(dim=0))
    prompt = normalizer.denormalize(x[0, :6])
    gen = generate(
        make_step(objective), [prompt], normalizer, max_new_concepts=1, repeat_threshold=2.0
    )
    torch.testing.assert_close(
        gen.concepts[0][0], normalizer.denormalize(src.mean(dim=0)), atol=1e-4, rtol=1e-4
    )
