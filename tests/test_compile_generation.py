"""``StepOptions.compile`` for Base-LCM and One-Tower: the compiled generation steps give the
eager outputs to 1e-5 (left padding, a growing KV cache, guidance)."""

from __future__ import annotations

import os

import pytest
import torch

from lcm.generation import SamplingConfig, generate, make_step
from lcm.generation import steps as steps_module
from lcm.models import BaseLCMConfig, OneTowerConfig
from lcm.normalizer import RobustNormalizer
from lcm.train.compile import compiler_available

D = 16

INDUCTOR = pytest.param(
    "inductor",
    marks=[
        pytest.mark.skipif(not compiler_available(), reason="no C++ toolchain"),
        # inductor's C++ builds take minutes on a shared 2-core machine (as tests/test_compile.py)
        pytest.mark.skipif(
            os.environ.get("LCM_TEST_INDUCTOR") != "1", reason="set LCM_TEST_INDUCTOR=1"
        ),
    ],
)


def _random(cfg):
    torch.manual_seed(0)
    model = cfg.from_name("tiny", sonar_dim=D).build().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", INDUCTOR])
@pytest.mark.parametrize("cfg", [BaseLCMConfig, OneTowerConfig], ids=["base_lcm", "one_tower"])
def test_compiled_step_equals_the_eager_one(cfg, backend, monkeypatch):
    """eager: dynamo's capture of the step with symbolic shapes, the KV cache's in-place
    writes and Python bookkeeping between graphs included (seconds; aot_eager took 150 s here,
    tracing the graphs again with symbolic shapes); inductor: the real compiler (opt-in,
    minutes)."""
    monkeypatch.setattr(steps_module, "COMPILE_BACKEND", backend)
    model = _random(cfg)
    normalizer = RobustNormalizer.fit(torch.randn(200, D) * 2 + 1)
    prompts = [torch.randn(3, D), torch.randn(6, D)]  # left padding in the batch
    sampling = SamplingConfig(num_inference_steps=5, guidance_scale=3.0)
    outs = []
    for compile in (False, True):
        step = make_step(model, sampling=sampling, compile=compile)
        assert step.compile is compile
        g = torch.Generator().manual_seed(0)
        outs.append(
            generate(
                step, prompts, normalizer, max_new_concepts=4, repeat_threshold=2.0, generator=g
            )
        )
    assert any(k[1] == backend for k in steps_module._COMPILED[model])  # compiled path ran
    for eager, compiled in zip(outs[0].concepts, outs[1].concepts, strict=True):
        assert eager.shape == compiled.shape == (4, D)
        assert (compiled - eager).abs().max() <= 1e-5 * max(1.0, eager.abs().max().item())


def test_cached_base_lcm_step_is_one_graph():
    """A cached single-concept step of Base-LCM compiles to one graph, whatever the cache
    length: SDPA's ``is_causal`` stays a real bool under symbolic shapes (it was a SymBool, a
    graph break in every layer, so ~3 graphs per layer and step). A growing cache adds graphs
    for the buffer's growth (the first growth also makes its capacity symbolic), not one per
    length: 4 for 40 steps past 3 growths (capacities 16, 34, 70)."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = _random(BaseLCMConfig)
    counter = CompileCounter()
    forward = torch.compile(type(model).forward, dynamic=True, backend=counter)
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        cache = model.new_cache()
        forward(model, x, torch.ones(2, 5, dtype=torch.bool), cache)  # prefill
        after_prefill = counter.frame_count
        eager_cache = model.new_cache()
        model(x, torch.ones(2, 5, dtype=torch.bool), eager_cache)
        for _ in range(40):
            y = torch.randn(2, 1, D)
            got = forward(model, y, None, cache)
            want = model(y, None, eager_cache)
            assert (got - want).abs().max() <= 1e-5
    assert cache.length == eager_cache.length == 45
    # a step and a growing step, each with capacity 16, then both with a symbolic capacity
    assert counter.frame_count - after_prefill == 4
