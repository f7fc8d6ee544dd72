"""The summarization residuals ``source_mean`` and ``source_lead`` in the diffusion families:
the base comes from the module's separator and is added to the denoiser's x0 estimate of the
conditional rows, the same in training, teacher-forced prediction and cached generation."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from test_residual import D, _objective
from torch import Tensor
from torch.utils.data import DataLoader

from lcm.generation import SamplingConfig, generate, make_step
from lcm.models import OneTowerConfig, TwoTowerConfig
from lcm.normalizer import RobustNormalizer
from lcm.objectives import OneTowerDiffusion, TwoTowerDiffusion
from lcm.objectives.base import residual_base, shift_right
from lcm.train.module import OneTowerModule, TwoTowerModule, load_module

SOURCE = ["source_mean", "source_lead"]
DIFFUSION = [(TwoTowerConfig, TwoTowerDiffusion), (OneTowerConfig, OneTowerDiffusion)]
IDS = ["two_tower", "one_tower"]
N_SRC = (4, 2)  # source lengths of the two documents (before end-of-text and separator)


@pytest.fixture(scope="module")
def normalizer():
    torch.manual_seed(0)
    return RobustNormalizer.fit(torch.randn(200, D) * 2 + 1)


def _documents(sep: Tensor, n_summary: int = 2) -> tuple[Tensor, Tensor]:
    """Right-padded (2, T, D) ``[source, EOT, SEP, summary]`` rows of source lengths
    :data:`N_SRC`, and their (2, T) mask."""
    g = torch.Generator().manual_seed(7)
    rows = [
        torch.cat(
            (torch.randn(n + 1, D, generator=g), sep[None], torch.randn(n_summary, D, generator=g))
        )
        for n in N_SRC
    ]
    T = max(len(r) for r in rows)
    x = torch.zeros(len(rows), T, D)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        x[i, : len(r)], mask[i, : len(r)] = r, True
    return x, mask


def _expected(x: Tensor, n_src: int, residual: str) -> Tensor:
    """(D,) the base of the first summary concept, from its definition."""
    src = x[:n_src]
    return src.mean(dim=0) if residual == "source_mean" else (src.mean(dim=0) + src[0]) / 2


@pytest.mark.parametrize("residual", SOURCE)
@pytest.mark.parametrize("cfg,objective_cls", DIFFUSION, ids=IDS)
def test_teacher_forced_base_equals_the_base_of_each_generated_concept(
    cfg, objective_cls, residual, normalizer
):
    """The base of summary concept i teacher-forced equals the base the cached generation step
    adds when it generates that concept, concept by concept (left-padded prompts of different
    lengths), and the base ``sample_next`` adds."""
    objective = _objective(cfg, objective_cls, residual)
    sep = torch.randn(D)
    objective.separator = lambda: sep
    x, mask = _documents(sep)
    tf = objective.teacher_forced_base(x, mask)  # (2, T, D), aligned to targets
    for i, n in enumerate(N_SRC):
        first = n + 2  # the first summary concept's position
        torch.testing.assert_close(tf[i, first], _expected(x[i], n, residual))
        torch.testing.assert_close(tf[i, first + 1], _expected(x[i], n, residual))
        torch.testing.assert_close(tf[i], shift_right(residual_base(x, mask, residual, sep))[i])
    # generation: prompts up to and including the separator, left-padded in the step
    prompts = [x[i, : n + 2] for i, n in enumerate(N_SRC)]
    L_max = max(len(p) for p in prompts)
    px = torch.zeros(2, L_max, D)
    pmask = torch.zeros(2, L_max, dtype=torch.bool)
    for i, p in enumerate(prompts):
        px[i, L_max - len(p) :], pmask[i, L_max - len(p) :] = p, True
    for use_cache in (True, False):
        step = make_step(objective, use_cache=use_cache)
        step.start(px, pmask)
        for k in range(2):  # each summary concept: the step's base, then the gold one appended
            want = torch.stack([tf[i, n + 2 + k] for i, n in enumerate(N_SRC)])
            torch.testing.assert_close(step._base(), want)
            assert step.next(torch.Generator().manual_seed(k)).shape == (2, D)
            step.append(torch.stack([x[i, n + 2 + k] for i, n in enumerate(N_SRC)]))
    right = torch.zeros(2, L_max, D)
    rmask = torch.zeros(2, L_max, dtype=torch.bool)
    for i, p in enumerate(prompts):
        right[i, : len(p)], rmask[i, : len(p)] = p, True
    want = torch.stack([tf[i, n + 2] for i, n in enumerate(N_SRC)])
    torch.testing.assert_close(objective.next_base(right, rmask), want)


@pytest.mark.parametrize("residual", SOURCE)
@pytest.mark.parametrize("cfg,objective_cls", DIFFUSION, ids=IDS)
def test_a_zero_denoiser_predicts_and_generates_the_source_base(
    cfg, objective_cls, residual, normalizer
):
    """A zero PostNet makes the conditional x0 estimate the base itself; without guidance the
    DDIM sample is then the base: teacher-forced, ``predict_next`` and generated alike."""
    objective = _objective(cfg, objective_cls, residual)
    post = objective.model.den_postnet if cfg is TwoTowerConfig else objective.model.postnet
    torch.nn.init.zeros_(post.weight)
    torch.nn.init.zeros_(post.bias)
    objective.sampling = SamplingConfig(num_inference_steps=4, guidance_scale=1.0)
    sep = torch.randn(D)
    objective.separator = lambda: sep
    x, mask = _documents(sep)
    pred = objective.predict_all({"x": x, "mask": mask}, torch.Generator().manual_seed(0))
    prompts = []
    for i, n in enumerate(N_SRC):
        lead = _expected(x[i], n, residual)
        torch.testing.assert_close(pred[i, n + 2], lead, atol=1e-5, rtol=1e-5)
        nxt = objective.predict_next(x[i : i + 1, : n + 2])
        torch.testing.assert_close(nxt[0], lead, atol=1e-5, rtol=1e-5)
        prompts.append(normalizer.denormalize(x[i, : n + 2]))
    gen = generate(
        make_step(objective), prompts, normalizer, max_new_concepts=1, repeat_threshold=2.0
    )
    for got, (i, n) in zip(gen.concepts, enumerate(N_SRC)):
        want = normalizer.denormalize(_expected(x[i], n, residual))
        torch.testing.assert_close(got[0], want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("residual", SOURCE)
@pytest.mark.parametrize("cfg,objective_cls", DIFFUSION, ids=IDS)
def test_rows_whose_context_is_dropped_get_no_source_base(cfg, objective_cls, residual):
    """In the loss, every position's x0 estimate is the plain one plus the shifted source base
    where the context is kept, and the plain one where classifier-free guidance drops it."""
    torch.manual_seed(1)
    model = cfg.from_name("tiny", sonar_dim=D).build()
    plain = objective_cls(model, cfg_dropout=0.5)
    res = objective_cls(model, cfg_dropout=0.5, residual=residual)
    sep = torch.randn(D)
    res.separator = lambda: sep
    x, mask = _documents(sep, n_summary=4)
    batch = {"x": x, "mask": mask, "loss_mask": mask}
    a = plain.loss(batch, torch.Generator().manual_seed(3))
    b = res.loss(batch, torch.Generator().manual_seed(3))
    base = shift_right(residual_base(x, mask, residual, sep))  # (2, T, D)
    diff = b.pred - a.pred
    dropped = diff.abs().amax(dim=-1) == 0  # (2, T)
    kept = (diff - base).abs().amax(dim=-1) <= 1e-5
    assert bool((dropped | kept).all())
    at_summary = torch.zeros_like(dropped)
    for i, n in enumerate(N_SRC):
        at_summary[i, n + 2 : n + 6] = True
    assert bool((dropped & at_summary).any()) and bool((kept & at_summary).any())
    assert bool((base[at_summary].abs().amax(dim=-1) > 0).all())  # a real base there


@pytest.mark.parametrize(
    "module_cls,cfg", [(TwoTowerModule, TwoTowerConfig), (OneTowerModule, OneTowerConfig)], ids=IDS
)
def test_module_with_source_lead_trains_saves_and_reloads(tmp_path, module_cls, cfg):
    """The module gives its objective its own separator: the separator slots the module fills
    are the ones the base finds; one training step moves the weights; the checkpoint loads with
    weights_only and predicts the same with the same base."""
    module = module_cls(
        arch=cfg.from_name("tiny", sonar_dim=D),
        residual="source_lead",
        sampling=SamplingConfig(num_inference_steps=3),
    )
    module.normalizer_ready.fill_(True)
    x, mask = _documents(torch.zeros(D))  # separator slots hold 0 until the module fills them
    sep_mask = torch.zeros_like(mask)
    for i, n in enumerate(N_SRC):
        sep_mask[i, n + 1] = True
    batch = {"x": x, "mask": mask, "loss_mask": mask & ~sep_mask, "sep_mask": sep_mask}
    filled = module.insert_separator(batch)["x"]
    base = module.objective.teacher_forced_base(filled, mask)
    for i, n in enumerate(N_SRC):
        torch.testing.assert_close(base[i, n + 2], _expected(filled[i], n, "source_lead"))
    before = [p.detach().clone() for p in module.objective.model.parameters()]
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, DataLoader([batch], batch_size=None))
    after = list(module.objective.model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(before, after))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_module(str(path)).eval()
    module.eval()
    assert loaded.hparams["residual"] == "source_lead"
    assert torch.equal(loaded.objective._separator(), module.separator)
    torch.testing.assert_close(loaded.objective.teacher_forced_base(filled, mask), base)
    g = [torch.Generator().manual_seed(5) for _ in range(2)]
    torch.testing.assert_close(
        loaded.objective.predict_all({"x": filled, "mask": mask}, g[0]),
        module.objective.predict_all({"x": filled, "mask": mask}, g[1]),
    )


@pytest.mark.parametrize("residual", ["none", "last", "context_mean"])
@pytest.mark.parametrize("cfg,objective_cls", DIFFUSION, ids=IDS)
def test_the_separator_changes_nothing_for_the_other_residuals(
    cfg, objective_cls, residual, normalizer
):
    """With the separator now given to every diffusion objective, ``none``, ``last`` and
    ``context_mean`` give the same loss, teacher-forced predictions and generated concepts, bit
    for bit, as without one."""
    sep = torch.randn(D)
    results = []
    for with_sep in (False, True):
        objective = _objective(cfg, objective_cls, residual)
        objective.cfg_dropout = 0.3
        if with_sep:
            objective.separator = lambda: sep
        x, mask = _documents(sep)
        batch = {"x": x, "mask": mask, "loss_mask": mask}
        loss = objective.loss(batch, torch.Generator().manual_seed(1))
        pred = objective.predict_all(batch, torch.Generator().manual_seed(2))
        gen = generate(
            make_step(objective),
            [normalizer.denormalize(x[0, :6])],
            normalizer,
            generator=torch.Generator().manual_seed(3),
            max_new_concepts=2,
            repeat_threshold=2.0,
        )
        results.append((loss.loss, loss.pred, pred, gen.concepts[0]))
    for a, b in zip(*results):
        assert torch.equal(a, b)
