"""The shared generator: cache equivalence, batching, stopping rules, trimming, determinism."""

from __future__ import annotations

import pytest
import torch

from lcm.generation import SamplingConfig, generate, make_step
from lcm.models import BaseLCMConfig, OneTowerConfig, TwoTowerConfig
from lcm.normalizer import RobustNormalizer

D = 16
FAMILIES = [BaseLCMConfig, TwoTowerConfig, OneTowerConfig]


@pytest.fixture(scope="module")
def normalizer():
    torch.manual_seed(0)
    return RobustNormalizer.fit(torch.randn(200, D) * 2 + 1)


def _model(cfg, **overrides):
    torch.manual_seed(1)
    return cfg.from_name("tiny", sonar_dim=D, **overrides).build().eval()


def _run(model, prompts, normalizer, seed=0, **kw):
    sampling = SamplingConfig(
        num_inference_steps=kw.pop("steps", 4), guidance_scale=kw.pop("guidance", 2.0)
    )
    step = make_step(
        model,
        sampling=sampling,
        use_cache=kw.pop("use_cache", True),
        reuse_context=kw.pop("reuse_context", True),
        fast=kw.pop("fast", True),
    )
    g = torch.Generator().manual_seed(seed)
    return generate(step, prompts, normalizer, generator=g, **kw)


@pytest.mark.parametrize("cfg", FAMILIES)
def test_cached_equals_uncached(cfg, normalizer):
    model = _model(cfg)
    prompts = [torch.randn(3, D), torch.randn(6, D)]
    a = _run(model, prompts, normalizer, max_new_concepts=4, repeat_threshold=2.0)
    b = _run(model, prompts, normalizer, max_new_concepts=4, repeat_threshold=2.0, use_cache=False)
    for x, y in zip(a.concepts, b.concepts):
        assert x.shape == (4, D)
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_two_tower_context_reuse_equals_recompute(normalizer):
    model = _model(TwoTowerConfig)
    prompts = [torch.randn(4, D)]
    # fast=False: the general denoiser, so only the K/V reuse differs (the fast denoiser is
    # compared with it in tests/test_fast_denoise.py)
    a = _run(model, prompts, normalizer, max_new_concepts=3, repeat_threshold=2.0, fast=False)
    b = _run(
        model, prompts, normalizer, max_new_concepts=3, repeat_threshold=2.0, reuse_context=False
    )
    torch.testing.assert_close(a.concepts[0], b.concepts[0], atol=0, rtol=0)


@pytest.mark.parametrize("cfg", [BaseLCMConfig])
def test_batching_with_left_padding_equals_one_by_one(cfg, normalizer):
    model = _model(cfg)
    prompts = [torch.randn(2, D), torch.randn(7, D), torch.randn(4, D)]
    batched = _run(model, prompts, normalizer, max_new_concepts=3, repeat_threshold=2.0)
    for p, got in zip(prompts, batched.concepts):
        alone = _run(model, [p], normalizer, max_new_concepts=3, repeat_threshold=2.0)
        torch.testing.assert_close(got, alone.concepts[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [TwoTowerConfig, OneTowerConfig])
def test_diffusion_generation_is_seeded(cfg, normalizer):
    model = _model(cfg)
    prompts = [torch.randn(3, D)]
    a = _run(model, prompts, normalizer, seed=5, max_new_concepts=2, repeat_threshold=2.0)
    b = _run(model, prompts, normalizer, seed=5, max_new_concepts=2, repeat_threshold=2.0)
    c = _run(model, prompts, normalizer, seed=6, max_new_concepts=2, repeat_threshold=2.0)
    assert torch.equal(a.concepts[0], b.concepts[0])
    assert not torch.equal(a.concepts[0], c.concepts[0])


class _Scripted:
    """A step that emits a fixed list of normalized concepts (to test the stopping rules)."""

    def __init__(self, ys):
        self.ys, self.i = ys, 0

    def start(self, x, mask):
        pass

    def next(self, generator=None):
        y = self.ys[self.i]
        self.i += 1
        return y

    def append(self, y):
        pass


def test_stopping_rules_and_trimming():
    norm = RobustNormalizer(4)  # identity
    eot = torch.tensor([1.0, 0, 0, 0])
    a, b = torch.tensor([[0, 1.0, 0, 0]]), torch.tensor([[0, 0, 1.0, 0]])
    stop = torch.tensor([[0.95, 0.05, 0, 0]])  # cosine to eot ~0.9986
    out = generate(
        _Scripted([a, b, stop, a]),
        [torch.tensor([[0, 0, 0, 1.0]])],
        norm,
        max_new_concepts=10,
        eot=eot,
    )
    assert out.stop_reasons == ["eot"]
    assert torch.equal(out.concepts[0], torch.cat([a, b]))  # the stop concept is trimmed
    out = generate(
        _Scripted([a, b, b * 2, a]),
        [torch.tensor([[0, 0, 0, 1.0]])],
        norm,
        max_new_concepts=10,
        eot=eot,
    )
    assert out.stop_reasons == ["repetition"] and out.concepts[0].shape == (2, 4)
    out = generate(
        _Scripted([a, b, a, b]), [torch.tensor([[0, 0, 0, 1.0]])], norm, max_new_concepts=3, eot=eot
    )
    assert out.stop_reasons == ["max_length"] and out.concepts[0].shape == (3, 4)
    # min_new_concepts: the eot rule only applies after that many concepts
    out = generate(
        _Scripted([stop, a, stop]),
        [torch.tensor([[0, 0, 0, 1.0]])],
        norm,
        max_new_concepts=5,
        eot=eot,
        min_new_concepts=1,
    )
    assert out.stop_reasons == ["eot"] and out.concepts[0].shape == (2, 4)


def test_empty_prompt_is_an_error(normalizer):
    with pytest.raises(ValueError, match="at least one concept"):
        _run(_model(BaseLCMConfig), [torch.zeros(0, D)], normalizer)


# ------------------------------------------------------------------- refiner and Quant-LCM steps
def _refiner(init: str = "random", **overrides):
    from lcm.models import RefinerConfig
    from lcm.objectives import RefinerObjective

    return RefinerObjective(_model(RefinerConfig, **overrides), init=init)


def _quant():
    from lcm.models import QuantLCMConfig
    from lcm.objectives import QuantObjective
    from lcm.quant import RVQ

    model = _model(QuantLCMConfig)
    g = torch.Generator().manual_seed(0)
    model.set_quantizer(RVQ(D, 4, 64).fit(torch.randn(3000, D, generator=g), niter=4))
    return QuantObjective(model.eval())


def _gen(objective, prompts, normalizer, seed=0, use_cache=True, **kw):
    step_kw = {k: kw.pop(k) for k in ("num_iterations", "warm_start", "temperature") if k in kw}
    step = make_step(objective, use_cache=use_cache, **step_kw)
    g = torch.Generator().manual_seed(seed)
    return generate(step, prompts, normalizer, generator=g, repeat_threshold=2.0, **kw)


@pytest.mark.parametrize("ctx_layers", [2, 0], ids=["ctx2", "no_contextualizer"])
@pytest.mark.parametrize("num_iterations", [5, None])
def test_refiner_cached_equals_uncached_and_reports_exit_steps(
    normalizer, num_iterations, ctx_layers
):
    obj = _refiner(ctx_layers=ctx_layers)  # 0: the core reads the raw embeddings (reports/)
    prompts = [torch.randn(3, D), torch.randn(6, D)]
    kw = dict(max_new_concepts=4, num_iterations=num_iterations)
    a = _gen(obj, prompts, normalizer, **kw)
    b = _gen(obj, prompts, normalizer, use_cache=False, **kw)
    for i in range(2):
        torch.testing.assert_close(a.concepts[i], b.concepts[i], atol=1e-4, rtol=1e-4)
        assert torch.equal(a.extras["exit_step"][i], b.extras["exit_step"][i])
        steps = a.extras["exit_step"][i]
        assert steps.shape == (4,)
        if num_iterations is not None:
            assert (steps == num_iterations).all()
        else:  # the adaptive rule: never before patience + 1, never past the cap
            rule = obj.exit_rule
            assert ((steps >= rule.exit_patience + 1) & (steps <= rule.max_iterations)).all()


def test_refiner_first_concept_equals_the_objectives_prediction(normalizer):
    obj = _refiner()
    prompt = torch.randn(5, D)
    out = _gen(obj, [prompt], normalizer, seed=3, max_new_concepts=1)
    x = normalizer.normalize(prompt)[None]
    y, steps = obj.predict_next_with_exit(x, None, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.concepts[0][0], normalizer.denormalize(y)[0])
    assert out.extras["exit_step"][0].tolist() == steps.tolist()


def test_refiner_batching_equals_one_by_one_with_embedding_init(normalizer):
    obj = _refiner(init="embed")  # no random draws: batch composition cannot matter
    prompts = [torch.randn(2, D), torch.randn(7, D)]
    batched = _gen(obj, prompts, normalizer, max_new_concepts=3, num_iterations=4)
    for p, got in zip(prompts, batched.concepts):
        alone = _gen(obj, [p], normalizer, max_new_concepts=3, num_iterations=4)
        torch.testing.assert_close(got, alone.concepts[0], atol=1e-5, rtol=1e-5)


def test_refiner_warm_start_reuses_the_previous_exit_state(normalizer):
    obj = _refiner()
    prompts = [torch.randn(4, D)]
    cold = _gen(obj, prompts, normalizer, max_new_concepts=3, num_iterations=3)
    warm = _gen(obj, prompts, normalizer, max_new_concepts=3, num_iterations=3, warm_start=True)
    # Concept 1 has no previous state either way; later ones start elsewhere.
    torch.testing.assert_close(cold.concepts[0][0], warm.concepts[0][0])
    assert not torch.allclose(cold.concepts[0][1:], warm.concepts[0][1:])
    # By hand: the second concept of the warm run iterates from the first one's exit state.
    step = make_step(obj, num_iterations=3, warm_start=True)
    step.start(*_left(normalizer, prompts))
    g = torch.Generator().manual_seed(0)
    step.next(g)
    first_state = step.state.clone()
    y1 = step.next(g)  # same context, state continues: 3 more iterations from first_state
    cont = obj.model.iterate(first_state, step.query, step.cross_kv, 3, None)
    torch.testing.assert_close(y1, obj.model.readout(cont)[:, 0], atol=1e-5, rtol=1e-5)


def _left(normalizer, prompts):
    from lcm.generation import left_pad

    return left_pad([normalizer.normalize(p) for p in prompts])


def test_quant_cached_equals_uncached_and_codes_decode_to_the_concepts(normalizer):
    obj = _quant()
    prompts = [torch.randn(3, D), torch.randn(5, D)]
    a = _gen(obj, prompts, normalizer, max_new_concepts=3, temperature=0.0)
    b = _gen(obj, prompts, normalizer, max_new_concepts=3, temperature=0.0, use_cache=False)
    for i in range(2):
        torch.testing.assert_close(a.concepts[i], b.concepts[i], atol=1e-5, rtol=1e-5)
        codes = a.extras["codes"][i]
        assert codes.shape == (3, 4)
        raw = normalizer.denormalize(obj.model.rvq.decode(codes))
        torch.testing.assert_close(a.concepts[i], raw, atol=1e-5, rtol=1e-5)
    s1 = _gen(obj, prompts, normalizer, seed=1, max_new_concepts=3)
    s2 = _gen(obj, prompts, normalizer, seed=1, max_new_concepts=3)
    s3 = _gen(obj, prompts, normalizer, seed=2, max_new_concepts=3)
    assert torch.equal(s1.concepts[0], s2.concepts[0])
    assert not all(torch.equal(x, y) for x, y in zip(s1.concepts, s3.concepts))


def test_extras_are_trimmed_with_the_stopping_concept(normalizer):
    obj = _refiner()
    prompt = torch.randn(3, D)
    free = _gen(obj, [prompt], normalizer, max_new_concepts=3, num_iterations=2)
    second = free.concepts[0][1]
    # Make the second concept the end-of-text sentence: generation stops there, and neither the
    # concept nor its exit step is in the output.
    step = make_step(obj, num_iterations=2)
    out = generate(
        step, [prompt], normalizer, max_new_concepts=3, eot=second, eot_threshold=0.999,
        repeat_threshold=2.0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.stop_reasons == ["eot"]
    assert out.concepts[0].shape[0] == 1 and out.extras["exit_step"][0].tolist() == [2]


def test_one_generator_per_row_draws_each_row_alone():
    """Every random draw of generation takes one generator per document: row i equals what
    generator i draws for that row alone (diffusion noise, refiner state, code sampling)."""
    from diffusion.utils import randn_tensor
    from lcm.models.refiner import RecurrentRefinerLCM, RefinerConfig
    from lcm.objectives.quant import sample_logits

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    both = randn_tensor((2, 5), gens(1, 2))
    assert torch.equal(both[1], randn_tensor((1, 5), gens(2))[0])
    assert not torch.equal(both[0], both[1])
    with pytest.raises(ValueError, match="3 generators for 2 rows"):
        randn_tensor((2, 5), gens(1, 2, 3))

    net = RecurrentRefinerLCM(RefinerConfig.from_name("tiny", sonar_dim=8))
    states = net.init_state((2, 1), gens(1, 2))
    assert states.shape == (2, 1, net.config.d_model)
    assert torch.equal(states[1], net.init_state((1, 1), gens(2))[0])

    logits = torch.randn(3, 7)
    codes = sample_logits(logits, 1.0, 1.0, gens(5, 6, 7))
    assert codes[2] == sample_logits(logits[2:], 1.0, 1.0, gens(7))[0]


@pytest.mark.parametrize("cfg", [BaseLCMConfig, TwoTowerConfig, OneTowerConfig])
def test_prefill_stores_a_key_mask_only_for_padded_prompts(cfg, normalizer):
    """The step checks its prompt's mask once (``prefill_mask``, outside any compiled graph);
    the transformer never syncs: a mask given is stored as the key mask."""
    from lcm.objectives.step import prefill_mask

    model = _model(cfg)
    step = make_step(model, sampling=SamplingConfig(num_inference_steps=2))
    full = torch.ones(2, 3, dtype=torch.bool)
    step.start(torch.randn(2, 3, D), full)
    assert step.cache.key_mask is None  # all valid: later cached steps need no mask
    padded = full.clone()
    padded[0, 0] = False
    step.start(torch.randn(2, 3, D), padded)
    assert step.cache.key_mask is not None
    assert prefill_mask(full) is None and prefill_mask(padded) is padded
    # the transformer itself stores whatever mask it is given (no host sync)
    tower = model.transformer if hasattr(model, "transformer") else model.contextualizer
    cache = tower.new_cache()
    tower(torch.randn(2, 3, tower.d_model), full, cache)
    assert cache.key_mask is not None and cache.key_mask.all()
