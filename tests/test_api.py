"""The Python API and `lcm summarize|generate`, driven as a user would."""

from __future__ import annotations

import json
from pathlib import Path

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
    one = model.summarize(
        "Token 3 is here. Token 16 is here.", max_new_concepts=2, num_inference_steps=3
    )
    assert isinstance(one, str) and one.startswith("Token")
    many = model.summarize(
        ["Token 3 is here.", ["Token 5 is here.", "Token 1 is here."]],
        target_lang="fra_Latn",
        max_new_concepts=2,
        num_inference_steps=3,
    )
    assert isinstance(many, list) and len(many) == 2 and all(m.startswith("Token") for m in many)


def test_generation_is_seeded_and_cache_agnostic(model):
    kw = dict(max_new_concepts=3, num_inference_steps=3, repeat_threshold=2.0)
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


def test_a_documents_output_does_not_depend_on_its_batch(model):
    from lcm.api import Settings

    s = Settings(seed=3, max_new_concepts=3, num_inference_steps=3, repeat_threshold=2.0)
    doc = "Token 3 is here. Token 16 is here."
    alone = model.predict_concepts([doc], "eng_Latn", s).concepts[0]
    batch = ["Token 5 is here.", doc, "Token 1 is here. Token 10 is here. Token 14 is here."]
    inside = model.predict_concepts(batch, "eng_Latn", s)
    torch.testing.assert_close(inside.concepts[1], alone, atol=1e-5, rtol=1e-5)
    # the seed still matters, and so does the document
    other = model.predict_concepts([doc], "eng_Latn", Settings(**{**s.__dict__, "seed": 4}))
    assert not torch.allclose(other.concepts[0], alone)
    assert not torch.allclose(inside.concepts[0][:1], inside.concepts[2][:1])


def test_bad_inputs_have_clear_errors(model, sft_ckpt):
    with pytest.raises(UnknownLanguageError, match="fra_Latn"):
        model.summarize("Token 3 is here.", source_lang="fr_Latn")
    with pytest.raises(UnknownLanguageError, match="target_lang"):
        model.summarize("Token 3 is here.", target_lang="xx_Yyyy")
    with pytest.raises(ValueError, match="document 0 is empty"):
        model.summarize("   ")
    with pytest.raises(ValueError, match="no documents"):
        model.summarize([])
    with pytest.raises(TypeError, match="unknown generation settings: beam"):
        model.summarize("Token 3 is here.", beam=4)

    class Wide(HashCodec):
        dim = 32

    with pytest.raises(ValueError, match="16-d but the codec"):
        ConceptModel.load(sft_ckpt, codec=Wide())


def test_each_bad_document_and_setting_is_named(model):
    good = "Token 3 is here."
    with pytest.raises(TypeError, match="no documents: got None"):
        model.summarize(None)
    with pytest.raises(TypeError, match="document 1 is NoneType"):
        model.summarize([good, None])
    with pytest.raises(ValueError, match="document 1 is empty"):
        model.summarize([good, ""])
    with pytest.raises(TypeError, match="document 0: sentence 1 is int"):
        model.summarize([["A sentence.", 3]])
    # the source language is named as the source, even when the target defaults to it
    with pytest.raises(UnknownLanguageError, match=r"\(source_lang\)"):
        model.summarize(good, source_lang="xx_Yyyy", target_lang="eng_Latn")
    with pytest.raises(UnknownLanguageError, match=r"\(source_lang\)"):
        model.summarize(good, source_lang="xx_Yyyy")
    with pytest.raises(ValueError, match="max_new_concepts must be >= 1, got -1"):
        model.summarize(good, max_new_concepts=-1)
    with pytest.raises(ValueError, match="guidance_rescale must be >= 0.0 and <= 1.0"):
        model.summarize(good, guidance_rescale=1.5)
    with pytest.raises(ValueError, match="top_p must be > 0.0 and <= 1.0"):
        model.summarize(good, top_p=0.0)
    with pytest.raises(TypeError, match="num_inference_steps must be an integer"):
        model.summarize(good, num_inference_steps=2.5)


def test_a_codec_of_the_same_width_but_another_id_is_refused(sft_ckpt):
    class Other(HashCodec):
        codec_id = "test-hash-codec-other"

    with pytest.raises(
        ValueError, match="was trained with codec 'test-hash-codec-16'.*allow_codec_mismatch"
    ):
        ConceptModel.load(sft_ckpt, codec=Other())
    assert ConceptModel.load(sft_ckpt, codec=Other(), allow_codec_mismatch=True).codec.codec_id == (
        "test-hash-codec-other"
    )


def test_checkpoint_sampling_settings_reach_the_api_and_the_cli(tmp_path):
    """A recipe's diffusion sampling settings are the generation defaults (the bug of issue 12:
    they used to be replaced by the API's own defaults); an explicit setting still wins."""
    shards = make_shards(tmp_path / "data", n_docs=30, summaries=True)
    root = tmp_path / "run"
    run(
        ["fit", "--config", "configs/trainer/default.yaml", "--config",
         "configs/two_tower/tiny_sft.yaml", f"--data.data_dir={shards}",
         f"--trainer.default_root_dir={root}", "--data.val_fraction=0.2", "--trainer.max_steps=3",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
         "--model.init_args.sampling.num_inference_steps=3",
         "--model.init_args.sampling.guidance_scale=1.5",
         "--model.init_args.sampling.init_noise_scale=0.9"]
    )  # fmt: skip
    ckpt = root / "checkpoints" / "last.ckpt"
    model = ConceptModel.load(ckpt, codec=HashCodec())
    from lcm.api import Settings, generation_options
    from lcm.generation import make_step

    step = make_step(model.module.eval_objective(), **generation_options(Settings()))
    assert (step.sampling.num_inference_steps, step.sampling.guidance_scale) == (3, 1.5)
    assert step.sampling.init_noise_scale == 0.9
    over = make_step(
        model.module.eval_objective(), **generation_options(Settings(guidance_scale=2))
    )
    assert (over.sampling.num_inference_steps, over.sampling.guidance_scale) == (3, 2.0)
    fast = make_step(
        model.module.eval_objective(), **generation_options(Settings(solver="dpmsolver++"))
    )
    assert fast.sampling.solver == "dpmsolver++" and step.sampling.solver == "ddim"
    on = generation_options(Settings(compile=True))
    compiled = make_step(model.module.eval_objective(), **on)
    assert compiled.compile and not step.compile  # compiled on first use, not here
    with pytest.raises(ValueError, match="solver must be"):
        Settings(solver="euler")

    doc, kw = ["Token 3 is here. Token 16 is here."], dict(max_new_concepts=2, seed=4)
    default = model.predict_concepts(doc, "eng_Latn", **kw).concepts[0]
    same = model.predict_concepts(
        doc, "eng_Latn", num_inference_steps=3, guidance_scale=1.5, init_noise_scale=0.9, **kw
    ).concepts[0]
    other = model.predict_concepts(doc, "eng_Latn", num_inference_steps=40, **kw).concepts[0]
    assert torch.equal(default, same)
    assert not torch.equal(default[:1], other[:1])

    # `lcm summarize` without sampling options writes what the API gives with the recipe's.
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"id": "a", "text": doc[0]}) + "\n")
    run(["summarize", f"--checkpoint={ckpt}", f"--inputs={src}", f"--output={out}",
         "--codec=helpers_train.HashCodec", "--settings.max_new_concepts=2", "--settings.seed=4",
         "--progress=false"])  # fmt: skip
    row = json.loads(out.read_text())
    assert row["output"] == model.summarize(doc[0], max_new_concepts=2, seed=4)
    out2 = tmp_path / "out2.jsonl"
    run(["summarize", f"--checkpoint={ckpt}", f"--inputs={src}", f"--output={out2}",
         "--codec=helpers_train.HashCodec", "--settings.max_new_concepts=2", "--settings.seed=4",
         "--settings.num_inference_steps=3", "--settings.guidance_scale=1.5",
         "--settings.init_noise_scale=0.9", "--progress=false"])  # fmt: skip
    assert json.loads(out2.read_text())["output"] == row["output"]


def test_checkpoint_loads_from_another_folder_without_its_shards(sft_ckpt, tmp_path, monkeypatch):
    """The checkpoint carries codec id, end-of-text and mode, and records its shards by absolute
    path; the training folder is not needed for a non-retrieval codec."""
    from lcm.train.module import read_checkpoint

    info = read_checkpoint(sft_ckpt)["lcm_data"]
    assert info["codec"] == HashCodec.codec_id and info["mode"] == "summarize"
    assert info["target_field"] == "summary" and info["data_dir"].startswith("/")
    copy = tmp_path / "elsewhere" / "model.ckpt"
    copy.parent.mkdir()
    copy.write_bytes(sft_ckpt.read_bytes())
    monkeypatch.chdir(tmp_path / "elsewhere")
    model = ConceptModel.load("model.ckpt", codec=HashCodec())
    assert model.mode == "summarize" and model.summarize("Token 3 is here.", max_new_concepts=1)


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
        "--codec=helpers_train.HashCodec", "--settings.num_inference_steps=3",
        "--settings.max_new_concepts=2",
        "--progress=false",
    ]  # fmt: skip
    first = run(args)
    assert first == {"documents": 3, "already_done": 0, "written": 3, "errors": 1}
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))  # one more row arrives
    second = run(args)  # the failed row c is retried (and fails again), d is new
    assert second == {"documents": 4, "already_done": 2, "written": 2, "errors": 2}
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    got = {r["id"]: r for r in lines}
    assert sorted(got) == ["a", "b", "c", "d"] and len(lines) == 4  # each id once
    assert got["a"]["output"].startswith("Token") and got["a"]["target_lang"] == "eng_Latn"
    assert got["b"]["target_lang"] == "fra_Latn"
    assert "unknown language code 'de_DE'" in got["c"]["error"]
    assert "empty" in got["d"]["error"]
    # The user corrects the inputs: the rerun replaces the error rows and keeps the good ones.
    rows[2]["lang"], rows[3]["text"] = "fra_Latn", "Token 2 is here."
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    third = run(args)
    assert third == {"documents": 4, "already_done": 2, "written": 2, "errors": 0}
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == ["a", "b", "c", "d"]
    assert all("output" in r for r in lines)
    # Other settings never add to a file made with these.
    with pytest.raises(ValueError, match="made with other settings \\(settings differ"):
        run([*args[:-1], "--settings.max_new_concepts=1", "--progress=false"])


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
    # expected decoding: a point prediction (no draw, the seed does not matter); at
    # temperature 0 its weights are one-hot, which is greedy decoding
    e1, e2 = (
        quant.predict_concepts([doc], "eng_Latn", max_new_concepts=2, decoding="expected",
                               temperature=1.0, top_p=1.0, repeat_threshold=2.0, seed=s)
        for s in (1, 2)
    )  # fmt: skip
    assert torch.equal(e1.concepts[0], e2.concepts[0]) and len(e1.concepts[0]) == 2
    e0 = quant.predict_concepts([doc], "eng_Latn", max_new_concepts=2, decoding="expected",
                                temperature=0.0)  # fmt: skip
    torch.testing.assert_close(e0.concepts[0], a.concepts[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="unknown generation settings: temprature"):
        quant.summarize(doc, temprature=0.0)


def test_a_sentence_decoded_twice_in_a_row_ends_the_document(model, monkeypatch):
    """A retrieval decoder can map two different concepts to one bank sentence: the text must
    not repeat it, and the output says the document stopped on a repetition."""
    from lcm.generation import GenerationOutput

    out = GenerationOutput(
        concepts=[torch.randn(3, 16), torch.randn(2, 16)],
        stop_reasons=["max_length", "max_length"],
        extras={"exit_step": [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]},
    )
    decoded = iter([["A cat.", "A cat.", "A dog."], ["One.", "Two."]])
    monkeypatch.setattr(model.codec, "decode", lambda vectors, lang: next(decoded))
    assert model._render(out, "eng_Latn") == ["A cat.", "One. Two."]
    assert out.stop_reasons == ["repetition", "max_length"]
    assert len(out.concepts[0]) == 1 and out.extras["exit_step"][0].tolist() == [1]
    assert len(out.concepts[1]) == 2


def test_the_retrieval_bank_holds_every_target_sentence_once(sft_ckpt):
    """Loading a summarizer with a retrieval codec fills its bank from the training shards'
    summary field: every distinct summary sentence once, in its document's language."""
    import pyarrow.parquet as pq

    from encoders.retrieval import RetrievalBank
    from lcm.train.module import read_checkpoint

    class Retrieving(HashCodec):
        def __init__(self):
            super().__init__()
            self.bank = RetrievalBank(self.dim)

        def decode(self, vectors, lang):
            return [found[0] for found in self.bank.search(vectors, lang)[1]]

    model = ConceptModel.load(sft_ckpt, codec=Retrieving())
    shards = read_checkpoint(sft_ckpt)["lcm_data"]["data_dir"]
    want: dict[str, set[str]] = {}
    for path in sorted((Path(shards) / "shards").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            want.setdefault(row["lang"], set()).update(
                s for s in row["summary_sentences"] if s != model.end_of_text
            )
    bank = model.codec.bank
    assert {k: set(bank.sentences(k)) for k in bank.langs()} == want
    assert len(bank) == sum(len(v) for v in want.values())
    lang, sents = next(iter(want.items()))
    s = sorted(sents)[0]
    assert model.codec.decode(HashCodec().encode([s], lang), lang) == [s]


def test_a_second_load_opens_the_saved_bank(sft_ckpt):
    """The first retrieval load saves the bank beside the shards; the next one memory-maps it
    (no rebuild) and decodes the same sentences."""
    from encoders.retrieval import ArrowTexts, RetrievalBank
    from lcm.data import bank as banks

    class Retrieving(HashCodec):
        def __init__(self):
            super().__init__()
            self.bank = RetrievalBank(self.dim)

        def decode(self, vectors, lang):
            return [found[0] for found in self.bank.search(vectors, lang)[1]]

    first = ConceptModel.load(sft_ckpt, codec=Retrieving())
    builds = banks.BUILDS
    second = ConceptModel.load(sft_ckpt, codec=Retrieving())
    assert banks.BUILDS == builds
    assert isinstance(second.codec.bank.sentences("eng_Latn"), ArrowTexts)
    doc = "Token 3 is here. Token 16 is here. Token 9 is here."
    assert second.summarize(doc, max_new_concepts=3) == first.summarize(doc, max_new_concepts=3)


def test_summarize_prompt_ends_with_end_of_text_then_separator(model, monkeypatch):
    # Training sources end with the end-of-text concept before the separator (shards prepared
    # with --end_of_text); the prompt must too, once, even when the document already ends so.
    import lcm.api as api

    seen = []
    real = api.generate

    def spy(step, prompts, *args, **kwargs):
        seen.append(prompts)
        return real(step, prompts, *args, **kwargs)

    monkeypatch.setattr(api, "generate", spy)
    monkeypatch.setattr(model, "end_of_text", "End of text.")
    doc = ["Token 3 is here.", "Token 4 follows."]
    model.predict_concepts([doc, [*doc, "End of text."]], "eng_Latn", max_new_concepts=1)
    a, b = seen[0]
    enc = model.codec.encode([*doc, "End of text."], "eng_Latn")
    sep = model.module.normalizer.denormalize(model.module.separator)
    assert a.shape[0] == 4
    torch.testing.assert_close(a[:3], enc)
    torch.testing.assert_close(a[3], sep)
    torch.testing.assert_close(a, b)
    monkeypatch.setattr(model, "end_of_text", None)  # shards without an end-of-text sentence
    model.predict_concepts([doc], "eng_Latn", max_new_concepts=1)
    assert seen[1][0].shape[0] == 3
