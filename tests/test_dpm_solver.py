"""DPM-Solver++(2M): closed forms (exact x0 oracle, first order = DDIM), the zero-terminal-SNR
start, and (when installed) diffusers' DPMSolverMultistepScheduler."""

from __future__ import annotations

import pytest
import torch

from diffusion import DDIMScheduler, DPMSolverMultistepScheduler, ddim_sample

D = 8


def _oracle(sched, x0_star: torch.Tensor):
    """The exact model for data that is the single point x0_star, in the scheduler's type."""

    def fn(x_t, t, drop=None):
        ac = sched.alphas_cumprod.double()[t].reshape(-1, *([1] * (x_t.dim() - 1)))
        a, s = ac.sqrt(), (1 - ac).sqrt()
        x, x0 = x_t.double(), x0_star.double().expand_as(x_t)
        eps = (x - a * x0) / s
        out = {"sample": x0, "epsilon": eps, "v_prediction": a * eps - s * x0}
        return out[sched.prediction_type].to(x_t.dtype)

    return fn


@pytest.mark.parametrize(
    "prediction_type,zero_snr",
    [("sample", True), ("v_prediction", True), ("epsilon", False), ("sample", False)],
)
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 40])
def test_exact_x0_oracle_is_recovered(prediction_type, zero_snr, steps):
    torch.manual_seed(0)
    x0 = torch.randn(3, D, dtype=torch.float64)
    for cls in (DDIMScheduler, DPMSolverMultistepScheduler):
        sched = cls(rescale_zero_terminal_snr=zero_snr, prediction_type=prediction_type)
        sched = sched.to(torch.float64)
        out = ddim_sample(_oracle(sched, x0), (3, D), sched, steps, dtype=torch.float64)
        torch.testing.assert_close(out, x0, atol=1e-9, rtol=1e-9)


def test_first_order_equals_ddim_and_second_order_differs():
    torch.manual_seed(0)
    w = torch.randn(D, D) / D**0.5

    def model_fn(x_t, t, drop):  # a smooth, non-trivial x0 predictor
        return torch.tanh(x_t @ w) + 0.01 * t[:, None].float() / 100

    noise = torch.randn(2, D)
    ddim = DDIMScheduler()
    dpm1 = DPMSolverMultistepScheduler.from_ddim(ddim, solver_order=1)
    dpm2 = DPMSolverMultistepScheduler.from_ddim(ddim)
    kw = dict(guidance_scale=3.0, guidance_rescale=0.7, initial_noise=noise)
    a = ddim_sample(lambda x, t, d: model_fn(x, t, d) * (1 + d[:, None]), (2, D), ddim, 10, **kw)
    b = ddim_sample(lambda x, t, d: model_fn(x, t, d) * (1 + d[:, None]), (2, D), dpm1, 10, **kw)
    c = ddim_sample(lambda x, t, d: model_fn(x, t, d) * (1 + d[:, None]), (2, D), dpm2, 10, **kw)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert (c - a).abs().max() > 1e-3


def test_single_steps_closed_form_at_zero_snr():
    sched = DPMSolverMultistepScheduler(rescale_zero_terminal_snr=True).to(torch.float64)
    sched.set_timesteps(4)  # trailing: 99, 74, 49, 24
    ts = sched.timesteps_list
    assert ts == [99, 74, 49, 24] and sched.is_zero_snr(99)
    ac = sched.alphas_cumprod
    x = torch.randn(2, D, dtype=torch.float64)
    d0, d1 = torch.randn(2, D, dtype=torch.float64), torch.randn(2, D, dtype=torch.float64)
    # zero-SNR start: x = sigma_s x_t + alpha_s D (finite, no 0/0)
    x1 = sched.step(d0, ts[0], x).prev_sample
    torch.testing.assert_close(x1, (1 - ac[74]).sqrt() * x + ac[74].sqrt() * d0)
    # the next step is first order (the previous lambda is -inf): DDIM with eps from D
    x2 = sched.step(d1, ts[1], x1).prev_sample
    eps = (x1 - ac[74].sqrt() * d1) / (1 - ac[74]).sqrt()
    torch.testing.assert_close(x2, ac[49].sqrt() * d1 + (1 - ac[49]).sqrt() * eps)
    # then second order: lambda-space extrapolation with r = h_prev / h
    d2 = torch.randn(2, D, dtype=torch.float64)
    lam = lambda t: 0.5 * torch.log(ac[t] / (1 - ac[t]))  # noqa: E731
    h, h_prev = lam(24) - lam(49), lam(49) - lam(74)
    dd = d2 + 0.5 * h / h_prev * (d2 - d1)
    want = ((1 - ac[24]) / (1 - ac[49])).sqrt() * x2 - ac[24].sqrt() * torch.expm1(-h) * dd
    torch.testing.assert_close(sched.step(d2, ts[2], x2).prev_sample, want)
    # last step to clean data returns the x0 estimate
    d3 = torch.randn(2, D, dtype=torch.float64)
    torch.testing.assert_close(sched.step(d3, ts[3], x2).prev_sample, d3)


def test_config_round_trip_and_bad_order():
    s = DPMSolverMultistepScheduler(num_train_timesteps=50, solver_order=1)
    assert DPMSolverMultistepScheduler.from_config(s.config).config == s.config
    with pytest.raises(ValueError, match="solver_order"):
        DPMSolverMultistepScheduler(solver_order=3)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        DPMSolverMultistepScheduler().step(torch.zeros(1, D), 99, torch.zeros(1, D))


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [10, 20])
def test_matches_diffusers(prediction_type, steps):
    diffusers = pytest.importorskip("diffusers")
    from diffusion.schedules import alphas_cumprod_to_betas

    ours = DPMSolverMultistepScheduler(
        rescale_zero_terminal_snr=False, prediction_type=prediction_type
    ).to(torch.float64)
    betas = alphas_cumprod_to_betas(ours._alphas_cumprod64)
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=100,
        trained_betas=betas.tolist(),
        solver_order=2,
        prediction_type=prediction_type,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing="trailing",
    )
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == ours.timesteps_list
    torch.manual_seed(0)
    w = torch.randn(D, D, dtype=torch.float64) / D**0.5
    x_ours = x_ref = torch.randn(2, D, dtype=torch.float64)
    for t in ours.timesteps_list:
        out = torch.tanh(x_ours @ w) * (1 + t / 100)  # the same model on both
        x_ours = ours.step(out, t, x_ours).prev_sample
        out_ref = torch.tanh(x_ref @ w) * (1 + t / 100)
        x_ref = ref.step(out_ref, torch.tensor(t), x_ref).prev_sample
        torch.testing.assert_close(x_ours, x_ref.to(torch.float64), atol=1e-5, rtol=1e-5)


def test_solver_is_selectable_in_generation_and_objective():
    from lcm.generation import SamplingConfig, generate, make_step
    from lcm.models import TwoTowerConfig
    from lcm.normalizer import RobustNormalizer
    from lcm.objectives import TwoTowerDiffusion

    torch.manual_seed(0)
    model = TwoTowerConfig.from_name("tiny", sonar_dim=D).build().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    norm = RobustNormalizer(D)
    prompts = [torch.randn(3, D), torch.randn(5, D)]
    outs = {}
    for solver in ("ddim", "dpmsolver++"):
        step = make_step(model, sampling=SamplingConfig(num_inference_steps=10, solver=solver))
        g = torch.Generator().manual_seed(0)
        outs[solver] = generate(
            step, prompts, norm, max_new_concepts=2, repeat_threshold=2.0, generator=g
        ).concepts
    assert all(torch.isfinite(c).all() for c in outs["dpmsolver++"])
    assert (outs["ddim"][0] - outs["dpmsolver++"][0]).abs().max() > 1e-4
    obj = TwoTowerDiffusion(model)
    x = torch.randn(2, 4, D)
    g = torch.Generator().manual_seed(0)
    y = obj.predict_next(x, generator=g, solver="dpmsolver++", num_inference_steps=10)
    assert y.shape == (2, D) and torch.isfinite(y).all()
    with pytest.raises(ValueError, match="unknown solver"):
        obj.predict_next(x, solver="euler")
