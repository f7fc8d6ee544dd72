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


def _model(cfg):
    torch.manual_seed(1)
    return cfg.from_name("tiny", sonar_dim=D).build().eval()


def _run(model, prompts, normalizer, seed=0, **kw):
    sampling = SamplingConfig(
        num_inference_steps=kw.pop("steps", 4), guidance_scale=kw.pop("guidance", 2.0)
    )
    step = make_step(
        model,
        sampling=sampling,
        use_cache=kw.pop("use_cache", True),
        reuse_context=kw.pop("reuse_context", True),
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
    a = _run(model, prompts, normalizer, max_new_concepts=3, repeat_threshold=2.0)
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
