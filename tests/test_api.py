"""The Python API and `lcm summarize|generate`, driven as a user would."""

from __future__ import annotations

import json

import pytest
import torch
from helpers_train import HashCodec, make_shards

from encoders import UnknownLanguageError
from lcm.api import ConceptModel
from lcm.cli import run


def _fit(shards, root, recipe, steps=4):
    run(
        [
            "fit",
            "--config", "configs/trainer/default.yaml",
            "--config", recipe,
            f"--data.data_dir={shards}",
            f"--trainer.default_root_dir={root}",
            "--data.val_fraction=0.2",
            f"--trainer.max_steps={steps}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )  # fmt: skip
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def sft_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    shards = make_shards(root / "data", n_docs=30, summaries=True)
    return _fit(shards, root / "run", "configs/two_tower/tiny_sft.yaml")


@pytest.fixture(scope="module")
def model(sft_ckpt):
    return ConceptModel.load(sft_ckpt, codec=HashCodec())


def test_summarize_text_lists_and_presplit(model):
    assert model.mode == "summarize"
    one = model.summarize("Token 3 is here. Token 16 is here.", max_new_concepts=2, steps=3)
    assert isinstance(one, str) and one.startswith("Token")
    many = model.summarize(
        ["Token 3 is here.", ["Token 5 is here.", "Token 1 is here."]],
        target_lang="fra_Latn",
        max_new_concepts=2,
        steps=3,
    )
    assert isinstance(many, list) and len(many) == 2 and all(m.startswith("Token") for m in many)


def test_generation_is_seeded_and_cache_agnostic(model):
    kw = dict(max_new_concepts=3, steps=3, repeat_threshold=2.0)
    a = model.predict_concepts(["Token 3 is here. Token 16 is here."], "eng_Latn", None, **{})
    from lcm.api import Settings

    s1 = Settings(seed=1, **kw)
    x = model.predict_concepts(["Token 3 is here."], "eng_Latn", s1)
    y = model.predict_concepts(["Token 3 is here."], "eng_Latn", s1)
    z = model.predict_concepts(
        ["Token 3 is here."], "eng_Latn", Settings(seed=1, use_cache=False, **kw)
    )
    assert torch.equal(x.concepts[0], y.concepts[0])
    torch.testing.assert_close(x.concepts[0], z.concepts[0], atol=1e-4, rtol=1e-4)
    assert a.stop_reasons[0] in ("eot", "repetition", "max_length")


def test_bad_inputs_have_clear_errors(model, sft_ckpt):
    with pytest.raises(UnknownLanguageError, match="fra_Latn"):
        model.summarize("Token 3 is here.", source_lang="fr_Latn")
    with pytest.raises(UnknownLanguageError, match="target_lang"):
        model.summarize("Token 3 is here.", target_lang="xx_Yyyy")
    with pytest.raises(ValueError, match="empty document"):
        model.summarize("   ")
    with pytest.raises(ValueError, match="no documents"):
        model.summarize([])
    with pytest.raises(TypeError, match="unknown generation settings: beam"):
        model.summarize("Token 3 is here.", beam=4)

    class Wide(HashCodec):
        dim = 32

    with pytest.raises(ValueError, match="16-d but the codec"):
        ConceptModel.load(sft_ckpt, codec=Wide())


def test_codec_is_rebuilt_from_the_shard_manifest(tiny_sonar, tiny_codec, tmp_path):
    """A checkpoint trained on tiny-SONAR shards loads its codec by card name on its own."""
    import random

    from conftest import make_sentence

    from lcm.data.prepare import prepare

    rng = random.Random(0)
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(
            json.dumps(
                {
                    "id": i,
                    "text": " ".join(make_sentence(rng) for _ in range(4)),
                    "summary": make_sentence(rng),
                }
            )
            + "\n"
            for i in range(24)
        )
    )
    prepare(
        str(docs),
        str(tmp_path / "shards"),
        codec=tiny_codec,
        target_fields=["summary"],
        end_of_text="End of text.",
        progress=False,
    )
    ckpt = _fit(tmp_path / "shards", tmp_path / "run", "configs/base_lcm/tiny_sft.yaml", steps=3)
    model = ConceptModel.load(ckpt)  # no codec given: rebuilt from manifest.json
    assert model.codec.codec_id == tiny_codec.codec_id
    assert model.end_of_text == "End of text."
    out = model.summarize(
        "The cat sat on the mat. A red bird sings.", target_lang="fra_Latn", max_new_concepts=2
    )
    assert isinstance(out, str)


def test_cli_summarize_jsonl_is_resumable(sft_ckpt, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [
        {"id": "a", "text": "Token 3 is here. Token 16 is here."},
        {"id": "b", "text": "Token 5 is here.", "lang": "fra_Latn"},
        {"id": "c", "text": "Token 1 is here.", "lang": "de_DE"},  # bad code: an error row
        {"id": "d", "text": "  "},  # empty: an error row
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    out = tmp_path / "out.jsonl"
    args = [
        "summarize", f"--checkpoint={sft_ckpt}", f"--inputs={src}", f"--output={out}",
        "--codec=helpers_train.HashCodec", "--settings.steps=3", "--settings.max_new_concepts=2",
        "--progress=false",
    ]  # fmt: skip
    first = run(args)
    assert first == {"documents": 3, "already_done": 0, "written": 3, "errors": 1}
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))  # one more row arrives
    second = run(args)
    assert second == {"documents": 4, "already_done": 3, "written": 1, "errors": 1}
    got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(got) == ["a", "b", "c", "d"]  # each id once
    assert got["a"]["output"].startswith("Token") and got["a"]["target_lang"] == "eng_Latn"
    assert got["b"]["target_lang"] == "fra_Latn"
    assert "unknown language code 'de_DE'" in got["c"]["error"]
    assert "empty" in got["d"]["error"]


def test_refiner_and_quant_checkpoints_generate_through_the_api(tmp_path):
    shards = make_shards(tmp_path / "data", n_docs=30)
    doc = "Token 3 is here. Token 16 is here."
    ref = ConceptModel.load(_fit(shards, tmp_path / "r", "configs/refiner/tiny.yaml"), HashCodec())
    out = ref.predict_concepts([doc, "Token 5 is here."], "eng_Latn", max_new_concepts=3,
                               repeat_threshold=2.0, max_iterations=12)  # fmt: skip
    for concepts, steps in zip(out.concepts, out.extras["exit_step"]):
        assert len(concepts) == 3 and len(steps) == 3
        assert ((steps >= 3) & (steps <= 12)).all()  # patience 2: the earliest exit is step 3
    fixed = ref.predict_concepts([doc], "eng_Latn", max_new_concepts=2, num_iterations=5)
    assert fixed.extras["exit_step"][0].tolist() == [5] * len(fixed.concepts[0])
    assert ref.continue_text(doc, max_new_concepts=2, warm_start=True).startswith("Token")

    quant = ConceptModel.load(
        _fit(shards, tmp_path / "q", "configs/quant_lcm/tiny.yaml"), HashCodec()
    )
    a = quant.predict_concepts([doc], "eng_Latn", max_new_concepts=2, temperature=0.0, seed=1)
    b = quant.predict_concepts([doc], "eng_Latn", max_new_concepts=2, temperature=0.0, seed=2)
    assert torch.equal(a.concepts[0], b.concepts[0])  # greedy: the seed does not matter
    rvq = quant.module.rvq
    raw = quant.module.normalizer.denormalize(rvq.decode(a.extras["codes"][0]))
    torch.testing.assert_close(a.concepts[0], raw, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="unknown generation settings: temprature"):
        quant.summarize(doc, temprature=0.0)
