"""One evaluation entry point: ``python -m eval``, ``lcm-eval`` or :func:`evaluate`.

For every model checkpoint x language pair x generation setting it summarizes the documents of
the pair's source language, scores each summary against the reference in the target language
and puts the text baselines (lead-k, random-k) in the same tables (LCM paper sections 3-4):

- summarization, per document: ROUGE-L, OVL-3 (against the source document), REP-4, words and
  sentences (:mod:`eval.metrics.text`), CoLA and SEAHORSE when their models are present, else
  "missing" with the reason (:mod:`eval.metrics.model_based`);
- teacher-forced next-concept metrics on held-out ``lcm prepare`` shards (``concept_dir``): l2,
  l2-r, PAR, CA, MI (:mod:`eval.metrics.concepts`, paper section 2.4.1) beside the
  copy-previous, context-mean and mean-concept predictors (:mod:`eval.baselines`);
- the codec-only cross-lingual check: encode the reference summary in A, decode it in B, BLEU and
  chrF against the parallel summary in B (:mod:`eval.metrics.crosslingual`).

Data: jsonl/json, parquet or csv files with a document, a summary, an id and a language field
(names configurable; a file without a language field is given one as ``LANG=path``). A pair
``A->B`` takes the documents in A and the references in B with the same id, so a cross-lingual
pair needs parallel files (the shipped :mod:`eval.data` Debian slice is parallel in en, fr, de).
``pairs=["all"]`` asks for every source x target of the data.

Codecs that decode by retrieval (USE-m, e5, MiniLM) write language B from a bank of B sentences:
``banks=["fra_Latn=fr.jsonl", ...]`` adds one per target language (:mod:`eval.banks`: language
checked, evaluated references left out and counted); a pair whose target has no bank stops the
run (or is listed as not run for the default pairs). Each model also gets the ``doc-mean`` floor.

Outputs in ``out_dir``:

- ``documents.jsonl``: one record per (system, pair, setting, document), appended batch by
  batch. A rerun reuses every record whose inputs, checkpoint and batch are unchanged, computes
  the rest, and rebuilds the same report; a run killed at any point resumes.
- ``results.json``: every number, with the configuration (file paths relative to the project
  for files inside it, else to ``out_dir``: :func:`recorded_path`); ``report.md``: markdown tables
  (systems x metrics per pair, cross-lingual matrices source x target per metric);
  ``plot_*.png``: a metric per language pair, and a metric per generation setting for a sweep.

Nothing is dropped silently: rows, pairs and documents that cannot be evaluated are listed with
the reason in ``results.json`` and ``report.md``. Structural errors (a missing file, field or
column, an unknown language code) stop the run with a message naming the file, row and field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from encoders.base import SentenceCodec
from encoders.langs import UnknownLanguageError
from eval.banks import bank_langs, bank_sentences, fill_banks, read_bank_files
from eval.concept_eval import run_concepts
from eval.inputs import (
    Pair,
    Row,
    checkpoint_fingerprint,
    load_rows,
    parse_baselines,
    parse_pair,
    parse_settings,
    sha,
)
from eval.names import (
    CONCEPT_BASELINES,
    CONCEPT_METRICS,
    DEFAULT_BASELINES,
    MODEL_METRICS,
    RECORDS,
    TEXT_METRICS,
)
from eval.records import RecordStore
from eval.report import aggregate, render_report, write_plots
from eval.text_eval import ModelMetrics, make_record, score_batch
from lcm.progress import Progress


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _model_names(checkpoints: Sequence[str], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(checkpoints):
            raise ValueError(f"{len(names)} model_names for {len(checkpoints)} checkpoints")
        out = list(names)
    else:
        out = []
        for c in checkpoints:
            p = Path(c)
            run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
            out.append(f"{run.name}/{p.stem}" if run.name else p.stem)
        if len(set(out)) != len(out):
            out = [str(Path(c)) for c in checkpoints]
    if len(set(out)) != len(out):
        raise ValueError(f"model names are not unique: {out}")
    return out


def evaluate(
    checkpoints: list[str],
    data: list[str] | None = None,
    out_dir: str = "runs/eval",
    pairs: list[str] | None = None,
    settings: list[dict[str, int | float | bool]] | None = None,
    metrics: list[str] | None = None,
    baselines: list[str] | None = None,
    max_documents: int | None = 100,
    codec: SentenceCodec | None = None,
    model_names: list[str] | None = None,
    text_field: str = "text",
    summary_field: str = "summary",
    id_field: str | None = "id",
    lang_field: str | None = "lang",
    concept_dir: str | None = None,
    concept_batch_size: int = 16,
    concept_max_len: int | Literal["model", "whole"] = "model",
    group_by: str = "lang",
    group_pattern: str | None = None,
    summarize: bool = True,
    crosslingual_check: bool = True,
    banks: list[str] | None = None,
    bank_field: str | None = None,
    references_in_bank: bool = False,
    doc_mean: bool = True,
    batch_size: int = 8,
    baseline_seed: int = 0,
    metric_models: dict[str, str] | None = None,
    mi_model: str | None = "gpt2",
    device: str = "cpu",
    plots: bool = True,
    progress: bool = True,
) -> dict:
    """Evaluate concept-model checkpoints on summarization over language pairs, with baselines.

    Args:
        checkpoints: ``.ckpt`` files written by ``lcm fit`` (one or more; none evaluates the
            baselines alone). Each is loaded with ``lcm.api.ConceptModel.load``.
        data: document files (jsonl/json, parquet, csv, globs); ``LANG=path`` gives the language
            of rows without a language field (e.g. ``fra_Latn=xlsum_fr.jsonl``). Default: the
            shipped Debian slice (``eval/data/debian_{en,fr,de}.jsonl``).
        out_dir: results folder; rerun with the same folder to resume.
        pairs: language pairs ``SRC->TGT`` (FLORES-200, e.g. ``eng_Latn->fra_Latn``); the
            documents in SRC are summarized in TGT and scored against the TGT summary with the
            same id. ``[all]``: every language of the data into every language (the full
            source x target matrix). Default: every language of the data into itself, where
            all codecs have it.
        settings: generation settings to sweep, each a mapping of ``lcm.api.Settings`` fields
            (``max_new_concepts``, ``seed``, ``guidance_scale``,
            ``num_inference_steps``, ...); default: one run with the defaults.
        metrics: any of rouge_l, ovl3, rep4, length, cola, seahorse-q4, seahorse-q5, l2, l2_r,
            par, ca, mi (default: all).
        baselines: text baselines ``lead-K`` and ``random-K`` (default lead-1, lead-3,
            random-3).
        max_documents: most documents per language pair (the first ones, in file order), and
            per group of ``concept_dir``; None for all (the report states the cap and how many
            documents it left out).
        codec: sentence codec for every model (default: the one each checkpoint was trained
            with, as ``ConceptModel.load`` finds it); one object is shared by all models.
        model_names: names of the checkpoints in the tables (default: ``<run dir>/<file>``).
        text_field: document field.
        summary_field: reference summary field.
        id_field: id field that aligns documents across languages (null: the row number).
        lang_field: language field (FLORES-200 codes).
        concept_dir: held-out ``lcm prepare`` folder, made with the models' codec: adds the
            teacher-forced next-concept metrics and their baselines.
        concept_batch_size: documents per teacher-forced batch (the CA pool is the batch).
        concept_max_len: most concepts of a document that the teacher-forced metrics see:
            ``model`` (the checkpoint's training ``max_seq_len``: positions beyond it are not
            scored in a document, and a summary's source is cut to fit), ``whole`` (every
            concept of every document), or a number. The report and JSON say how many documents
            were cut and how many positions that left out.
        group_by: column of the ``concept_dir`` shards the teacher-forced metrics are broken
            down by: ``lang``, ``source`` (``file:row``), ``id``, or a target field.
        group_pattern: regular expression applied to the ``group_by`` value; its first group
            (or whole match) is the group, e.g. ``--group_by id --group_pattern '^([^/]+)/'``
            for the corpus source of ``lcm fetch-corpus`` ids. Documents it does not match
            form the group ``(no match)``.
        summarize: generate and score summaries of ``data``; ``false`` evaluates only the
            teacher-forced metrics of ``concept_dir`` (no ``data`` is read).
        crosslingual_check: also run the codec alone: encode the SRC summary, decode it in TGT,
            BLEU/chrF against the TGT summary. With a retrieval codec and the references kept
            out of the bank, this is the retrieval ceiling of the pair: what decoding the
            reference's own concept returns.
        banks: for codecs that decode by retrieval (USE-m ``usem3``, e5, MiniLM): sentence
            banks per target language, ``LANG=path`` (jsonl/json, parquet, csv; globs), added to
            the bank each model's training shards fill. A cross-lingual pair ``A->B`` needs a
            bank in B. Rows whose language field names another language are refused.
            Sentences equal to the reference summary of an evaluated document in that language
            are left out of the whole bank, the part the training shards filled included
            (counted in the report).
        bank_field: the field of the bank files that holds the sentences (default:
            ``summary_field``).
        references_in_bank: keep the data's reference summaries in the bank (closed set:
            retrieval can return the answer; an upper bound, not a result).
        doc_mean: add the ``doc-mean`` floor per model: the document's mean concept decoded in
            the target language by the model's codec (what a summarizer must beat).
        batch_size: documents generated together (batches are fixed by document order, so a
            resumed run regenerates a missing document in the very same batch).
        baseline_seed: seed of random-K (combined with each document id).
        metric_models: local model directory per model-based metric, e.g. ``{cola: /models/cola}``.
        mi_model: local causal LM for MI (the paper: GPT-2); missing -> MI reported missing.
        device: where models run (``cpu``, ``cuda``).
        plots: write PNG plots.
        progress: show progress bars.

    Returns:
        The contents of ``results.json`` (plus ``run``: what was computed or reused).
    """
    from eval.data import DEBIAN_LANGS, debian_file

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _model_names(checkpoints, model_names)
    for c in checkpoints:
        if not Path(c).is_file():
            raise FileNotFoundError(f"checkpoint not found: {c}")
    all_metrics = (*TEXT_METRICS, *MODEL_METRICS, *CONCEPT_METRICS)
    from eval.metrics import model_based

    known_metrics = (*TEXT_METRICS, *model_based.model_metric_names(), *CONCEPT_METRICS)
    wanted = list(metrics) if metrics is not None else list(all_metrics)
    bad = [m for m in wanted if m not in known_metrics]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; known: {list(known_metrics)}")
    text_need = [m for m in wanted if m in ("rouge_l", "ovl3", "rep4")]
    if "length" in wanted:
        text_need += ["words", "sentences"]
    concept_need = [m for m in wanted if m in CONCEPT_METRICS]
    base_specs = parse_baselines(DEFAULT_BASELINES if baselines is None else baselines)
    floors = {}
    if doc_mean:
        floors = {n: "doc-mean" if len(names) == 1 else f"doc-mean[{n}]" for n in names}
    clash = (
        set(names) & {b[0] for b in base_specs}
        | set(names) & set(CONCEPT_BASELINES)
        | set(names) & set(floors.values())
    )
    if clash:
        raise ValueError(f"model names {sorted(clash)} clash with baseline names")
    sweep = parse_settings(settings)
    if not summarize and concept_dir is None:
        raise ValueError("summarize=false evaluates concept_dir only: give --concept_dir")
    if group_pattern is not None:
        try:
            re.compile(group_pattern)
        except re.error as ex:
            raise ValueError(
                f"group_pattern {group_pattern!r} is not a regular expression: {ex}"
            ) from None
    if batch_size < 1 or concept_batch_size < 1:
        raise ValueError("batch_size and concept_batch_size must be >= 1")
    if data is None:
        data = [str(debian_file(x)) for x in DEBIAN_LANGS]
    bank_files = (
        read_bank_files(banks, bank_field or summary_field, lang_field, out / ".work")
        if banks
        else []
    )

    # ---- data and pairs
    by_lang, skipped_rows, files = (
        load_rows(data, text_field, summary_field, id_field, lang_field, out / ".work")
        if summarize
        else ({}, [], [])
    )
    explicit_pairs = pairs is not None and list(pairs) != ["all"]
    if not summarize:
        pair_list = []
    elif pairs is not None and list(pairs) == ["all"]:
        pair_list = [Pair(a, b) for a in by_lang for b in by_lang]
    elif pairs is not None:
        pair_list = [parse_pair(p) for p in pairs]
    else:
        pair_list = [Pair(x, x) for x in by_lang]
    if len({p.label for p in pair_list}) != len(pair_list):
        raise ValueError(f"repeated language pairs in {pairs}")
    have = sorted(by_lang)
    for p in pair_list:
        for lang, role in ((p.src, "documents"), (p.tgt, "references")):
            if lang not in by_lang:
                raise ValueError(
                    f"pair {p.label}: no usable {role} in {lang} in {files} (languages found: "
                    f"{have}; rows that could not be used: {len(skipped_rows)})"
                )

    # ---- models: codec languages and retrieval banks (checked before any work)
    from lcm.api import ConceptModel

    references: dict[str, set[str]] = {}  # per target language: the evaluated references
    for p in pair_list:
        refs = [by_lang[p.tgt][i].summary for i in by_lang[p.src] if i in by_lang[p.tgt]]
        references.setdefault(p.tgt, set()).update(x.strip() for x in refs[:max_documents])
    bank_info: dict[int, dict] = {}

    def load(i: int) -> ConceptModel:
        m = ConceptModel.load(checkpoints[i], codec=codec, device=device)
        bank_info[i] = fill_banks(m.codec, bank_files, references, references_in_bank)
        return m

    model_info: dict[str, dict] = {}
    pairs_not_run: list[dict] = []
    models_cache: dict[int, ConceptModel] = {}
    for i, name in enumerate(names):
        m = load(i)
        models_cache[i] = m
        model_info[name] = {
            "checkpoint": str(checkpoints[i]),
            "fingerprint": checkpoint_fingerprint(checkpoints[i]),
            "family": m.module.family,
            "mode": m.mode,
            "codec": m.codec.codec_id,
            "end_of_text": m.end_of_text,
        }
        if hasattr(m.codec, "bank"):
            model_info[name]["banks"] = bank_info[i]
        for p in list(pair_list):
            for lang in (p.src, p.tgt):
                if lang not in m.codec.langs:
                    msg = (
                        f"pair {p.label}: the codec {m.codec.codec_id!r} of model {name!r} does "
                        f"not support {lang} (it has {len(m.codec.langs)} language(s), e.g. "
                        f"{list(m.codec.langs)[:3]})"
                    )
                    if explicit_pairs:
                        raise UnknownLanguageError(msg)
                    pair_list.remove(p)
                    pairs_not_run.append({"pair": p.label, "reason": msg})
                    break
        in_bank = bank_langs(m.codec)
        for p in list(pair_list) if hasattr(m.codec, "bank") else []:
            if p.tgt not in in_bank:
                msg = (
                    f"pair {p.label}: the codec {m.codec.codec_id!r} of model {name!r} decodes "
                    f"by retrieval and its bank holds no {p.tgt} sentences (it has "
                    f"{in_bank or 'none'}); give a bank with --banks '[{p.tgt}=<file>]'"
                )
                if explicit_pairs:
                    raise ValueError(msg)
                pair_list.remove(p)
                pairs_not_run.append({"pair": p.label, "reason": msg})
        if len(models_cache) > 1:  # keep one model in memory at a time
            models_cache.pop(min(models_cache))
    if summarize and not pair_list:
        raise ValueError(f"no language pair can be evaluated: {pairs_not_run}")

    # ---- documents of each pair
    pair_docs: dict[str, list[tuple[Row, str]]] = {}
    pair_skipped: dict[str, list[dict]] = {}
    for p in pair_list:
        docs, skipped = [], []
        for row in by_lang[p.src].values():
            ref = by_lang[p.tgt].get(row.id)
            if ref is None:
                skipped.append({"id": row.id, "reason": f"no usable {p.tgt} row with this id"})
            else:
                docs.append((row, ref.summary))
        if max_documents is not None:
            docs = docs[:max_documents]
        if not docs:
            raise ValueError(f"pair {p.label}: no document in {p.src} has a reference in {p.tgt}")
        pair_docs[p.label] = docs
        pair_skipped[p.label] = skipped

    store = RecordStore(out / RECORDS)
    model_metrics = ModelMetrics(
        [m for m in wanted if m not in (*TEXT_METRICS, *CONCEPT_METRICS)],
        metric_models or {},
        device,
    )
    need = text_need + list(model_metrics.available)

    # ---- baselines, then each model: codec check, teacher-forced metrics, summaries
    scoring = _Scoring(store, need, model_metrics, progress)
    for p in pair_list:
        _run_baselines(scoring, p, pair_docs[p.label], base_specs, baseline_seed)
    concept_results: dict[str, dict] = {}
    lm, lm_missing = None, ""
    if concept_dir is not None and "mi" in concept_need:
        try:
            lm = model_based.load_causal_lm(mi_model, device) if mi_model else None
            if lm is None:
                lm_missing = "mi_model is null"
        except model_based.ModelUnavailable as e:
            lm_missing = str(e)
    for i, name in enumerate(names):
        model = models_cache.pop(i, None) or load(i)
        info = model_info[name]
        base_ctx = [info["fingerprint"], info["codec"], str(device)]
        if hasattr(model.codec, "bank"):  # retrieval output depends on the bank's sentences
            base_ctx.append(
                sha({x: sha(bank_sentences(model.codec, x)) for x in bank_langs(model.codec)})
            )
        if crosslingual_check:
            for p in pair_list:
                _run_codec_check(scoring, model, name, p, pair_docs[p.label], base_ctx)
        if name in floors:
            for p in pair_list:
                _run_doc_mean(
                    scoring, model, floors[name], p, pair_docs[p.label], batch_size, base_ctx
                )
        if concept_dir is not None and concept_need:
            concept_results[name] = run_concepts(
                model, name, checkpoints[i], Path(concept_dir), concept_need, lm, lm_missing,
                max_documents, concept_batch_size, base_ctx, store, progress,
                concept_max_len, group_by, group_pattern,
            )  # fmt: skip
        for p in pair_list:
            for label, s in sweep:
                _run_summaries(
                    scoring, model, name, p, pair_docs[p.label], label, s, batch_size, base_ctx
                )
        del model

    # ---- aggregate, report, plots
    results = aggregate(
        store=store,
        names=names,
        model_info=model_info,
        base_specs=base_specs,
        sweep=sweep,
        pair_list=pair_list,
        pair_docs=pair_docs,
        need=need,
        model_metrics=model_metrics,
        wanted=wanted,
        codec_check=crosslingual_check,
        floors=list(floors.values()),
    )
    results["config"] = {
        "checkpoints": dict(zip(names, checkpoints)),
        "data": list(data),
        "files": files,
        "pairs": [p.label for p in pair_list],
        "settings": {label: dataclasses.asdict(s) for label, s in sweep},
        "metrics": wanted,
        "baselines": [b[0] for b in base_specs],
        "floors": floors,
        "banks": list(banks or []),
        "bank_field": bank_field or summary_field,
        "references_in_bank": references_in_bank,
        "max_documents": max_documents,
        "out_dir": str(out),
        "codec": None if codec is None else codec.codec_id,
        "fields": {
            "text": text_field,
            "summary": summary_field,
            "id": id_field,
            "lang": lang_field,
        },
        "concept_dir": concept_dir,
        "concept_batch_size": concept_batch_size,
        "concept_max_len": concept_max_len,
        "group_by": group_by,
        "group_pattern": group_pattern,
        "summarize": summarize,
        "batch_size": batch_size,
        "baseline_seed": baseline_seed,
        "device": device,
    }
    results["models"] = model_info
    results["data"] = {
        "documents_per_lang": {lang: len(v) for lang, v in sorted(by_lang.items())},
        "rows_not_used": skipped_rows,
        "pairs_not_run": pairs_not_run,
        "pair_documents": {k: len(v) for k, v in pair_docs.items()},
        "pair_documents_not_used": pair_skipped,
    }
    if concept_dir is not None:
        results["concepts"] = concept_results
    record_relative_paths(results, out)
    report = render_report(results)
    (out / "report.md").write_text(report, encoding="utf-8")
    results["plots"] = write_plots(results, out) if plots else []
    run = {
        "computed": store.computed,
        "reused": len(store.reused),
        "partial_lines_ignored": store.partial_lines,
        "seconds": round(time.perf_counter() - t0, 2),
        "out_dir": str(out.resolve()),  # not in results.json (its paths are relative)
    }
    tmp = out / f".results.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / "results.json")
    results["run"] = run
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return results


@dataclass
class _Scoring:
    """What every unit of work shares: the record store, the metrics asked for, the scorers."""

    store: RecordStore
    need: list[str]
    model_metrics: ModelMetrics
    progress: bool

    def score(self, items: list[tuple[list[str], str, str]]) -> list[dict]:
        """items: (summary sentences, reference, source) -> per-item metric dicts."""
        return score_batch(items, self.need, self.model_metrics) if items else []


def _run_baselines(sc: _Scoring, p: Pair, docs, base_specs, baseline_seed: int) -> None:
    from eval import baselines as bl
    from lcm.splitting import SentenceSplitter

    splitter = SentenceSplitter(max_chars=0)  # real sentences: lead-k is not re-split
    for name, kind, k in base_specs:
        ctx = sha("baseline", kind, k, baseline_seed if kind == "random" else None)
        todo = []
        for row, ref in docs:
            key = sc.store.key("baseline", name, p.label, "-", row.id)
            if sc.store.get(key, ctx, sha(row.text, ref), sc.need) is None:
                todo.append((key, row, ref))
        items = []
        for _key, row, ref in todo:
            sents = splitter.split(row.text, p.src)
            if kind == "lead":
                hyp = bl.lead_k(sents, k)
            else:  # the seed depends on the document alone, so resuming draws the same
                hyp = bl.random_k(sents, k, int(sha(baseline_seed, row.id), 16))
            items.append((hyp, ref, row.text))
        sc.store.add(
            [
                make_record(key, ctx, sha(row.text, ref), kind="baseline", system=name,
                        pair=p.label, setting="-", id=row.id, hypothesis=" ".join(item[0]),
                        reference=ref, metrics=metrics)
                for (key, row, ref), item, metrics in zip(todo, items, sc.score(items))
            ]
        )  # fmt: skip


def _run_codec_check(sc: _Scoring, model, name: str, p: Pair, docs, base_ctx) -> None:
    """Encode each reference summary in the source language, decode it in the target one."""
    ctx = sha("codec", *base_ctx)
    todo = []
    for row, ref in docs:
        key = sc.store.key("codec", name, p.label, "-", row.id)
        if sc.store.get(key, ctx, sha(row.summary, ref)) is None:
            todo.append((key, row, ref))
    bar = _bar(f"codec {name} {p.label}", len(todo), sc.progress and bool(todo))
    for s in range(0, len(todo), 64):
        chunk = todo[s : s + 64]
        vectors = model.codec.encode([row.summary for _, row, _ in chunk], p.src)  # (b, D)
        hyps = model.codec.decode(vectors, p.tgt)
        sc.store.add(
            [
                make_record(key, ctx, sha(row.summary, ref), kind="codec", system=name,
                        pair=p.label, setting="-", id=row.id, hypothesis=h, reference=ref)
                for (key, row, ref), h in zip(chunk, hyps)
            ]
        )  # fmt: skip
        bar.update(len(chunk))
    bar.close()


def _run_doc_mean(sc: _Scoring, model, system: str, p: Pair, docs, batch_size, base_ctx) -> None:
    """The floor ``doc-mean``: each document's mean concept, decoded in the target language."""
    ctx = sha("doc-mean", *base_ctx)
    todo = []
    for row, ref in docs:
        key = sc.store.key("floor", system, p.label, "-", row.id)
        if sc.store.get(key, ctx, sha(row.text, ref), sc.need) is None:
            todo.append((key, row, ref))
    bar = _bar(f"{system} {p.label}", len(todo), sc.progress and bool(todo))
    for s in range(0, len(todo), batch_size):
        chunk = todo[s : s + batch_size]
        sents = [model.splitter.split(row.text, p.src) for _, row, _ in chunk]
        ok = [j for j, x in enumerate(sents) if x]
        hyps: dict[int, list[str]] = {}
        if ok:
            flat = [x for j in ok for x in sents[j]]
            vectors = model.codec.encode(flat, p.src)  # (sum of n_j, D)
            means, start = [], 0
            for j in ok:
                means.append(vectors[start : start + len(sents[j])].mean(dim=0))
                start += len(sents[j])
            decoded = model.codec.decode(torch.stack(means), p.tgt)
            hyps = {j: [h] for j, h in zip(ok, decoded)}
        done = [j for j in range(len(chunk)) if j in hyps]
        scored = dict(zip(done, sc.score([(hyps[j], chunk[j][2], chunk[j][1].text) for j in done])))
        records = []
        for j, (key, row, ref) in enumerate(chunk):
            common = dict(kind="floor", system=system, pair=p.label, setting="-", id=row.id)
            if j in hyps:
                records.append(
                    make_record(key, ctx, sha(row.text, ref), **common, hypothesis=hyps[j][0],
                                reference=ref, metrics=scored[j])
                )  # fmt: skip
            else:
                records.append(
                    make_record(key, ctx, sha(row.text, ref), **common,
                                error="the document has no sentences")
                )  # fmt: skip
        sc.store.add(records)
        bar.update(len(chunk))
    bar.close()


def _run_summaries(sc: _Scoring, model, name, p: Pair, docs, label, settings, batch_size,
                   base_ctx) -> None:  # fmt: skip
    """Summarize ``docs`` in fixed batches; a batch is generated when any member is missing."""
    bar = _bar(f"{name} {p.label} {label}", len(docs), sc.progress)
    for start in range(0, len(docs), batch_size):
        chunk = docs[start : start + batch_size]
        # a batch is the unit of work and of reuse (its padding can move the last float bits)
        ctx = sha("model", *base_ctx, dataclasses.asdict(settings), [r.id for r, _ in chunk])
        todo = []
        for j, (row, ref) in enumerate(chunk):
            key = sc.store.key("model", name, p.label, label, row.id)
            if sc.store.get(key, ctx, sha(row.text, ref), sc.need) is None:
                todo.append(j)
        if todo:
            sc.store.add(_generate_chunk(sc, model, name, p, label, settings, chunk, todo, ctx))
        bar.update(len(chunk))
    bar.close()


def _generate_chunk(sc: _Scoring, model, name, p: Pair, label, settings, chunk, todo, ctx):
    """Generate the whole batch ``chunk`` and return the records of its ``todo`` members."""
    sentences = [model.splitter.split(row.text, p.src) for row, _ in chunk]
    ok = [j for j in range(len(chunk)) if sentences[j]]
    error = {j: "the document has no sentences" for j in range(len(chunk)) if j not in ok}
    generated: dict[int, tuple[list[str], str, int]] = {}
    if ok:
        try:
            out = model.predict_concepts(
                [sentences[j] for j in ok], p.src, settings, add_separator=True
            )
        except ValueError as e:  # an input the model cannot take: every document of the batch
            error.update({j: f"generation failed: {e}" for j in ok})
        else:
            # the very text `lcm summarize` writes (a repeated decoded sentence cuts it)
            rendered = model.render_sentences(out, p.tgt)
            for k, j in enumerate(ok):
                generated[j] = (rendered[k], out.stop_reasons[k], int(len(out.concepts[k])))
    done = [j for j in todo if j in generated]
    scored = dict(
        zip(done, sc.score([(generated[j][0], chunk[j][1], chunk[j][0].text) for j in done]))
    )
    records = []
    for j in todo:
        row, ref = chunk[j]
        key = sc.store.key("model", name, p.label, label, row.id)
        common = dict(kind="model", system=name, pair=p.label, setting=label, id=row.id)
        if j in generated:
            sents, reason, n = generated[j]
            records.append(
                make_record(key, ctx, sha(row.text, ref), **common, hypothesis=" ".join(sents),
                        reference=ref, metrics=scored[j], stop_reason=reason, concepts=n)
            )  # fmt: skip
        else:
            records.append(make_record(key, ctx, sha(row.text, ref), **common, error=error[j]))
    return records


#: The project folder: files inside it (``eval/data/...``) are recorded relative to it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def recorded_path(path: str, out: Path) -> str:
    """How ``results.json`` and ``report.md`` name a file: relative to the project when it lies
    inside it (``eval/data/debian_en.jsonl``), else relative to the results folder ``out``
    (``../../bank_fr.jsonl``; ``.`` for ``out`` itself). No absolute, machine-specific path is
    written, and a results folder moved together with its inputs still names them."""
    full = Path(os.path.abspath(path))
    if full.is_relative_to(PROJECT_ROOT):
        return full.relative_to(PROJECT_ROOT).as_posix()
    return Path(os.path.relpath(full, os.path.abspath(out))).as_posix()


def record_relative_paths(results: dict, out: Path) -> None:
    """Rewrite every file path of ``results`` with :func:`recorded_path` (in place)."""

    def rel(x: str) -> str:
        return recorded_path(x, out)

    def bank(entry: str) -> str:  # "LANG=path"
        lang, _, path = entry.partition("=")
        return f"{lang}={rel(path)}"

    cfg = results["config"]
    cfg["checkpoints"] = {k: rel(v) for k, v in cfg["checkpoints"].items()}
    cfg["data"] = [rel(x) for x in cfg["data"]]
    cfg["files"] = [rel(x) for x in cfg["files"]]
    cfg["banks"] = [bank(x) for x in cfg["banks"]]
    cfg["out_dir"] = rel(cfg["out_dir"])
    if cfg.get("concept_dir") is not None:
        cfg["concept_dir"] = rel(cfg["concept_dir"])
    for info in results["models"].values():
        info["checkpoint"] = rel(info["checkpoint"])
        for b in info.get("banks", {}).values():
            b["files"] = [rel(x) for x in b["files"]]
    for row in results["data"]["rows_not_used"]:
        if row.get("file"):
            row["file"] = rel(row["file"])


def _bar(stage: str, total: int, enabled: bool) -> Progress:
    """Documents/s and ETA of one stage: a bar in a terminal, plain lines in a log file."""
    return Progress(stage, total, "documents", enabled, prefix="lcm eval")


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Console entry point (``lcm-eval``, ``python -m eval``): options from :func:`evaluate`,
    ``--help`` from its docstring. Prints the report and returns the results."""
    import sys

    from jsonargparse import CLI

    args = sys.argv[1:] if argv is None else list(argv)
    prog = prog or Path(sys.argv[0]).name or "lcm-eval"
    results = CLI(evaluate, args=args, as_positional=False, prog=prog)
    # results.json records out_dir relative (recorded_path); the run knows where it wrote
    report = Path(results["run"]["out_dir"]) / "report.md"
    if report.exists():
        print(report.read_text(encoding="utf-8"))
    print(json.dumps(results["run"]))
    return results
