"""Tests of residual vector quantization (lcm.quant) and Quant-LCM-d (lcm.models.quant_lcm,
lcm.objectives.quant): CPU, seconds."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from lcm.models.quant_lcm import QuantLCMConfig
from lcm.objectives.quant import QuantObjective, sample_logits
from lcm.quant import RVQ

D = 16
K, U = 4, 16  # 4 codebooks of 16 units: faiss wants >= 39 * 16 training points


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return torch.randn(1500, D, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def rvq(data) -> RVQ:
    return RVQ(D, K, U).fit(data)


# ---- RVQ ---------------------------------------------------------------------------------------


def test_error_decreases_with_more_codebooks(data):
    errors = [RVQ(D, k, U).fit(data).reconstruction_error(data)["relative"] for k in (1, 2, 4)]
    assert errors[0] < 1.0
    assert errors[0] > errors[1] > errors[2]


def test_prefix_sums_go_coarse_to_fine(rvq, data):
    codes = rvq.encode(data)
    assert codes.shape == (len(data), K) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < U
    full = rvq.decode(codes)
    torch.testing.assert_close(rvq.decode_prefix(codes, K), full, atol=0, rtol=0)
    torch.testing.assert_close(rvq.decode_prefix(codes, 0), torch.zeros_like(full))
    torch.testing.assert_close(rvq.code_vectors(codes).sum(-2), full)
    errs = [(data - rvq.decode_prefix(codes, k)).pow(2).mean().item() for k in range(K + 1)]
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    stats = rvq.reconstruction_error(data)
    assert stats["mse"] == pytest.approx(errs[-1], rel=1e-5)
    assert stats["relative"] == pytest.approx(errs[-1] / data.pow(2).mean().item(), rel=1e-4)
    assert rvq.reconstruction_error(data, k=1)["mse"] == pytest.approx(errs[1], rel=1e-5)


def test_encode_keeps_leading_dims(rvq, data):
    x = data[:12].reshape(3, 4, D)
    codes = rvq.encode(x)
    assert codes.shape == (3, 4, K)
    torch.testing.assert_close(codes.reshape(12, K), rvq.encode(data[:12]))
    assert rvq.decode(codes).shape == (3, 4, D)


def test_beam_search_encoder_matches_faiss(data):
    """Same codebooks, same beam: our torch encoder gives faiss' codes, our decode its vectors
    (this also pins the layout of faiss' flat codebook array)."""
    rq = faiss.ResidualQuantizer(D, K, 4)
    rq.train_type = faiss.ResidualQuantizer.Train_default
    rq.cp.niter = 5
    rq.train(data.numpy())
    ours = RVQ(D, K, U)
    ours.codebooks.copy_(torch.from_numpy(faiss.vector_to_array(rq.codebooks).reshape(K, U, D)))
    ours.fitted.fill_(True)
    packed = rq.compute_codes(data.numpy())
    theirs = torch.from_numpy(faiss.unpack_bitstrings(packed, K, 4).astype(np.int64))
    codes = ours.encode(data)
    assert (codes == theirs).all(dim=1).float().mean() > 0.99  # ties may break differently
    torch.testing.assert_close(
        ours.decode(theirs), torch.from_numpy(rq.decode(packed)), atol=1e-5, rtol=0
    )
    # Beam search is never worse than greedy encoding.
    greedy = RVQ(D, K, U, beam_size=1)
    greedy.load_state_dict(ours.state_dict())
    assert ours.reconstruction_error(data)["mse"] <= greedy.reconstruction_error(data)["mse"] + 1e-7


def test_save_load_exact(rvq, data, tmp_path):
    path = tmp_path / "rvq.pt"
    rvq.save(path)
    loaded = RVQ.load(path)
    assert (loaded.dim, loaded.n_codebooks, loaded.n_units) == (D, K, U)
    assert torch.equal(loaded.codebooks, rvq.codebooks)
    assert torch.equal(loaded.encode(data), rvq.encode(data))
    blob = torch.load(path, weights_only=True)  # plain tensors and ints only
    assert torch.equal(blob["state_dict"]["codebooks"], rvq.codebooks)


def test_rvq_validation(data):
    with pytest.raises(ValueError):
        RVQ(D, 4, 48)  # not a power of two
    with pytest.raises(RuntimeError):
        RVQ(D, 4, 16).encode(data)  # not fitted
    assert RVQ.from_name("tiny", dim=D).codebooks.shape == (4, 64, D)
    assert RVQ.from_name("paper", dim=D, n_units=2, beam_size=3).codebooks.shape == (64, 2, D)
    with pytest.raises(TypeError):
        RVQ.from_name("tiny", dim=D, units=2)  # a misspelt field is an error
    with pytest.raises(ValueError):
        RVQ(D, 2, 16).fit(data).decode(torch.zeros(3, 4, dtype=torch.long))


# ---- sampling ----------------------------------------------------------------------------------


def test_sample_logits_greedy_nucleus_and_frequencies():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_logits(logits, 0.0), torch.zeros(4000, dtype=torch.long))
    assert set(sample_logits(logits, 1.0, 0.8, g).tolist()) == {0, 1}
    assert set(sample_logits(logits, 1.0, 0.81, g).tolist()) == {0, 1, 2}
    assert set(sample_logits(logits, 1.0, 1e-6, g).tolist()) == {0}
    freq = torch.bincount(sample_logits(logits, 1.0, 1.0, g), minlength=4).float() / 4000
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)
    # Temperature 0.5 squares the odds: p ~ probs^2.
    sharp = probs.pow(2) / probs.pow(2).sum()
    freq = torch.bincount(sample_logits(logits, 0.5, 1.0, g), minlength=4).float() / 4000
    torch.testing.assert_close(freq, sharp, atol=0.03, rtol=0)


# ---- Quant-LCM ---------------------------------------------------------------------------------


def tiny_quant(rvq: RVQ):
    torch.manual_seed(0)
    model = QuantLCMConfig.from_name("tiny", sonar_dim=D, n_codebooks=K, n_units=U).build()
    model.set_quantizer(rvq)
    return model


def test_quant_lcm_presets():
    model = QuantLCMConfig.from_name("tiny", sonar_dim=D).build()
    assert model.rvq.codebooks.shape == (4, 64, D)
    small = QuantLCMConfig.from_name("small").build(device="meta")
    assert small.param_count() == 235_182_144
    with pytest.raises(ValueError):
        model.set_quantizer(RVQ(D, 4, 16))


def test_depth_is_causal_over_codebooks(rvq, data):
    model = tiny_quant(rvq).eval()
    h = torch.randn(5, 32)
    codes = rvq.encode(data[:5])
    logits = model.code_logits(h, codes)  # (5, K, U)
    assert logits.shape == (5, K, U)
    for j in range(K):
        other = codes.clone()
        other[:, j:] = (other[:, j:] + 1) % U
        changed = model.code_logits(h, other)
        torch.testing.assert_close(changed[:, : j + 1], logits[:, : j + 1], atol=1e-5, rtol=0)
        if j + 1 < K:
            assert not torch.allclose(changed[:, j + 1 :], logits[:, j + 1 :])


def test_incremental_depth_equals_teacher_forced(rvq, data):
    model = tiny_quant(rvq).eval()
    h = torch.randn(5, 32)
    codes = rvq.encode(data[:5])
    full = model.code_logits(h, codes)
    cache = model.new_depth_cache()
    prefix = torch.zeros(5, D)
    for j in range(K):
        step = model.next_level_logits(h, prefix, cache)
        torch.testing.assert_close(step, full[:, j], atol=1e-5, rtol=0)
        prefix = prefix + rvq.codebooks[j, codes[:, j]]


def overfit(obj, batch: dict, steps: int = 120) -> tuple[float, object]:
    """Adam (lr 1e-2) on one batch: the first loss and the last step's output."""
    opt = torch.optim.Adam(obj.model.parameters(), lr=1e-2)
    first = obj.loss(batch).loss.item()
    for _ in range(steps):
        out = obj.loss(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return first, out


def test_quant_lcm_overfits_tiny_batch(rvq, data):
    model = tiny_quant(rvq)
    obj = QuantObjective(model)
    x = data[:12].reshape(2, 6, D)
    batch = {"x": x, "mask": torch.ones(2, 6, dtype=torch.bool)}
    first, out = overfit(obj, batch)
    assert first > 1.0 and out.loss.item() < 0.05
    gold = rvq.decode(rvq.encode(x))  # what the codes can express
    model.eval()
    out = obj.loss(batch)
    torch.testing.assert_close(out.pred[:, 1:], gold[:, 1:])  # teacher-forced argmax
    greedy = obj.predict_all(batch, temperature=0.0)  # free-running over the codebooks
    torch.testing.assert_close(greedy[:, 1:], gold[:, 1:])
    assert torch.all(greedy[:, 0] == 0)


def test_loss_ignores_non_targets(rvq, data):
    model = tiny_quant(rvq)
    obj = QuantObjective(model)
    x = data[:12].reshape(2, 6, D)
    mask = torch.ones(2, 6, dtype=torch.bool)
    loss_mask = torch.zeros_like(mask)
    loss_mask[:, 3] = True  # only concept 3 is a target
    base = obj.loss({"x": x, "mask": mask, "loss_mask": loss_mask})
    assert base.weight.sum() == 2 and base.weight[:, 3].all()
    x2 = x.clone()
    x2[:, 4:] = torch.randn_like(x2[:, 4:])  # later concepts are neither context nor target
    other = obj.loss({"x": x2, "mask": mask, "loss_mask": loss_mask})
    torch.testing.assert_close(base.loss, other.loss)


def test_predict_next_sums_sampled_codes(rvq, data):
    model = tiny_quant(rvq).eval()
    obj = QuantObjective(model, temperature=1.0, top_p=0.9)
    x = data[:12].reshape(2, 6, D)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    codes = obj.predict_next_codes(x, mask, torch.Generator().manual_seed(3))
    nxt = obj.predict_next(x, mask, torch.Generator().manual_seed(3))
    assert codes.shape == (2, K)
    torch.testing.assert_close(nxt, rvq.decode(codes))
    # Row 1 depends on its first 3 concepts only; greedy is deterministic.
    g1 = obj.predict_next_codes(x, mask, temperature=0.0)
    g2 = obj.predict_next_codes(x[:, :3], mask[:, :3], temperature=0.0)
    assert torch.equal(g1[1], g2[1])


# ---- lcm fit-rvq and the Lightning module -----------------------------------------------------
def test_fit_rvq_command_reports_heldout_error_and_feeds_the_module(tmp_path):
    import json

    from helpers_train import make_shards

    from lcm.cli import run
    from lcm.train import ConceptDataModule
    from lcm.train.module import QuantModule

    shards = make_shards(tmp_path / "data", 40, seed=3)
    out = tmp_path / "rvq.pt"
    report = run(
        ["fit-rvq", f"--data_dir={shards}", f"--output={out}", "--n_codebooks=2",
         "--n_units=16", "--val_fraction=0.25"]
    )  # fmt: skip
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(report))
    assert report["train_concepts"] > 0 and report["heldout_concepts"] > 0
    train, held = report["relative_error"]["train"], report["relative_error"]["heldout"]
    assert list(train) == [1, 2] and train[2] <= train[1] < 1.0 and held[2] <= held[1]

    # The same numbers by hand: held-out documents of the same split, normalized.
    rvq = RVQ.load(out)
    dm = ConceptDataModule(str(shards), val_fraction=0.25, max_seq_len=2, max_concepts_per_batch=2)
    held_x = dm.sample_concepts("val", 20_000, seed=1)
    assert rvq.reconstruction_error(held_x)["relative"] == pytest.approx(held[2], rel=1e-6)

    arch = QuantLCMConfig.from_name("tiny", sonar_dim=16, n_codebooks=2, n_units=16)
    module = QuantModule(arch=arch, rvq_path=str(out))
    assert torch.equal(module.rvq.codebooks, rvq.codebooks) and bool(module.rvq.fitted)
    with pytest.raises(ValueError, match="do not match"):
        QuantModule(arch=QuantLCMConfig.from_name("tiny", sonar_dim=16), rvq_path=str(out))
