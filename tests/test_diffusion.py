"""Tests for diffusion/: schedules, DDIM, guidance and the sampling loop (CPU, seconds)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffusion import (
    SCHEDULE_NAMES,
    DDIMScheduler,
    alphas_cumprod_to_betas,
    betas_to_alphas_cumprod,
    classifier_free_guidance,
    cosine_betas,
    ddim_sample,
    get_schedule,
    guide,
    guided_original_at_zero_snr,
    linear_betas,
    rescale_betas_zero_snr,
    rescale_guidance,
    spaced_timesteps,
)
from diffusion.schedules import terminal_snr

T = 100
SPACINGS = ("trailing", "leading", "linspace")
STEP_COUNTS = (1, 10, 40, 50, 100)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sched64(**kwargs) -> DDIMScheduler:
    return DDIMScheduler(**kwargs).to(torch.float64)


# ---------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_schedule_is_monotone_in_unit_interval(name: str) -> None:
    ac = get_schedule(name, T, zero_terminal_snr=False)
    assert ac.shape == (T,) and ac.dtype == torch.float64
    assert bool((ac[1:] < ac[:-1]).all())
    assert 0.99 < ac[0].item() < 1.0
    assert 0.0 < ac[-1].item() < 0.01
    assert terminal_snr(ac).item() > 0.0


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_zero_terminal_snr_rescale(name: str) -> None:
    raw = get_schedule(name, T, zero_terminal_snr=False)
    ac = get_schedule(name, T, zero_terminal_snr=True)
    assert ac[-1].item() == 0.0
    assert terminal_snr(ac).item() == 0.0
    assert ac[0].item() == pytest.approx(raw[0].item(), abs=1e-12)
    assert bool((ac[1:] < ac[:-1]).all())
    # Lin et al. Algorithm 1 is affine in sqrt(alpha_bar): check it at one interior point.
    s, s0, s_last = raw.sqrt(), raw[0].sqrt(), raw[-1].sqrt()
    expected = ((s[50] - s_last) * s0 / (s0 - s_last)) ** 2
    assert ac[50].item() == pytest.approx(expected.item(), rel=1e-12)


def test_schedule_closed_forms() -> None:
    # cosine, eq. 17: alpha_bar(u) = f(u) / f(0), f(u) = cos((u + s) / (1 + s) * pi / 2)^2
    ac = betas_to_alphas_cumprod(cosine_betas(T))
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert ac[49].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-12)
    # linear, scaled by 1000 / T: 1e-3 .. 0.2 for T = 100
    b = linear_betas(T)
    assert (b[0].item(), b[-1].item()) == pytest.approx((1e-3, 0.2), rel=1e-12)
    # sigmoid(-3..3): symmetric, so alpha_bar is exactly 1/2 at u = 0.5 (t = 49)
    assert get_schedule("sigmoid", T)[49].item() == pytest.approx(0.5, abs=1e-12)


def test_betas_alphas_roundtrip_and_rescaled_betas() -> None:
    betas = cosine_betas(T)
    back = alphas_cumprod_to_betas(betas_to_alphas_cumprod(betas))
    torch.testing.assert_close(back, betas, rtol=0, atol=1e-12)
    rescaled = rescale_betas_zero_snr(betas)
    assert rescaled[-1].item() == 1.0
    assert rescaled[0].item() == pytest.approx(betas[0].item(), abs=1e-12)


def test_unknown_schedule_raises() -> None:
    with pytest.raises(ValueError):
        get_schedule("quadratic", T)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_config_roundtrip(name: str, prediction_type: str) -> None:
    s = DDIMScheduler(
        num_train_timesteps=50,
        beta_schedule=name,
        rescale_zero_terminal_snr=False,
        prediction_type=prediction_type,
        timestep_spacing="linspace",
        eta=0.3,
    )
    config = json.loads(json.dumps(s.config))  # plain and serializable
    s2 = DDIMScheduler.from_config(config)
    assert s2.config == s.config
    torch.testing.assert_close(s2.alphas_cumprod, s.alphas_cumprod, rtol=0, atol=0)
    assert s.alphas_cumprod.shape == (50,)
    with pytest.raises(TypeError):
        DDIMScheduler.from_config({**config, "bogus": 1})


# ---------------------------------------------------------------------------- timesteps
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_set_timesteps_gives_exactly_the_asked_steps(spacing: str, steps: int) -> None:
    s = DDIMScheduler(timestep_spacing=spacing)
    s.set_timesteps(steps)
    ts = s.timesteps
    assert ts.dtype == torch.int64 and ts.shape == (steps,)
    assert len(s.timesteps_list) == steps and s.num_inference_steps == steps
    assert bool((ts[1:] < ts[:-1]).all())  # strictly descending, hence distinct
    assert 0 <= ts.min().item() and ts.max().item() <= T - 1
    if spacing == "trailing":
        assert ts[0].item() == T - 1
    if spacing == "leading":
        assert ts[-1].item() == 0
    # predecessors: each step hands over to the next one, the last one to clean data
    prev = s.prev_timesteps[ts]
    assert prev[:-1].tolist() == ts[1:].tolist() and prev[-1].item() == -1
    assert s.alphas_cumprod_prev[ts[-1]].item() == 1.0


def test_paper_40_steps_values() -> None:
    ts = spaced_timesteps(T, 40, "trailing")
    assert ts.numel() == 40  # not 50, as arange(T, 0, -(T // 40)) would give
    assert ts[:5].tolist() == [99, 96, 94, 91, 89] and ts[-3:].tolist() == [6, 4, 1]


@pytest.mark.parametrize("steps", [0, T + 1])
def test_set_timesteps_rejects_out_of_range(steps: int) -> None:
    with pytest.raises(ValueError):
        DDIMScheduler().set_timesteps(steps)


def test_epsilon_prediction_refuses_zero_snr_start() -> None:
    s = DDIMScheduler(prediction_type="epsilon", timestep_spacing="trailing")
    with pytest.raises(ValueError, match="zero-SNR"):
        s.set_timesteps(40)
    s = DDIMScheduler(prediction_type="epsilon", timestep_spacing="leading")
    s.set_timesteps(40)  # leading never visits t = T - 1
    assert s.timesteps[0].item() == 97


def test_step_requires_set_timesteps() -> None:
    s = DDIMScheduler()
    x = torch.zeros(2, 4)
    with pytest.raises(RuntimeError):
        s.step(x, 99, x)


# ---------------------------------------------------------------------------- forward process
def test_add_noise_per_position_timesteps() -> None:
    s = DDIMScheduler()
    B, L, D = 3, 5, 8
    x0 = torch.randn(B, L, D, generator=gen(0))
    noise = torch.randn(B, L, D, generator=gen(1))
    t = torch.randint(0, T, (B, L), generator=gen(2))
    t[0, 0] = T - 1  # a zero-SNR position gives pure noise
    xt = s.add_noise(x0, noise, t)
    assert xt.shape == (B, L, D)
    ac = get_schedule("cosine", T, zero_terminal_snr=True)
    for b in range(B):
        for j in range(L):
            a = ac[t[b, j]].item()
            expected = math.sqrt(a) * x0[b, j] + math.sqrt(1 - a) * noise[b, j]
            torch.testing.assert_close(xt[b, j], expected.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(xt[0, 0], noise[0, 0], rtol=0, atol=0)
    # one t per sequence (B,) broadcasts over positions; a plain int over everything
    t_row = torch.tensor([0, 50, 99])
    torch.testing.assert_close(
        s.add_noise(x0, noise, t_row)[1], s.add_noise(x0[1:2], noise[1:2], 50)[0]
    )
    with pytest.raises(ValueError):
        s.add_noise(x0, noise, torch.zeros(B, L, D, 1, dtype=torch.long))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_convert_model_output_inverts_targets(prediction_type: str) -> None:
    s = sched64(prediction_type=prediction_type, rescale_zero_terminal_snr=False)
    B, L, D = 2, 6, 16
    x0 = torch.randn(B, L, D, generator=gen(3), dtype=torch.float64)
    noise = torch.randn(B, L, D, generator=gen(4), dtype=torch.float64)
    t = torch.randint(0, T, (B, L), generator=gen(5))
    xt = s.add_noise(x0, noise, t)
    target = s.get_target(x0, noise, t)
    if prediction_type == "v_prediction":
        a = get_schedule("cosine", T)[t].unsqueeze(-1)  # (B, L, 1)
        torch.testing.assert_close(target, a.sqrt() * noise - (1 - a).sqrt() * x0)
    pred_x0, pred_eps = s.convert_model_output(target, xt, t)
    torch.testing.assert_close(pred_x0, x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(pred_eps, noise, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_conversions_exact_at_zero_snr(prediction_type: str) -> None:
    s = DDIMScheduler(prediction_type=prediction_type)
    x0 = torch.randn(4, 8, generator=gen(6))
    noise = torch.randn(4, 8, generator=gen(7))
    xt = s.add_noise(x0, noise, T - 1)
    pred_x0, pred_eps = s.convert_model_output(s.get_target(x0, noise, T - 1), xt, T - 1)
    assert torch.isfinite(pred_x0).all() and torch.isfinite(pred_eps).all()
    torch.testing.assert_close(pred_x0, x0)
    torch.testing.assert_close(pred_eps, noise)


def test_training_timesteps_uniform_and_seeded() -> None:
    s = DDIMScheduler()
    t = s.sample_training_timesteps((200, 500), generator=gen(8))
    assert t.shape == (200, 500) and t.dtype == torch.int64
    assert t.min().item() == 0 and t.max().item() == T - 1
    counts = torch.bincount(t.flatten(), minlength=T).double()
    assert abs(counts.mean().item() - 1000.0) < 1e-9
    assert counts.std().item() < 60  # binomial std is ~31.5 for 100k draws
    assert t.double().mean().item() == pytest.approx(49.5, abs=0.3)
    torch.testing.assert_close(t, s.sample_training_timesteps((200, 500), generator=gen(8)))


# ---------------------------------------------------------------------------- DDIM step
def oracle_output(s: DDIMScheduler, x0, noise, t):
    """What a perfect model outputs at step t on the DDIM path from (x0, noise)."""
    return s.get_target(x0, noise, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize(
    ("prediction_type", "zero_snr"),
    [("sample", True), ("v_prediction", True), ("epsilon", False), ("sample", False)],
)
def test_perfect_predictor_recovers_x0(
    prediction_type: str, zero_snr: bool, spacing: str, dtype: torch.dtype
) -> None:
    s = DDIMScheduler(
        prediction_type=prediction_type,
        rescale_zero_terminal_snr=zero_snr,
        timestep_spacing=spacing,
    ).to(dtype)
    s.set_timesteps(40)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    # eps-prediction: the first step divides round-off by sqrt(a_T) ~ 5e-4, and DDIM with eta = 0
    # carries that x0 error unchanged to the end
    x0_tol = 5 * tol if prediction_type == "epsilon" else tol
    x0 = torch.randn(3, 4, 16, generator=gen(9), dtype=dtype)
    noise = torch.randn(3, 4, 16, generator=gen(10), dtype=dtype)
    ts = s.timesteps_list
    x = s.add_noise(x0, noise, ts[0])
    for i, t in enumerate(ts):
        out = s.step(oracle_output(s, x0, noise, t), t, x)
        torch.testing.assert_close(out.pred_original_sample, x0, rtol=x0_tol, atol=x0_tol)
        x = out.prev_sample
        if i + 1 < len(ts):  # eta = 0 keeps x on the path sqrt(a) x0 + sqrt(1 - a) noise
            expected = s.add_noise(x0, noise, ts[i + 1])
            torch.testing.assert_close(x, expected, rtol=x0_tol, atol=x0_tol)
    torch.testing.assert_close(x, x0, rtol=x0_tol, atol=x0_tol)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_ddim_sample_with_perfect_predictor(prediction_type: str) -> None:
    s = DDIMScheduler(prediction_type=prediction_type)
    shape = (2, 3, 8)
    x0 = torch.randn(shape, generator=gen(11))
    noise = torch.randn(shape, generator=gen(12))  # = the loop's x_T: zero SNR, scale 1

    def model_fn(x_t, t, drop_context):
        return s.get_target(x0, noise, t)

    out = ddim_sample(model_fn, shape, s, 40, generator=gen(12))
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)


def test_trailing_first_step_at_zero_snr_matches_eq12() -> None:
    s = sched64()  # x0-prediction, zero SNR, trailing
    s.set_timesteps(40)
    t, t_prev = s.timesteps_list[:2]
    assert s.is_zero_snr(t) and not s.is_zero_snr(t_prev)
    x_t = torch.randn(4, 8, generator=gen(13), dtype=torch.float64)
    x0_hat = torch.randn(4, 8, generator=gen(14), dtype=torch.float64)
    out = s.step(x0_hat, t, x_t)
    a_prev = get_schedule("cosine", T, zero_terminal_snr=True)[t_prev].item()
    # eq. 12 with a_t = 0: eps = x_t, so x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) x_t
    expected = math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev) * x_t
    assert torch.isfinite(out.prev_sample).all()
    torch.testing.assert_close(out.prev_sample, expected, rtol=1e-12, atol=1e-12)


def test_step_with_eta_matches_eq12_and_eq16() -> None:
    s = sched64(eta=0.7, rescale_zero_terminal_snr=False)
    s.set_timesteps(10)
    t, t_prev = s.timesteps_list[3:5]
    x_t, x0_hat, z = (torch.randn(2, 6, generator=gen(i), dtype=torch.float64) for i in (1, 2, 3))
    out = s.step(x0_hat, t, x_t, variance_noise=z)
    ac = get_schedule("cosine", T)
    a, ap = ac[t].item(), ac[t_prev].item()
    eps = (x_t - math.sqrt(a) * x0_hat) / math.sqrt(1 - a)
    sigma = 0.7 * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
    expected = math.sqrt(ap) * x0_hat + math.sqrt(1 - ap - sigma**2) * eps + sigma * z
    torch.testing.assert_close(out.prev_sample, expected, rtol=1e-12, atol=1e-12)
    # drawn noise is reproducible through the generator
    a1 = s.step(x0_hat, t, x_t, generator=gen(5)).prev_sample
    a2 = s.step(x0_hat, t, x_t, generator=gen(5)).prev_sample
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    assert not torch.allclose(a1, s.step(x0_hat, t, x_t, generator=gen(6)).prev_sample)


def test_step_with_per_row_timesteps_equals_rowwise_steps() -> None:
    s = DDIMScheduler()
    s.set_timesteps(20)
    x = torch.randn(3, 8, generator=gen(15))
    out = torch.randn(3, 8, generator=gen(16))
    t = torch.tensor(s.timesteps_list[:3])
    batched = s.step(out, t, x).prev_sample
    for i in range(3):
        row = s.step(out[i : i + 1], int(t[i]), x[i : i + 1]).prev_sample
        torch.testing.assert_close(batched[i : i + 1], row)


def test_clip_and_threshold_bound_x0() -> None:
    x = torch.randn(4, 32, generator=gen(17))
    big = 5 * torch.randn(4, 32, generator=gen(18))
    for kwargs in ({"clip_sample": True, "clip_sample_range": 1.5}, {"thresholding": True}):
        s = DDIMScheduler(**kwargs, sample_max_value=3.0)
        s.set_timesteps(10)
        x0 = s.step(big, 50, x).pred_original_sample
        bound = 1.5 if "clip_sample" in kwargs else 1.0
        assert x0.abs().max().item() <= bound + 1e-6
        assert x0.abs().max().item() == pytest.approx(bound, abs=1e-6)


# ---------------------------------------------------------------------------- guidance
def test_cfg_hand_formula() -> None:
    cond = torch.tensor([[1.0, 2.0, -1.0]])
    uncond = torch.tensor([[0.5, 1.0, 0.0]])
    expected = torch.tensor([[2.0, 4.0, -3.0]])  # 0.5 + 3 * 0.5, 1 + 3 * 1, 0 + 3 * (-1)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 3.0), expected)
    torch.testing.assert_close(guide(cond, uncond, 3.0, 0.0), expected)
    torch.testing.assert_close(guide(cond, uncond, 1.0, 0.7), cond)


def test_guidance_rescale_matches_cond_std() -> None:
    cond = torch.randn(2, 5, 64, generator=gen(19), dtype=torch.float64)
    uncond = 0.3 * torch.randn(2, 5, 64, generator=gen(20), dtype=torch.float64)
    guided = classifier_free_guidance(cond, uncond, 3.0)
    assert not torch.allclose(guided.std(-1), cond.std(-1), rtol=0.1)
    full = rescale_guidance(guided, cond, 1.0)
    torch.testing.assert_close(full.std(-1), cond.std(-1))  # per sample, per position
    ratio = (cond.std(-1) / guided.std(-1)).unsqueeze(-1)  # (2, 5, 1)
    torch.testing.assert_close(full, guided * ratio)
    mixed = rescale_guidance(guided, cond, 0.7)
    torch.testing.assert_close(mixed, 0.7 * full + 0.3 * guided)
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.0), guided)


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_zero_snr_guided_x0_is_the_limit_of_eps_guidance(phi: float) -> None:
    x = torch.randn(3, 32, generator=gen(21), dtype=torch.float64)
    x0_c = torch.randn(3, 32, generator=gen(22), dtype=torch.float64)
    x0_u = 0.5 * torch.randn(3, 32, generator=gen(23), dtype=torch.float64)
    limit = guided_original_at_zero_snr(x, x0_c, x0_u, 3.0, phi)
    errors = []
    for c in (1e-4, 1e-6):  # c = sqrt(alpha_bar) -> 0
        s = math.sqrt(1 - c * c)
        eps_g = guide((x - c * x0_c) / s, (x - c * x0_u) / s, 3.0, phi)
        x0_g = (x - s * eps_g) / c
        errors.append((x0_g - limit).abs().max().item())
    if phi == 0.0:  # plain CFG is affine: exact up to round-off at any c
        assert max(errors) < 1e-8
    else:  # the rescale term converges at O(c)
        assert errors[1] < 1e-4 and 50 < errors[0] / errors[1] < 200
    if phi == 0.0:
        torch.testing.assert_close(limit, x0_u + 3.0 * (x0_c - x0_u))


class CountingModel:
    """A deterministic fake denoiser (x0-prediction) that records its calls.

    ``bounded`` keeps outputs in (-1, 1): a fake model's x0 is not consistent with x_t, and the
    guided ODE then amplifies round-off far more than it would with a trained denoiser.
    """

    def __init__(self, dim: int, bounded: bool = False) -> None:
        self.weight = torch.randn(dim, dim, generator=gen(24)) / math.sqrt(dim)
        self.bias = torch.randn(dim, generator=gen(25))
        self.bounded = bounded
        self.calls: list[tuple[tuple[int, ...], list[int], list[bool]]] = []

    def __call__(self, x_t, t, drop_context):
        self.calls.append((tuple(x_t.shape), t.tolist(), drop_context.tolist()))
        keep = (~drop_context).to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        if self.bounded:
            return torch.tanh(x_t @ self.weight + keep * self.bias)
        scale = (1.0 + t.to(x_t.dtype) / T).view(-1, *([1] * (x_t.ndim - 1)))
        return scale * torch.tanh(x_t @ self.weight) + keep * self.bias


def test_guidance_scale_one_is_conditional_and_one_call_per_step() -> None:
    s = DDIMScheduler()
    model = CountingModel(8)
    shape = (3, 4, 8)
    out = ddim_sample(
        model, shape, s, 40, guidance_scale=1.0, guidance_rescale=0.7, generator=gen(26)
    )
    assert len(model.calls) == 40
    assert all(c[0] == shape and c[2] == [False] * 3 for c in model.calls)
    assert [c[1][0] for c in model.calls] == s.timesteps_list
    # the same loop by hand, conditional only
    x = torch.randn(shape, generator=gen(26))
    for t in s.timesteps_list:
        x = s.step(model(x, torch.full((3,), t), torch.zeros(3, dtype=torch.bool)), t, x)[0]
    torch.testing.assert_close(out, x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("zero_snr", [True, False])
def test_guided_loop_matches_hand_formula(zero_snr: bool) -> None:
    s = sched64(rescale_zero_terminal_snr=zero_snr)  # x0-prediction, trailing
    model = CountingModel(8)
    model.weight, model.bias = model.weight.double(), model.bias.double()
    n, w, steps = 3, 2.5, 10
    shape = (n, 8)
    out = ddim_sample(
        model, shape, s, steps, guidance_scale=w, init_noise_scale=0.6, generator=gen(27)
    )
    assert len(model.calls) == steps  # one batched call per step
    assert all(c[0] == (2 * n, 8) and c[2] == [False] * n + [True] * n for c in model.calls)

    ac = get_schedule("cosine", T, zero_terminal_snr=zero_snr)
    ts = spaced_timesteps(T, steps, "trailing").tolist()
    x = 0.6 * torch.randn(shape, generator=gen(27), dtype=torch.float64)
    for i, t in enumerate(ts):
        a = ac[t].item()
        a_prev = ac[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        tt = torch.full((n,), t)
        x0_c = model(x, tt, torch.zeros(n, dtype=torch.bool))
        x0_u = model(x, tt, torch.ones(n, dtype=torch.bool))
        if a == 0.0:  # eps = x_t on both branches; plain CFG is affine, so guide x0 directly
            eps, x0 = x, x0_u + w * (x0_c - x0_u)
        else:
            eps_c = (x - math.sqrt(a) * x0_c) / math.sqrt(1 - a)
            eps_u = (x - math.sqrt(a) * x0_u) / math.sqrt(1 - a)
            eps = eps_u + w * (eps_c - eps_u)
            x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    torch.testing.assert_close(out, x, rtol=1e-9, atol=1e-9)


def test_paper_settings_finite_and_precision_stable() -> None:
    shape = (4, 3, 16)
    noise = torch.randn(shape, generator=gen(28))
    results = {}
    for dtype in (torch.float32, torch.float64):
        model = CountingModel(16, bounded=True)
        model.weight, model.bias = model.weight.to(dtype), model.bias.to(dtype)
        s = DDIMScheduler().to(dtype)
        results[dtype] = ddim_sample(
            model,
            shape,
            s,
            40,
            guidance_scale=3.0,
            guidance_rescale=0.7,
            init_noise_scale=0.6,
            initial_noise=noise,
        )
        assert len(model.calls) == 40 and results[dtype].dtype == dtype
        assert torch.isfinite(results[dtype]).all()
    diff = (results[torch.float32].double() - results[torch.float64]).abs().max().item()
    assert diff < 1e-3


def test_sampling_is_deterministic_for_a_fixed_generator() -> None:
    shape = (2, 8)
    for eta in (0.0, 0.5):
        s = DDIMScheduler(eta=eta)
        model = CountingModel(8)
        kwargs = {"guidance_scale": 3.0, "guidance_rescale": 0.7}
        a = ddim_sample(model, shape, s, 10, **kwargs, generator=gen(1))
        b = ddim_sample(model, shape, s, 10, **kwargs, generator=gen(1))
        c = ddim_sample(model, shape, s, 10, **kwargs, generator=gen(2))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert (a - c).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------- buffers
def test_buffers_follow_dtype_and_device() -> None:
    s = DDIMScheduler()
    s.set_timesteps(40)
    assert s.state_dict() == {}  # schedule is a function of the config, not a checkpoint entry
    s = s.to(torch.float64)
    for name in ("alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
        assert getattr(s, name).dtype == torch.float64
    assert s.alphas_cumprod_prev.dtype == torch.float64
    assert s.timesteps.dtype == torch.int64 and s.timesteps.shape == (40,)
    x = torch.randn(2, 8, dtype=torch.float64)
    assert s.step(x, 99, x).prev_sample.dtype == torch.float64
    s.set_timesteps(10)  # rebuilt tables keep the module's dtype
    assert s.alphas_cumprod_prev.dtype == torch.float64
    m = s.to("meta")
    assert {b.device.type for b in m.buffers()} == {"meta"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampling_on_cuda_matches_cpu() -> None:
    model = CountingModel(8)
    cpu = ddim_sample(model, (2, 8), DDIMScheduler(), 10, guidance_scale=3.0, generator=gen(3))
    model.weight, model.bias = model.weight.cuda(), model.bias.cuda()
    s = DDIMScheduler().cuda()
    assert s.alphas_cumprod.is_cuda
    gpu = ddim_sample(model, (2, 8), s, 10, guidance_scale=3.0, generator=gen(3))
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
