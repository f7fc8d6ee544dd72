"""Two-Tower denoising fast path (timestep/AdaLN table, fused diagonal self-attention, prepared
weights) against the general path: the same outputs to 1e-5 in fp32."""

from __future__ import annotations

import pytest
import torch

from diffusion import DDIMScheduler
from lcm.generation import SamplingConfig, generate, make_step
from lcm.models import TwoTowerConfig
from lcm.nn import DenoiserBlock
from lcm.normalizer import RobustNormalizer

D = 16


def _model(seed: int):
    """A tiny Two-Tower with *every* weight random: the zero-initialized AdaLN would otherwise
    make each denoiser block the identity and hide any error in the modulation."""
    torch.manual_seed(seed)
    model = TwoTowerConfig.from_name("tiny", sonar_dim=D).build().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
    return model


def test_diagonal_self_attention_is_out_v():
    torch.manual_seed(0)
    blk = DenoiserBlock(d_model=32, n_heads=4, ffn_dim=64, ffn_multiple_of=16).eval()
    h = torch.randn(3, 5, 32)
    diag = torch.eye(5, dtype=torch.bool)
    general = blk.self_attn(h, attn_mask=diag)  # Q/K projections + SDPA, as in training
    sa = blk.self_attn
    direct = sa.out_proj(sa.v_proj(h))
    fused = blk.prepare(transposed=False).self_ov(h)
    fused_t = blk.prepare(transposed=True).self_ov(h)
    torch.testing.assert_close(direct, general, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused, general, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_t, general, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("diagonal", [False, True])
def test_denoise_planned_equals_denoise(transposed, diagonal):
    model = _model(0)
    B, T = 3, 5
    x = torch.randn(B, T, D)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :2] = False  # padding
    x_t = torch.randn(B, 1, D)
    t = torch.tensor([99, 40, 0])  # per-row timesteps
    drop = torch.tensor([[False], [True], [False]])
    with torch.no_grad():
        ctx = model.contextualize(x, mask)
        kv = model.precompute_cross_kv(model.shift_context(ctx, include_last=True))
        ref = model.denoise(x_t, t, mask=mask, drop_context=drop, cross_kv=kv)
        plan = model.denoiser_plan(100, transposed=transposed, diagonal=diagonal)
        cmask = model.cross_mask(B, 1, T + 1, mask, drop)
        got = model.denoise_planned(x_t, t, plan, kv, cmask)
    assert ref.abs().max() > 0.1  # the random AdaLN makes the blocks non-trivial
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_plan_is_cached_and_refreshed_when_weights_change():
    model = _model(1)
    a = model.denoiser_plan(100)
    assert model.denoiser_plan(100) is a  # reused across concepts, documents and calls
    with torch.no_grad():
        model.den_layers[0].modulation.proj.weight.add_(1.0)  # in place, like an optimizer step
    b = model.denoiser_plan(100)
    assert b is not a
    assert not torch.equal(a.modulation[0], b.modulation[0])
    model.train()
    with pytest.raises(RuntimeError, match="inference"):
        model.den_layers[0].forward_prepared(
            torch.zeros(1, 1, 32), b.modulation[0, :1, None], b.blocks[0], (None, None), None
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("fold", [None, True])  # None: by size (not folded at this size)
def test_fast_sampler_equals_old_sampler(seed, guidance, fold):
    """The fast step (its cross-attention prepared per concept: the unconditional rows'
    constant output, and with ``fold`` W_q and W_o folded into the context) equals the
    general denoiser, with left padding in the batch."""
    model = _model(seed)
    normalizer = RobustNormalizer.fit(torch.randn(200, D) * 2 + 1)
    prompts = [torch.randn(3, D), torch.randn(6, D)]  # left padding in the batch
    sampling = SamplingConfig(num_inference_steps=40, guidance_scale=guidance)
    outs = []
    for fast in (False, True):
        opts = dict(fold_cross=fold)
        step = make_step(
            model, scheduler=DDIMScheduler(), sampling=sampling, fast=fast, fast_options=opts
        )
        g = torch.Generator().manual_seed(seed)
        outs.append(
            generate(
                step, prompts, normalizer, max_new_concepts=3, repeat_threshold=2.0, generator=g
            )
        )
    for old, new in zip(outs[0].concepts, outs[1].concepts):
        assert old.shape == (3, D)
        assert (new - old).abs().max() <= 1e-5 * max(1.0, old.abs().max().item())


def test_kv_cache_query_without_update_uses_spare_room():
    from lcm.nn import LayerKVCache

    cache = LayerKVCache()
    k = torch.randn(2, 3, 5, 4)
    cache.extend(k, k + 1)
    q1 = torch.randn(2, 3, 1, 4)
    ks, vs = cache.extend(q1, q1 + 1, update=False)
    assert cache.length == 5 and ks.shape == (2, 3, 6, 4)
    torch.testing.assert_close(ks, torch.cat((k, q1), 2), atol=0, rtol=0)
    torch.testing.assert_close(vs, torch.cat((k + 1, q1 + 1), 2), atol=0, rtol=0)
    new = torch.randn(2, 3, 1, 4)
    ks, _ = cache.extend(new, new)  # overwrites the query slot
    torch.testing.assert_close(ks, torch.cat((k, new), 2), atol=0, rtol=0)
    full = LayerKVCache()
    full.extend(torch.randn(1, 1, 16, 2), torch.randn(1, 1, 16, 2))  # capacity exactly used?
    ks, _ = full.extend(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2), update=False)
    assert ks.shape == (1, 1, 17, 2) and full.length == 16
    # an update that would fill the buffer grows it, so the next query-only call is a view of
    # the buffer (no copy of the whole cache at every denoising step)
    exact = LayerKVCache()
    exact.extend(torch.randn(1, 1, 8, 2), torch.randn(1, 1, 8, 2))  # capacity 16
    exact.extend(torch.randn(1, 1, 8, 2), torch.randn(1, 1, 8, 2))  # length 16: grows
    ks, _ = exact.extend(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2), update=False)
    assert exact.length == 16 and ks.shape == (1, 1, 17, 2)
    assert ks.data_ptr() == exact.k.data_ptr()  # a view of the buffer, not a copy


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_objective_sampling_fast_equals_general(guidance):
    from lcm.objectives import TwoTowerDiffusion

    model = _model(3)
    obj = TwoTowerDiffusion(model)
    x = torch.randn(2, 5, D)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False  # right padding, as in training batches
    batch = {"x": x, "mask": mask}
    kw = dict(guidance_scale=guidance, num_inference_steps=10)
    outs = {}
    for fast in (False, True):
        obj.fast_sampling = fast
        outs[fast] = (
            obj.predict_all(batch, torch.Generator().manual_seed(0), **kw),
            obj.predict_next(x, mask, torch.Generator().manual_seed(0), **kw),
        )
    for a, b in zip(outs[False], outs[True]):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_a_model_built_under_inference_mode_samples_with_the_fast_path():
    """Weights created under torch.inference_mode have no version counter; the plan cache
    must still work (it keys on their identity)."""
    from lcm.models import TwoTowerConfig
    from lcm.objectives import TwoTowerDiffusion

    torch.manual_seed(0)
    with torch.inference_mode():
        obj = TwoTowerDiffusion(TwoTowerConfig.from_name("tiny", sonar_dim=16).build()).eval()
        x, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
        g = torch.Generator().manual_seed(1)
        a = obj.predict_all({"x": x, "mask": mask}, g, num_inference_steps=3)
        b = obj.predict_all({"x": x, "mask": mask}, torch.Generator().manual_seed(1),
                            num_inference_steps=3)  # fmt: skip
    assert a.shape == (2, 5, 16) and torch.equal(a, b)


@pytest.mark.slow
def test_compiled_fast_sampler_equals_the_eager_one():
    """``StepOptions.compile``: the fast denoiser through torch.compile (dynamic shapes, so the
    growing context does not recompile per concept) gives the eager outputs to 1e-5."""
    from lcm.generation.steps import _COMPILED

    model = _model(3)
    normalizer = RobustNormalizer.fit(torch.randn(200, D) * 2 + 1)
    prompts = [torch.randn(3, D), torch.randn(6, D)]
    sampling = SamplingConfig(num_inference_steps=8, guidance_scale=3.0)
    outs = []
    for compile in (False, True):
        step = make_step(model, scheduler=DDIMScheduler(), sampling=sampling, compile=compile)
        g = torch.Generator().manual_seed(0)
        outs.append(
            generate(
                step, prompts, normalizer, max_new_concepts=3, repeat_threshold=2.0, generator=g
            )
        )
    assert model in _COMPILED  # the compiled path really ran
    for eager, compiled in zip(outs[0].concepts, outs[1].concepts):
        assert eager.shape == compiled.shape == (3, D)
        assert (compiled - eager).abs().max() <= 1e-5 * max(1.0, eager.abs().max().item())


@pytest.mark.parametrize("fold", [False, True])
def test_prepared_cross_attention_equals_the_general_one(fold):
    """One denoiser layer's cross-attention from :meth:`DenoiserBlock.prepare_cross` (padded
    slots, conditional rows first, unconditional rows as one constant) against SDPA over the
    projected keys/values with the general mask."""
    model = _model(4)
    B, T = 2, 5
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :3] = False
    with torch.no_grad():
        ctx = model.contextualize(torch.randn(B, T, D), mask)
        kv = model.precompute_cross_kv(model.shift_context(ctx, include_last=True))
        plan = model.denoiser_plan(100)
        cross = model.prepare_cross(plan, kv, mask, fold)
        assert (cross[0].q_fold is not None) == fold
        blk = model.den_layers[0]
        h = torch.randn(2 * B, 1, blk.cross_attn.n_heads * blk.cross_attn.head_dim)
        drop = (torch.arange(2 * B) >= B)[:, None]
        cmask = model.cross_mask(2 * B, 1, T + 1, mask.repeat(2, 1), drop)
        k, v = kv[0]
        ref = blk.cross_attn(h, kv=(k.repeat(2, 1, 1, 1), v.repeat(2, 1, 1, 1)), attn_mask=cmask)
        got = blk._cross_prepared(h, plan.blocks[0], cross[0])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_onednn_packed_weights_equal_the_general_denoiser():
    """``denoiser_plan(onednn=True)``: products of several rows through oneDNN-packed copies,
    one row through F.linear; the sampler still equals the old path."""
    from lcm.nn import PreparedLinear

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    torch.manual_seed(0)
    w, b = torch.randn(48, 32), torch.randn(48)
    lin = PreparedLinear.of(w, b, transposed=False, onednn=True)
    for shape in [(1, 32), (1, 1, 32), (3, 32), (4, 1, 32)]:
        x = torch.randn(*shape)
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, w, b))
    model = _model(5)
    normalizer = RobustNormalizer.fit(torch.randn(200, D) * 2 + 1)
    prompts = [torch.randn(3, D), torch.randn(6, D)]
    sampling = SamplingConfig(num_inference_steps=40, guidance_scale=3.0)
    outs = []
    for kw in (dict(fast=False), dict(fast_options=dict(onednn=True, fold_cross=True))):
        step = make_step(model, scheduler=DDIMScheduler(), sampling=sampling, **kw)
        g = torch.Generator().manual_seed(0)
        out = generate(step, prompts, normalizer, max_new_concepts=3, repeat_threshold=2.0,
                       generator=g)  # fmt: skip
        outs.append(torch.cat(out.concepts))
    assert model.denoiser_plan(100, onednn=True).blocks[0].ffn_gate.packed is not None
    assert (outs[1] - outs[0]).abs().max() <= 1e-5 * max(1.0, outs[0].abs().max().item())
