"""The main job on the offline default: real documents -> concepts -> a trained model ->
summaries of held-out documents.

    python -m lcm.demo [--out_dir runs/demo] [--docs_per_split 4000] [--codec auto|sonar|minilm]
                       [--decoding.rule nearest|mbr_rouge|mbr_cosine --decoding.k K
                        --decoding.temperature T]

1. fetch real summarization pairs: Debian package descriptions and their one-line synopses
   (``lcm fetch-debian``, through apt; about 20 MB);
2. ``lcm prepare`` the train and test splits into concept shards (description and synopsis, each
   ending in the "End of text." sentence);
3. ``lcm fit`` a small Base-LCM (d_model 256, 1,200 steps) on [description, SEP, synopsis] that
   predicts a correction to the midpoint of the mean of the description's concepts and its first
   concept, trained with the MSE plus an InfoNCE ranking term
   (configs/base_lcm/sft_source_lead.yaml, chosen on the validation split; bench/RESULTS.md has
   its test scores); ``--recipe`` picks another, e.g. configs/base_lcm/sft_source_mean.yaml
   (the mean alone, 800 steps), configs/base_lcm/tiny_sft_residual.yaml or
   configs/refiner/tiny_sft.yaml;
4. summarize held-out test descriptions through the Python API and print them beside the
   reference synopses, with ROUGE-L beside the floors and the retrieval ceiling. The scored
   documents (``--n_eval`` test, ``--n_valid`` validation) are a seeded random sample of each
   split, drawn by a stable hash of the document id (:func:`sample_documents`), not the head of
   the file, which is alphabetical and dominated by package families (``binutils-*``).

The codec is SONAR when its weights load (``--codec auto``), else the offline MiniLM codec, which
decodes by retrieval over the training sentences (so summaries are sentences of the corpus):
the nearest one by default, or a choice among the nearest few (``--decoding``,
:class:`~encoders.retrieval.RetrievalDecoding`), the same for the model, its floors and the
ceiling. Rerunning reuses finished steps.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

from encoders.base import SentenceCodec
from encoders.retrieval import RetrievalDecoding

#: The main job's retrieval decoding (``--decoding``): the nearest training synopsis.
DEFAULT_DECODING = RetrievalDecoding()


def pick_codec(name: Literal["auto", "sonar", "minilm"]) -> SentenceCodec:
    """SONAR if requested or (``auto``) if its weights load; else the offline MiniLM codec."""
    from encoders.minilm import MiniLMCodec
    from encoders.sonar import SonarCodec, SonarWeightsUnavailable

    if name == "minilm":
        return MiniLMCodec()
    try:
        return SonarCodec().load()
    except SonarWeightsUnavailable as ex:
        if name == "sonar":
            raise
        first = str(ex).splitlines()[0]
        print(f"[demo] {first}\n[demo] using the offline default codec (all-MiniLM-L6-v2)")
        return MiniLMCodec()


def sample_documents(docs: list[dict], n: int, seed: int = 0, key: str = "id") -> list[dict]:
    """A seeded random sample of ``n`` documents, stable across runs and machines.

    Each document is ranked by the SHA-256 of ``"<seed>:<key>"`` and the ``n`` lowest are kept, in
    that order; so a document's rank does not depend on the file's order, the sample does not
    follow package names alphabetically, and ``n`` at least the number of documents keeps them
    all. A document's rank depends on its key and the seed only, so samples of two collections
    that share keys agree: a key kept from the larger collection is kept from any sub-collection
    that holds it (``lcm.demo_xling`` samples every language by ``md5`` this way).

    Args:
        docs: documents, each with a string ``key`` field (unique).
        n: how many to keep (>= 0).
        seed: another seed draws another sample.
        key: the field that identifies a document (``id``; ``md5`` aligns Debian languages).

    Returns:
        ``min(n, len(docs))`` documents.

    Raises:
        ValueError: if ``n`` is negative, a document has no ``key`` field, or two share one.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    seen: set[str] = set()
    for i, r in enumerate(docs):
        if key not in r:
            raise ValueError(f"document {i} has no {key!r} field (fields: {sorted(r)})")
        if r[key] in seen:
            raise ValueError(f"document {i}: {key} {r[key]!r} is not unique")
        seen.add(r[key])

    def rank(r: dict) -> str:
        return hashlib.sha256(f"{seed}:{r[key]}".encode()).hexdigest()

    return sorted(docs, key=rank)[:n]


def main(
    out_dir: str = "runs/demo",
    docs_per_split: int = 4000,
    codec: Literal["auto", "sonar", "minilm"] = "auto",
    train_steps: int | None = None,
    show: int = 6,
    n_eval: int = 100,
    n_valid: int = 100,
    recipe: str = "configs/base_lcm/sft_source_lead.yaml",
    run_name: str = "run",
    sample_seed: int = 0,
    references_in_bank: bool = False,
    decoding: RetrievalDecoding = DEFAULT_DECODING,
) -> dict:
    """Run the main job.

    Args:
        out_dir: where data, shards and reports go (rerun to resume).
        docs_per_split: most Debian descriptions per split (train; test is as large).
        train_steps: optimizer steps of the summarization model (None: the recipe's own
            ``trainer.max_steps``, 1,200 for the default recipe).
        codec: ``auto`` (SONAR if its weights load, else MiniLM), ``sonar`` or ``minilm``.
        show: how many held-out examples to print.
        n_eval: held-out test documents scored with ROUGE-L against the reference synopses: a
            random sample of the split by a stable hash of the document id (``sample_seed``);
            the whole split when at least its size.
        n_valid: validation documents scored the same way (the split to choose settings on;
            0 skips it).
        recipe: the summarization fine-tune recipe (any family's ``*_sft.yaml``, e.g.
            ``configs/base_lcm/sft_source_lead.yaml`` or ``configs/refiner/tiny_sft.yaml``).
        run_name: folder of the training run in ``out_dir`` (use a new one per recipe; the data
            and shards are shared).
        sample_seed: seed of the hashed sample of test and validation documents
            (:func:`sample_documents`).
        references_in_bank: keep training synopses that equal a validation or test reference
            in the retrieval bank (Debian repeats some synopses word for word). By default they
            are left out before anything is scored (:func:`leave_out_references`), so neither
            the model nor a floor can score by returning the very reference; the report records
            how many.
        decoding: how a retrieval codec renders a concept as a bank sentence (default: the
            nearest one); the model, the floors and the ceiling all decode this way, and the
            report records it. A codec with its own decoder (SONAR) takes only the default.
    """
    from rich.console import Console
    from rich.table import Table

    from lcm.corpora.debian import fetch_debian_descriptions
    from lcm.data.prepare import prepare

    console = Console()
    out = Path(out_dir)
    console.rule("1. real data: Debian descriptions -> synopses")
    fetched = fetch_debian_descriptions(
        str(out / "data"), langs=["en"], max_per_split=docs_per_split
    )
    console.print({k: v for k, v in fetched.items() if not isinstance(v, dict | list)})

    console.rule("2. lcm prepare: sentences -> concept shards")
    import lightning

    lightning.seed_everything(0, verbose=False)
    the_codec = pick_codec(codec)
    set_decoding(the_codec, decoding)
    summaries_prepare = {}
    for split in ("train",):  # test documents go through the Python API as raw text
        summaries_prepare[split] = prepare(
            str(out / "data" / f"debian_descriptions.en.{split}.jsonl"),
            str(out / "shards" / split),
            codec=the_codec,
            target_fields=["summary"],
            end_of_text="End of text.",
            shard_size=128,
            progress=False,
        )
    table = Table("split", "documents", "sentences", "rejected", "long re-split", "truncated")
    for split, s in summaries_prepare.items():
        table.add_row(
            split,
            str(s["documents"]),
            str(s["sentences"]),
            str(s["rejected"]),
            str(s["long_sentences_resplit"]),
            str(s["truncated_sentences"]),
        )
    console.print(table)

    console.rule(f"3. lcm fit: {recipe} learns description -> synopsis (CPU)")
    from lcm.cli import run

    run_dir = out / run_name
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        run(
            [
                "fit",
                "--config",
                "configs/trainer/default.yaml",
                "--config",
                recipe,
                f"--data.data_dir={out / 'shards' / 'train'}",
                f"--trainer.default_root_dir={run_dir}",
                *([f"--trainer.max_steps={train_steps}"] if train_steps is not None else []),
                "--trainer.enable_model_summary=false",
            ]
        )
    metrics = _last_metrics(run_dir)
    console.print({k: round(v, 4) for k, v in metrics.items()})

    console.rule("4. summarize held-out descriptions (decoded by retrieval)")
    # held_out: read once; the guard leaves the references out of a retrieval bank
    model, held_out, left_out = load_guarded(out, ckpt, the_codec, guard=not references_in_bank)

    def load(split: str, n: int) -> list[dict]:
        return sample_documents(held_out[split], n, sample_seed)

    bank = {}
    if getattr(the_codec, "bank", None) is not None:
        if left_out is not None:
            bank["references_left_out"] = left_out
        bank["sentences"] = the_codec.bank.count("eng_Latn")
        console.print({"retrieval bank": bank})

    def summarize(docs: list[dict]) -> list[str]:
        # One concept: a synopsis is one sentence, and so are the floors; a second concept
        # (meant to be the end of text) scored lower on the validation split (bench/RESULTS.md).
        return model.summarize(
            [r["text"] for r in docs], source_lang="eng_Latn", max_new_concepts=1
        )

    test = load("test", n_eval)
    summaries = summarize(test)
    table = Table("description (start)", "reference synopsis", "generated summary")
    for r, summ in list(zip(test, summaries))[:show]:
        table.add_row(r["text"][:120] + "...", r["summary"], summ)
    console.print(table)
    scores = _rouge_table(test, summaries, the_codec, model)
    console.print(scores)
    result = {
        "fetched": fetched.get("counts", {}),
        "prepare": summaries_prepare,
        "train_metrics": metrics,
        "bank": bank,
        "rouge_l": scores,
        "samples": [
            {"id": r["id"], "reference": r["summary"], "generated": g}
            for r, g in zip(test, summaries)
        ],
    }
    if n_valid > 0:
        # The validation split (never trained on) is where settings are chosen; test reports.
        valid = load("valid", n_valid)
        result["rouge_l_valid"] = _rouge_table(valid, summarize(valid), the_codec, model)
        console.print({"validation": result["rouge_l_valid"]})
    report = out / ("report.json" if run_name == "run" else f"report_{run_name}.json")
    report.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"report: {report}")
    return result


def set_decoding(codec: SentenceCodec, decoding: RetrievalDecoding) -> None:
    """Make a retrieval codec (one with a ``decoding`` attribute) decode under ``decoding``.

    Raises:
        ValueError: ``decoding`` is not the default and ``codec`` decodes with its own decoder.
    """
    if hasattr(codec, "decoding"):
        codec.decoding = decoding
    elif decoding != RetrievalDecoding():
        raise ValueError(
            f"--decoding {decoding.as_dict()} applies to a retrieval codec; {codec.codec_id} "
            "decodes with its own decoder (use --codec minilm)"
        )


def read_held_out(out: str | Path) -> dict[str, list[dict]]:
    """The job's held-out documents, ``{"valid": [...], "test": [...]}``, each a row of
    ``<out>/data/debian_descriptions.en.<split>.jsonl`` in file order."""
    data = Path(out) / "data"
    return {
        split: [
            json.loads(line)
            for line in (data / f"debian_descriptions.en.{split}.jsonl").read_text().splitlines()
        ]
        for split in ("valid", "test")
    }


def load_guarded(out: str | Path, ckpt: str | Path, codec: SentenceCodec, guard: bool = True):
    """A job's summarizer ``ckpt`` on ``codec`` as the job scores it: the codec gets an
    in-memory embedding cache if it has none (the model and the floors encode the same
    sentences once), and with ``guard`` the held-out references leave a retrieval codec's bank
    (:func:`leave_out_references`). Returns ``(model, held_out, references_left_out)``:
    ``held_out`` as :func:`read_held_out`, ``references_left_out`` None when nothing was guarded
    (``guard`` false, or a codec without a bank). Used by the job and to rescore its documents
    with another checkpoint or decoding (``bench/main_job_*``)."""
    from encoders.cache import EmbeddingCache
    from lcm.api import ConceptModel

    if codec.cache is None:
        codec.cache = EmbeddingCache()
    model = ConceptModel.load(ckpt, codec=codec)
    held_out = read_held_out(out)
    left_out = None
    if guard and getattr(codec, "bank", None) is not None:
        left_out = leave_out_references(codec, [r for docs in held_out.values() for r in docs])
    return model, held_out, left_out


def leave_out_references(codec: SentenceCodec, docs: list[dict]) -> int:
    """Take every sentence of ``codec``'s English retrieval bank that equals the ``summary`` of
    one of ``docs`` (the held-out documents) out of the bank, so that decoding cannot return a
    held-out reference word for word; the same rule as ``lcm eval`` and
    :mod:`lcm.demo_xling`. Returns how many bank sentences were removed."""
    return codec.bank.remove({r["summary"].strip() for r in docs}, "eng_Latn")


def _rouge_table(test: list[dict], summaries: list[str], codec, model) -> dict[str, Any]:
    """ROUGE-L F1 of the model beside its floors: the first sentence of the description
    (lead-1) and, with a retrieval codec, the training synopsis nearest to the description's mean
    concept and to its first sentence's concept; and the ceiling of the retrieval decoder: the
    training synopsis nearest to the reference synopsis's own concept (what a model that
    predicted the reference exactly would output). The floors and the ceiling decode through the
    model's own bank and codec (same sentences, same search, same ``codec.decoding``), so only
    the query differs; the table records that decoding.
    With a retrieval codec it also gives the model's ratio to the mean-concept floor with a 95%
    bootstrap interval over the documents (:func:`eval.report.ratio_interval`)."""
    import torch
    from rouge_score import rouge_scorer

    from eval.report import ratio_interval

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    refs = [r["summary"] for r in test]
    lead = [model.splitter.split(r["text"], "eng_Latn")[0] for r in test]
    nearest, first, ceiling = [], [], []
    if hasattr(codec, "bank"):
        for r in test:
            sents = model.splitter.split(r["text"], "eng_Latn")
            vecs = codec.encode(sents, "eng_Latn")
            mean_and_first = torch.stack((vecs.mean(dim=0), vecs[0]))
            a, b = codec.decode(mean_and_first, "eng_Latn")
            nearest.append(a)
            first.append(b)
        ceiling = codec.decode(codec.encode(refs, "eng_Latn"), "eng_Latn")

    def per_doc(outputs: list[str]) -> list[float]:
        return [scorer.score(a, b)["rougeL"].fmeasure for a, b in zip(refs, outputs)]

    def f1(docs: list[float]) -> float:
        return round(100 * sum(docs) / max(1, len(refs)), 2)

    model_docs = per_doc(summaries)
    out: dict[str, Any] = {"model": f1(model_docs), "lead-1": f1(per_doc(lead))}
    if nearest:
        floor_docs = per_doc(nearest)
        out["nearest synopsis to mean concept"] = f1(floor_docs)
        out["nearest synopsis to first-sentence concept"] = f1(per_doc(first))
        out["decoder ceiling (reference concept retrieved)"] = f1(per_doc(ceiling))
        if sum(floor_docs) > 0:
            out["model / mean-concept floor"] = round(sum(model_docs) / sum(floor_docs), 3)
            interval = ratio_interval(model_docs, floor_docs)
            out["model / mean-concept floor, 95% interval"] = (
                None if interval is None else [round(v, 3) for v in interval]
            )
    out["documents"] = len(refs)
    if hasattr(codec, "decoding"):
        out["decoding"] = codec.decoding.as_dict()
    return out


def _last_metrics(run_dir: Path) -> dict[str, float]:
    """The last logged value of each metric in the run's CSV log."""
    import csv

    files = sorted((run_dir / "csv").glob("version_*/metrics.csv"))
    last: dict[str, float] = {}
    if files:
        with open(files[-1]) as f:
            for row in csv.DictReader(f):
                for k, v in row.items():
                    if v not in ("", None) and k.startswith(("val/", "train/")):
                        last[k] = float(v)
    return last


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, args=sys.argv[1:], as_positional=False)
