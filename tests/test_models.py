"""Tests of the LCM networks (lcm.nn, lcm.models): CPU, tiny dims, seconds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lcm.models import (
    FAMILIES,
    BaseLCMConfig,
    OneTowerConfig,
    TwoTowerConfig,
)
from lcm.nn import (
    CausalTransformer,
    RMSNorm,
    RotaryEmbedding,
    TimestepEmbedding,
    sinusoidal_embedding,
    swiglu_hidden_dim,
)

D = 16  # concept dim in tests (SONAR is 1024)
ATOL = 1e-5


def tiny(cfg_cls, **kw):
    torch.manual_seed(0)
    return cfg_cls.from_name("tiny", sonar_dim=D, **kw).build().eval()


def noisy_batch(B=2, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    x_t = torch.randn(B, T, D, generator=g)
    t = torch.randint(0, 100, (B, T), generator=g)
    return x, x_t, t


def run(model, x, x_t, t, mask=None, drop=None):
    """Uniform call for every family: returns (B, T, D)."""
    if isinstance(model.config, BaseLCMConfig):
        return model(x, mask)
    return model(x, x_t, t, mask, drop)


ALL = [BaseLCMConfig, TwoTowerConfig, OneTowerConfig]
DIFFUSION = [TwoTowerConfig, OneTowerConfig]


# ---- building blocks ---------------------------------------------------------------------------


def test_swiglu_hidden_dim_matches_fairseq2_rounding():
    assert swiglu_hidden_dim(8192) == 5632  # d=2048 presets
    assert swiglu_hidden_dim(16384) == 11008  # d=4096 preset
    assert swiglu_hidden_dim(4096) == 2816
    assert swiglu_hidden_dim(128, multiple_of=16) == 96


def test_rmsnorm_formula():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 9.0))
    x = torch.randn(3, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * torch.arange(1.0, 9.0)
    torch.testing.assert_close(norm(x), expected)


def test_rope_scores_depend_only_on_position_difference():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq, pk):
        return (rope(q, torch.tensor([pq])) * rope(k, torch.tensor([pk]))).sum().item()

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    # Rotation preserves norms.
    torch.testing.assert_close(rope(q, torch.tensor([7])).norm(), q.norm())


def test_timestep_embedding_shape_and_sinusoid():
    t = torch.tensor([[0, 5], [99, 1]])
    emb = sinusoidal_embedding(t, 256)
    assert emb.shape == (2, 2, 256)
    torch.testing.assert_close(emb[0, 0, :128], torch.ones(128))  # cos(0) = 1
    torch.testing.assert_close(emb[0, 0, 128:], torch.zeros(128))  # sin(0) = 0
    assert emb[1, 0, 0].item() == pytest.approx(math.cos(99.0), abs=1e-5)  # f_0 = 1
    assert TimestepEmbedding(32)(t).shape == (2, 2, 32)


# ---- shapes, presets, parameter counts ---------------------------------------------------------


@pytest.mark.parametrize("cfg_cls", ALL)
def test_output_shapes(cfg_cls):
    model = tiny(cfg_cls)
    x, x_t, t = noisy_batch(B=3, T=5)
    y = run(model, x, x_t, t)
    assert y.shape == (3, 5, D)
    assert torch.isfinite(y).all()


def test_from_name_overrides_and_unknown_preset():
    cfg = TwoTowerConfig.from_name("tiny", sonar_dim=32, den_layers=3)
    assert (cfg.sonar_dim, cfg.den_layers, cfg.d_model) == (32, 3, 32)
    assert len(cfg.build().den_layers) == 3
    with pytest.raises(KeyError):
        BaseLCMConfig.from_name("7B")
    assert set(FAMILIES) == {"base_lcm", "one_tower", "two_tower", "refiner", "quant_lcm"}


@pytest.mark.parametrize(
    "cfg_cls,name,expected",
    [
        # Meta's docstring: 6,930,781,696 -- reproduced exactly.
        (TwoTowerConfig, "7B", 6_930_781_696),
        # Meta's docstrings say 1,647,635,456 and 1,635,101,696; see lcm.models.base_lcm for why
        # these are the counts of the layout their code builds.
        (BaseLCMConfig, "1.6B", 1_649_185_792),
        (TwoTowerConfig, "1.6B", 1_645_538_304),
        (OneTowerConfig, "1.6B", 1_653_908_480),
        (BaseLCMConfig, "small", 207_825_920),
        (TwoTowerConfig, "small", 241_420_800),
        (OneTowerConfig, "small", 209_138_688),
    ],
)
def test_preset_param_counts_on_meta_device(cfg_cls, name, expected):
    model = cfg_cls.from_name(name).build(device="meta")
    assert next(model.parameters()).device.type == "meta"
    assert model.param_count() == expected


def test_two_tower_7b_count_breakdown():
    """The 7B total decomposes as documented in lcm.models.two_tower."""
    m = TwoTowerConfig.from_name("7B").build(device="meta")

    def n(mod):
        return sum(p.numel() for p in mod.parameters())

    assert n(m.contextualizer.layers[0]) == 202_425_856
    assert n(m.den_layers[0]) == 420_587_008
    assert n(m.den_layers[0].modulation) == 151_031_808
    assert n(m.time_embed) == 17_833_984
    assert m.den_layers[0].ffn.hidden_dim == 11008


# ---- causality ---------------------------------------------------------------------------------


def _perturb(x, j):
    x = x.clone()
    x[:, j] += 1.0
    return x


@pytest.mark.parametrize("j", [0, 2, 5])
def test_base_lcm_is_causal(j):
    model = tiny(BaseLCMConfig)
    x, _, _ = noisy_batch(T=6)
    y0, y1 = model(x), model(_perturb(x, j))
    torch.testing.assert_close(y0[:, :j], y1[:, :j], atol=ATOL, rtol=0)
    assert (y0[:, j:] - y1[:, j:]).abs().amax(-1).min() > 1e-4  # later positions do change


@pytest.mark.parametrize("j", [0, 3])
def test_contextualizer_is_causal(j):
    model = tiny(TwoTowerConfig)
    x, _, _ = noisy_batch(T=6)
    c0, c1 = model.contextualize(x), model.contextualize(_perturb(x, j))
    torch.testing.assert_close(c0[:, :j], c1[:, :j], atol=ATOL, rtol=0)
    assert (c0[:, j:] - c1[:, j:]).abs().amax(-1).min() > 1e-4


def _randomize_adaln(model):
    """AdaLN starts at zero (blocks = identity); give it weights so the context path is live."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for blk in model.den_layers:
            w = blk.modulation.proj.weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.2)


@pytest.mark.parametrize("j", [0, 2, 5])
def test_two_tower_denoise_does_not_see_clean_concepts_at_or_after_i(j):
    model = tiny(TwoTowerConfig)
    _randomize_adaln(model)
    x, x_t, t = noisy_batch(T=6)
    y0, y1 = model(x, x_t, t), model(_perturb(x, j), x_t, t)
    # Output i depends on clean x_0..x_{i-1} only: changing x_j leaves i <= j untouched.
    torch.testing.assert_close(y0[:, : j + 1], y1[:, : j + 1], atol=ATOL, rtol=0)
    if j + 1 < 6:
        assert (y0[:, j + 1 :] - y1[:, j + 1 :]).abs().amax(-1).min() > 1e-5


@pytest.mark.parametrize("j", [0, 3])
def test_one_tower_is_causal(j):
    model = tiny(OneTowerConfig)
    x, x_t, t = noisy_batch(T=6)
    y0 = model(x, x_t, t)
    y1 = model(_perturb(x, j), x_t, t)  # clean x_j is visible to noisy i > j only
    torch.testing.assert_close(y0[:, : j + 1], y1[:, : j + 1], atol=ATOL, rtol=0)
    assert (y0[:, j + 1 :] - y1[:, j + 1 :]).abs().amax(-1).min() > 1e-5
    y2 = model(x, _perturb(x_t, j), t)  # noisy x~_j is seen by nobody else
    torch.testing.assert_close(y0[:, :j], y2[:, :j], atol=ATOL, rtol=0)
    torch.testing.assert_close(y0[:, j + 1 :], y2[:, j + 1 :], atol=ATOL, rtol=0)
    assert (y0[:, j] - y2[:, j]).abs().max() > 1e-4


# ---- padding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg_cls", ALL)
def test_padding_does_not_affect_valid_positions(cfg_cls):
    model = tiny(cfg_cls)
    if cfg_cls is TwoTowerConfig:
        _randomize_adaln(model)
    x, x_t, t = noisy_batch(B=2, T=7)
    valid = 4
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, valid:] = False
    x_pad, xt_pad = x.clone(), x_t.clone()
    x_pad[1, valid:] = 1e3 * torch.randn(3, D)  # garbage in the padding
    xt_pad[1, valid:] = 1e3 * torch.randn(3, D)
    y_pad = run(model, x_pad, xt_pad, t, mask)
    y_ref = run(model, x[1:, :valid], x_t[1:, :valid], t[1:, :valid])
    assert torch.isfinite(y_pad).all()
    torch.testing.assert_close(y_pad[1, :valid], y_ref[0], atol=ATOL, rtol=1e-5)
    # The unpadded row is unaffected by its neighbour's padding.
    torch.testing.assert_close(y_pad[0], run(model, x[:1], x_t[:1], t[:1])[0], atol=ATOL, rtol=1e-5)


def test_padding_at_the_front_gives_finite_outputs():
    """A row whose first positions are padding has queries with no valid key before them.

    (CPU SDPA already returns zeros for such rows; the self-diagonal in CausalTransformer is
    what keeps GPU kernels, which may return NaN there, safe.)"""
    model = tiny(BaseLCMConfig)
    x, _, _ = noisy_batch(B=2, T=5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, :2] = False
    y = model(x, mask)
    assert torch.isfinite(y).all()
    y2 = model(torch.cat((x[:, :2] * 50, x[:, 2:]), 1), mask)
    torch.testing.assert_close(y[0, 2:], y2[0, 2:], atol=ATOL, rtol=1e-5)


# ---- KV cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [[1] * 7, [3, 1, 1, 2], [7]])
@torch.no_grad()
def test_causal_transformer_kv_cache_equals_full_forward(chunks):
    torch.manual_seed(0)
    net = CausalTransformer(32, n_layers=3, n_heads=4, ffn_dim=64, ffn_multiple_of=16).eval()
    x = torch.randn(2, 7, 32)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    for m in (None, mask):
        full = net(x, m)
        cache, outs, s = net.new_cache(), [], 0
        for c in chunks:
            outs.append(net(x[:, s : s + c], None if m is None else m[:, s : s + c], cache))
            s += c
        assert cache.length == 7
        inc = torch.cat(outs, dim=1)
        valid = torch.ones_like(mask) if m is None else m
        torch.testing.assert_close(inc[valid], full[valid], atol=ATOL, rtol=1e-5)


@torch.no_grad()
def test_kv_cache_grows_past_its_initial_capacity():
    torch.manual_seed(0)
    net = CausalTransformer(16, n_layers=1, n_heads=2, ffn_dim=32, ffn_multiple_of=16).eval()
    x = torch.randn(3, 40, 16)
    cache = net.new_cache()
    inc = torch.cat([net(x[:, i : i + 1], cache=cache) for i in range(40)], dim=1)
    assert cache.layers[0].k.size(2) >= 40  # buffer reallocated (initial capacity 16)
    torch.testing.assert_close(inc, net(x), atol=ATOL, rtol=1e-5)


@torch.no_grad()
def test_kv_cache_query_without_update_leaves_cache_unchanged():
    torch.manual_seed(0)
    net = CausalTransformer(32, n_layers=2, n_heads=4, ffn_dim=64, ffn_multiple_of=16).eval()
    x = torch.randn(1, 4, 32)
    cache = net.new_cache()
    net(x[:, :3], cache=cache)
    peek = net(x[:, 3:], cache=cache, update_cache=False)
    assert cache.length == 3 and cache.layers[0].length == 3
    torch.testing.assert_close(peek, net(x)[:, 3:], atol=ATOL, rtol=1e-5)


@torch.no_grad()
def test_base_lcm_and_contextualizer_incremental_equal_full():
    x, _, _ = noisy_batch(T=6)
    base = tiny(BaseLCMConfig)
    cache = base.new_cache()
    inc = torch.cat([base(x[:, i : i + 1], cache=cache) for i in range(6)], 1)
    torch.testing.assert_close(inc, base(x), atol=ATOL, rtol=1e-5)

    tt = tiny(TwoTowerConfig)
    cache = tt.new_cache()
    inc = torch.cat(
        [tt.contextualize(x[:, :4], cache=cache), tt.contextualize(x[:, 4:], cache=cache)], 1
    )
    torch.testing.assert_close(inc, tt.contextualize(x), atol=ATOL, rtol=1e-5)


@torch.no_grad()
def test_one_tower_incremental_denoise_equals_full_forward():
    model = tiny(OneTowerConfig)
    x, x_t, t = noisy_batch(T=5)
    full = model(x, x_t, t)
    drop = torch.tensor([False, True])
    full_drop = model(x, x_t, t, drop_context=drop[:, None].expand(2, 5))
    cache = model.new_cache()
    for i in range(5):
        y = model.denoise_next(x_t[:, i : i + 1], t[:, i], cache)
        torch.testing.assert_close(y[:, 0], full[:, i], atol=ATOL, rtol=1e-5)
        y = model.denoise_next(x_t[:, i : i + 1], t[:, i], cache, drop_context=drop)
        torch.testing.assert_close(y[:, 0], full_drop[:, i], atol=ATOL, rtol=1e-5)
        model.encode_clean(x[:, i : i + 1], None, cache)
    assert cache.length == 5


# ---- Two-Tower denoiser: cross-KV reuse, last position, AdaLN, CFG ------------------------------


@torch.no_grad()
def test_two_tower_cross_kv_reuse_equals_recompute():
    model = tiny(TwoTowerConfig)
    _randomize_adaln(model)
    x, _, _ = noisy_batch(T=6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    ctx = model.contextualize(x, mask)
    kv = model.precompute_cross_kv(model.shift_context(ctx))
    for step in range(3):  # several denoising steps reuse the same keys/values
        _, x_t, t = noisy_batch(T=6, seed=10 + step)
        torch.testing.assert_close(
            model.denoise(x_t, t, mask=mask, cross_kv=kv),
            model.denoise(x_t, t, ctx, mask),
            atol=0,
            rtol=0,
        )


@torch.no_grad()
def test_two_tower_last_position_alone_and_generation_layout():
    model = tiny(TwoTowerConfig)
    _randomize_adaln(model)
    x, x_t, t = noisy_batch(T=6)
    full = model(x, x_t, t)
    ctx = model.contextualize(x)
    # Denoise only the last position, with the training layout (S = T slots).
    last = model.denoise(x_t[:, -1:], t[:, -1:], ctx)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=ATOL, rtol=1e-5)
    # Generation layout: context of x_0..x_4 only, slots [0, ctx_0..ctx_4], query = concept 5.
    cache = model.new_cache()
    ctx_prefix = model.contextualize(x[:, :5], cache=cache)
    kv = model.precompute_cross_kv(model.shift_context(ctx_prefix, include_last=True))
    nxt = model.denoise(x_t[:, -1:], t[:, -1], cross_kv=kv)  # t as (B,)
    torch.testing.assert_close(nxt[:, 0], full[:, -1], atol=ATOL, rtol=1e-5)


def test_adaln_zero_init_makes_denoiser_blocks_identity():
    model = tiny(TwoTowerConfig, den_layers=3)
    x, x_t, t = noisy_batch(T=5)
    ctx = model.contextualize(x)
    kv = model.precompute_cross_kv(model.shift_context(ctx))
    temb = model.time_embed(t)
    h = model.den_prenet(x_t)
    mask = model._cross_mask(2, 5, 5, None, None, h.device)
    for blk, layer_kv in zip(model.den_layers, kv, strict=True):
        for shift_scale_gate in blk.modulation(temb):
            for p in shift_scale_gate:
                assert torch.count_nonzero(p) == 0
        assert torch.equal(blk(h, temb, layer_kv, mask), h)
    # So the fresh denoiser is PostNet(RMSNorm(PreNet(x_t))), whatever the context and t.
    expected = model.den_postnet(model.den_norm(h))
    torch.testing.assert_close(model.denoise(x_t, t, ctx), expected, atol=0, rtol=0)
    # ... and stops being the identity once AdaLN has weights.
    _randomize_adaln(model)
    blk = model.den_layers[0]
    assert (blk(h, temb, kv[0], mask) - h).abs().max() > 1e-3


@torch.no_grad()
def test_two_tower_drop_context_removes_the_context():
    model = tiny(TwoTowerConfig)
    _randomize_adaln(model)
    x, x_t, t = noisy_batch(T=6)
    x_other = torch.randn_like(x) * 3
    drop = torch.zeros(2, 6, dtype=torch.bool)
    drop[:, 3] = True
    drop[1, :] = True
    y_a = model(x, x_t, t, drop_context=drop)
    y_b = model(x_other, x_t, t, drop_context=drop)
    torch.testing.assert_close(y_a[drop], y_b[drop], atol=ATOL, rtol=0)
    keep = ~drop
    keep[:, 0] = False  # position 0 only ever sees the zero vector
    assert (y_a[keep] - y_b[keep]).abs().amax(-1).min() > 1e-4


@torch.no_grad()
def test_one_tower_drop_context_removes_the_context():
    model = tiny(OneTowerConfig)
    x, x_t, t = noisy_batch(T=6)
    drop = torch.ones(2, 6, dtype=torch.bool)
    drop[0, 4] = False
    y_a = model(x, x_t, t, drop_context=drop)
    y_b = model(torch.randn_like(x), x_t, t, drop_context=drop)
    torch.testing.assert_close(y_a[drop], y_b[drop], atol=ATOL, rtol=0)
    assert (y_a[0, 4] - y_b[0, 4]).abs().max() > 1e-4


# ---- tiny presets can learn --------------------------------------------------------------------


@pytest.mark.parametrize("cfg_cls", ALL)
def test_tiny_preset_overfits_a_fixed_batch(cfg_cls):
    torch.manual_seed(0)
    model = cfg_cls.from_name("tiny", sonar_dim=D).build().train()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 8, D, generator=g)
    eps = torch.randn(4, 8, D, generator=g)
    t = torch.randint(0, 100, (4, 8), generator=g)
    alpha_bar = torch.cos(0.5 * math.pi * t / 100)[..., None] ** 2  # (B, T, 1)
    x_t = alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * eps  # eq. 1 of DDPM, fixed noise
    drop = torch.zeros(4, 8, dtype=torch.bool)

    def loss_fn():
        if cfg_cls is BaseLCMConfig:
            return F.mse_loss(model(x)[:, :-1], x[:, 1:])  # next-concept regression
        return F.mse_loss(model(x, x_t, t, None, drop), x)  # x0-prediction

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = loss_fn().item()
    for _ in range(150):  # the loss falls >100x within 50 steps; 150 leaves margin
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    last = loss_fn().item()
    assert last <= first / 10, (first, last)
