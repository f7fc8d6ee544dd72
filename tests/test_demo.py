"""The main job's score table (lcm.demo._rouge_table): every floor and the ceiling decode through
the model's own bank and codec, so only the query differs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from encoders.base import SentenceCodec
from encoders.retrieval import RetrievalBank, RetrievalDecoding
from lcm.demo import (
    _rouge_table,
    leave_out_references,
    load_guarded,
    read_held_out,
    sample_documents,
    set_decoding,
)
from lcm.splitting import SentenceSplitter

VECTORS = {  # sentence -> concept: 'alpha' sentences point along e0, 'beta' ones along e1
    "alpha tool": [1.0, 0.0, 0.0],
    "beta library": [0.0, 1.0, 0.0],
    "Alpha things here.": [1.0, 0.0, 0.1],
    "Beta stuff there.": [0.0, 1.0, 0.1],
    "Beta more.": [0.0, 1.0, -0.1],
    "gamma kit one": [0.0, 0.95, 0.31],
}


class TableCodec(SentenceCodec):
    codec_id = "test-table-codec"
    dim = 3
    langs = ("eng_Latn",)

    def __init__(self) -> None:
        super().__init__()
        self.decoding = RetrievalDecoding()
        self.decoded_under: list[RetrievalDecoding] = []
        self.bank = RetrievalBank(self.dim)
        synopses = ["alpha tool", "beta library"]
        self.bank.add(synopses, self.encode(synopses, "eng_Latn"), "eng_Latn")

    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        return torch.tensor([VECTORS[s] for s in sentences])

    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        self.decoded_under.append(self.decoding)
        return self.bank.decode(vectors, lang, self.decoding)


def test_floors_and_ceiling_decode_their_own_query_through_the_models_bank():
    test = [{"text": "Alpha things here. Beta stuff there. Beta more.", "summary": "alpha tool"}]
    model = SimpleNamespace(splitter=SentenceSplitter(256))
    scores = _rouge_table(test, ["beta library"], TableCodec(), model)
    assert scores["model"] == 0.0  # no word in common with the reference
    # the mean of (alpha, beta, beta) is nearest 'beta library'; the first sentence 'alpha tool'
    assert scores["nearest synopsis to mean concept"] == 0.0
    assert scores["nearest synopsis to first-sentence concept"] == 100.0
    assert scores["decoder ceiling (reference concept retrieved)"] == 100.0
    # lead-1 'Alpha things here.' vs 'alpha tool': LCS 1, precision 1/3, recall 1/2 -> F1 0.4
    assert scores["lead-1"] == 40.0 and scores["documents"] == 1


def test_floors_and_ceiling_decode_under_the_codecs_decoding_and_the_table_records_it():
    """Only the query differs between the model and its floors: a minimum-Bayes-risk decoding
    set on the codec (``--decoding``) decodes the floors and the ceiling too."""
    codec = TableCodec()
    # two near-beta synopses sharing two words: with flat weights (t=1) their consensus beats
    # 'beta library' for a query along e1 (expected ROUGE-L .55 against .35)
    near = ["gamma kit one", "gamma kit two"]
    codec.bank.add(near, torch.tensor([VECTORS[near[0]], [0.0, 0.95, -0.31]]), "eng_Latn")
    test = [{"text": "Beta stuff there.", "summary": "gamma kit one"}]  # query (0, 1, .1)
    model = SimpleNamespace(splitter=SentenceSplitter(256))
    nearest = _rouge_table(test, ["beta library"], codec, model)
    assert nearest["nearest synopsis to mean concept"] == 0.0  # 'beta library'
    assert nearest["decoding"] == {"rule": "nearest", "k": 1, "temperature": 0.05}
    mbr = RetrievalDecoding("mbr_rouge", k=3, temperature=1.0)
    set_decoding(codec, mbr)
    codec.decoded_under.clear()
    scores = _rouge_table(test, ["beta library"], codec, model)
    assert codec.decoded_under and set(codec.decoded_under) == {mbr}
    assert scores["nearest synopsis to mean concept"] == 100.0  # 'gamma kit one'
    assert scores["nearest synopsis to first-sentence concept"] == 100.0
    assert scores["decoder ceiling (reference concept retrieved)"] == 100.0
    assert scores["model"] == 0.0 and scores["model / mean-concept floor"] == 0.0
    assert scores["decoding"] == {"rule": "mbr_rouge", "k": 3, "temperature": 1.0}


def test_a_codec_with_its_own_decoder_takes_only_the_default_decoding():
    own = SimpleNamespace(codec_id="own-decoder")  # no `decoding` attribute, like SONAR
    set_decoding(own, RetrievalDecoding())
    with pytest.raises(ValueError, match="applies to a retrieval codec; own-decoder decodes"):
        set_decoding(own, RetrievalDecoding("mbr_cosine", k=5))


def test_the_main_jobs_command_line_takes_a_typed_decoding():
    from jsonargparse import ArgumentError, ArgumentParser

    from lcm.demo import main

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(main)
    assert parser.instantiate(parser.parse_args([])).decoding == RetrievalDecoding()
    args = ["--decoding.rule", "mbr_cosine", "--decoding.k", "20", "--decoding.temperature", "0.02"]
    chosen = parser.instantiate(parser.parse_args(args)).decoding
    assert chosen == RetrievalDecoding("mbr_cosine", k=20, temperature=0.02)
    with pytest.raises(ArgumentError, match="decoding.rule"):
        parser.parse_args(["--decoding.rule", "beam"])
    with pytest.raises(ValueError, match="rule 'nearest' retrieves one sentence"):
        parser.instantiate(parser.parse_args(["--decoding.k", "3"]))


def test_the_table_gives_the_models_ratio_to_the_mean_concept_floor_with_an_interval():
    docs = [
        {"text": "Beta stuff there. Beta more.", "summary": "beta library"},  # floor 100
        {"text": "Alpha things here.", "summary": "alpha tool"},  # floor 100
    ]
    model = SimpleNamespace(splitter=SentenceSplitter(256))
    scores = _rouge_table(docs, ["beta library", "beta library"], TableCodec(), model)
    assert scores["model"] == 50.0 and scores["nearest synopsis to mean concept"] == 100.0
    assert scores["model / mean-concept floor"] == 0.5
    # two documents: a resample holds both (0.5), only the first (1.0) or only the second (0.0)
    assert scores["model / mean-concept floor, 95% interval"] == [0.0, 1.0]


def test_ratio_interval_is_paired_and_checks_its_input():
    from eval.report import ratio_interval

    model = [0.2, 0.3, 0.25, 0.4, 0.1, 0.3]
    low, high = ratio_interval(model, [v / 1.5 for v in model])  # the same documents, 1.5x
    assert low == pytest.approx(1.5) and high == pytest.approx(1.5)  # paired: no spread
    low, high = ratio_interval(model, [0.2] * 6)
    assert low < sum(model) / 6 / 0.2 < high
    assert ratio_interval([0.1], [0.2]) is None and ratio_interval([0.1, 0.2], [0, 0]) is None
    with pytest.raises(ValueError, match="differ in length: 2 and 3"):
        ratio_interval([0.1, 0.2], [0.1, 0.2, 0.3])


def test_held_out_references_are_left_out_of_the_bank_before_scoring():
    """A training synopsis equal to a held-out reference leaves the bank, so neither the model
    nor a floor can score by returning the very reference; the rest of the bank stays."""
    codec = TableCodec()
    held_out = [
        {"text": "Alpha things here.", "summary": "alpha tool "},  # stripped before matching
        {"text": "Beta more.", "summary": "gamma, not in the bank"},
    ]
    assert leave_out_references(codec, held_out) == 1
    assert list(codec.bank.sentences("eng_Latn")) == ["beta library"]
    assert leave_out_references(codec, held_out) == 0  # nothing left to remove
    model = SimpleNamespace(splitter=SentenceSplitter(256))
    doc = {"text": "Alpha things here.", "summary": "alpha tool"}
    scores = _rouge_table([doc], ["beta library"], codec, model)
    # the reference's own concept can no longer retrieve it: the ceiling falls from 100 to 0
    assert scores["decoder ceiling (reference concept retrieved)"] == 0.0
    assert scores["nearest synopsis to first-sentence concept"] == 0.0


def test_a_job_is_reopened_for_rescoring_with_its_guard(tmp_path, monkeypatch):
    """``load_guarded`` (the bench scripts' way back into a job folder) reads both held-out
    files in file order, loads the checkpoint on the codec with an embedding cache, and leaves
    the held-out references out of the bank as the job does."""
    import json

    import lcm.api

    (tmp_path / "data").mkdir()
    rows = {
        "valid": [{"id": "b", "text": "Beta more.", "summary": "beta library"}],
        "test": [
            {"id": "z", "text": "Alpha things here.", "summary": "gamma kit one"},
            {"id": "a", "text": "Beta stuff there.", "summary": "delta"},
        ],
    }
    for split, docs in rows.items():
        path = tmp_path / "data" / f"debian_descriptions.en.{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in docs))
    assert read_held_out(tmp_path) == rows
    loaded = []
    monkeypatch.setattr(
        lcm.api.ConceptModel, "load", staticmethod(lambda ckpt, codec: loaded.append(ckpt) or codec)
    )
    codec = TableCodec()
    model, held_out, left_out = load_guarded(tmp_path, tmp_path / "last.ckpt", codec)
    assert model is codec and loaded == [tmp_path / "last.ckpt"] and codec.cache is not None
    assert held_out == rows and left_out == 1  # "beta library" was a validation reference
    assert list(codec.bank.sentences("eng_Latn")) == ["alpha tool"]
    kept = TableCodec()  # --references_in_bank: no guard, the bank stays whole
    assert load_guarded(tmp_path, tmp_path / "last.ckpt", kept, guard=False)[2] is None
    assert list(kept.bank.sentences("eng_Latn")) == ["alpha tool", "beta library"]
    own = TableCodec()
    del own.bank  # a codec with its own decoder: nothing to guard
    assert load_guarded(tmp_path, tmp_path / "last.ckpt", own)[2] is None
    with pytest.raises(FileNotFoundError, match="debian_descriptions.en.valid.jsonl"):
        read_held_out(tmp_path / "elsewhere")


def test_the_scored_documents_are_a_hashed_sample_not_the_alphabetical_head():
    # 40 documents named like a package family first (as the Debian splits are), then others
    docs = [{"id": f"binutils-{i:02d}"} for i in range(40)] + [
        {"id": f"pkg{i:02d}"} for i in range(40)
    ]
    sample = sample_documents(docs, 20)
    ids = [r["id"] for r in sample]
    assert len(set(ids)) == 20 and set(ids) <= {r["id"] for r in docs}
    assert ids != [r["id"] for r in docs[:20]]
    # a hash sample mixes both halves: P(all 20 from one half) is about 1e-11
    assert 0 < sum(i.startswith("binutils-") for i in ids) < 20
    # stable: independent of the file's order; the seed draws another sample
    assert sample_documents(list(reversed(docs)), 20) == sample
    assert [r["id"] for r in sample_documents(docs, 20, seed=1)] != ids
    # nested: a larger n extends the smaller sample; n >= len keeps every document
    assert sample_documents(docs, 30)[:20] == sample
    assert len(sample_documents(docs, 1000)) == 80 and sample_documents(docs, 0) == []


def test_the_sample_names_a_bad_document():
    with pytest.raises(ValueError, match="document 1 has no 'id'"):
        sample_documents([{"id": "a"}, {"text": "x"}], 1)
    with pytest.raises(ValueError, match="document 1: id 'a' is not unique"):
        sample_documents([{"id": "a"}, {"id": "a"}], 1)
    with pytest.raises(ValueError, match="n must be >= 0"):
        sample_documents([{"id": "a"}], -1)


@pytest.mark.parametrize(
    "recipe, residual, steps",
    [
        ("configs/base_lcm/sft_source_lead.yaml", "source_lead", 1200),
        ("configs/base_lcm/sft_source_mean.yaml", "source_mean", 800),
    ],
)
def test_the_summarization_recipes_predict_a_correction_to_their_source_base(
    tmp_path, recipe, residual, steps
):
    """configs/base_lcm/sft_source_lead.yaml (the main job's default recipe, with the recipe's
    own 1,200 steps; MSE plus InfoNCE at weight 1.0) trains a Base-LCM whose summary concept is
    the network's output plus the midpoint of the mean of the description's concepts and its
    first concept; the earlier sft_source_mean.yaml adds the mean alone (end-of-text and
    separator concepts left out, in normalized space)."""
    import inspect

    import yaml
    from helpers_train import make_shards

    from lcm.cli import run
    from lcm.demo import main
    from lcm.train.module import load_module

    params = inspect.signature(main).parameters
    assert params["recipe"].default == "configs/base_lcm/sft_source_lead.yaml"
    assert params["train_steps"].default is None  # the recipe's own max_steps
    assert yaml.safe_load(open(recipe))["trainer"]["max_steps"] == steps
    shards = make_shards(tmp_path / "data", n_docs=30, summaries=True)
    root = tmp_path / "run"
    run(
        ["fit", "--config", "configs/trainer/default.yaml", "--config", recipe,
         f"--data.data_dir={shards}", f"--trainer.default_root_dir={root}",
         "--data.val_fraction=0.2", "--trainer.max_steps=3",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    )  # fmt: skip
    module = load_module(str(root / "checkpoints" / "last.ckpt")).eval()
    assert module.residual == residual and module.arch.dropout == 0.0
    assert module.arch.d_model == 256
    # the default recipe adds InfoNCE (weight 1.0) to the MSE; the earlier one the MSE alone
    weight = 1.0 if residual == "source_lead" else 0.0
    assert module.objective.loss_kind == "mse" and module.objective.contrastive_weight == weight
    src, eot = torch.randn(2, 4, module.arch.sonar_dim), torch.randn(2, 1, module.arch.sonar_dim)
    x = torch.cat((src, eot, module.separator.expand(2, 1, -1)), dim=1)  # [source, EOT, SEP]
    objective = module.eval_objective()
    base = src.mean(dim=1)
    if residual == "source_lead":
        base = (base + src[:, 0]) / 2
    with torch.no_grad():
        expected = module.network(x, None)[:, -1] + base
        torch.testing.assert_close(objective.predict_next(x, None), expected)
