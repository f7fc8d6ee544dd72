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

Outputs in ``out_dir``:

- ``documents.jsonl``: one record per (system, pair, setting, document), appended batch by
  batch. A rerun reuses every record whose inputs, checkpoint and batch are unchanged, computes
  the rest, and rebuilds the same report; a run killed at any point resumes.
- ``results.json``: every number, with the configuration; ``report.md``: markdown tables
  (systems x metrics per pair, cross-lingual matrices source x target per metric);
  ``plot_*.png``: a metric per language pair, and a metric per generation setting for a sweep.

Nothing is dropped silently: rows, pairs and documents that cannot be evaluated are listed with
the reason in ``results.json`` and ``report.md``. Structural errors (a missing file, field or
column, an unknown language code) stop the run with a message naming the file, row and field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from encoders.base import SentenceCodec
from encoders.langs import SONAR_LANGS, UnknownLanguageError, validate_lang

#: Per-document summarization metrics; ``length`` gives ``words`` and ``sentences``.
TEXT_METRICS = ("rouge_l", "ovl3", "rep4", "length")
#: Model-scored metrics, reported "missing" when their model is not available locally.
MODEL_METRICS = ("cola", "seahorse-q4", "seahorse-q5")
#: Teacher-forced next-concept metrics (need ``concept_dir``).
CONCEPT_METRICS = ("l2", "l2_r", "par", "ca", "mi")
DEFAULT_BASELINES = ("lead-1", "lead-3", "random-3")
CONCEPT_BASELINES = ("copy-previous", "context-mean", "mean-concept")
LABELS = {
    "rouge_l": "ROUGE-L",
    "ovl3": "OVL-3",
    "rep4": "REP-4",
    "words": "words",
    "sentences": "sentences",
    "cola": "CoLA",
    "seahorse-q4": "SH-4",
    "seahorse-q5": "SH-5",
    "l2": "l2",
    "l2_r": "l2-r",
    "par": "PAR",
    "ca": "CA",
    "mi": "MI",
    "bleu": "BLEU",
    "chrf": "chrF",
}
#: Metrics drawn in the plots.
PLOT_METRICS = ("rouge_l", "ovl3", "rep4", "words")
RECORDS = "documents.jsonl"
_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One usable document in one language."""

    id: str
    lang: str
    text: str
    summary: str
    where: str  # "<file> row <i>"


@dataclass(frozen=True)
class Pair:
    src: str
    tgt: str

    @property
    def label(self) -> str:
        return f"{self.src}->{self.tgt}"


def parse_pair(entry: str) -> Pair:
    """``"eng_Latn->fra_Latn"`` (or ``eng_Latn-fra_Latn``; a single code means A->A), validated
    as FLORES-200 codes."""
    parts = entry.split("->") if "->" in entry else entry.split("-")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"language pair {entry!r}: expected SRC->TGT, e.g. eng_Latn->fra_Latn")
    src, tgt = (validate_lang(p.strip(), SONAR_LANGS, f"language pair {entry!r}") for p in parts)
    return Pair(src, tgt)


def _split_data_entry(entry: str) -> tuple[str, str | None]:
    """``path`` or ``LANG=path`` -> (path, LANG or None)."""
    if "=" in entry and not Path(entry).exists():
        code, path = entry.split("=", 1)
        if _CODE.match(code) or "/" not in code:
            return path, validate_lang(code, SONAR_LANGS, f"data entry {entry!r}")
    return entry, None


def _field_text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else None


def load_rows(
    data: Sequence[str],
    text_field: str,
    summary_field: str,
    id_field: str | None,
    lang_field: str | None,
    work_dir: Path,
) -> tuple[dict[str, dict[str, Row]], list[dict], list[str]]:
    """Read every row of ``data``.

    Returns:
        ``{lang: {id: Row}}`` in file order, the rows that cannot be used (file, row, id, lang,
        reason), and the files read.

    Raises:
        FileNotFoundError: a file or glob matches nothing.
        ValueError: a file cannot be read, or lacks the text, summary, id or language column.
        UnknownLanguageError: a row's language is not a FLORES-200 code (names file, row, field).
    """
    from lcm.data.documents import expand_inputs, iter_rows

    by_lang: dict[str, dict[str, Row]] = {}
    skipped: list[dict] = []
    files: list[str] = []
    for entry in data:
        pattern, file_lang = _split_data_entry(entry)
        for path in expand_inputs([pattern]):
            files.append(str(path))
            rows = iter_rows([path], work_dir=work_dir / "inputs", cache_dir=str(work_dir / "hf"))
            checked = False
            for file, i, record, error in rows:
                name = Path(file).name
                if error is not None:
                    kind, _, message = error.partition(": ")
                    if kind == "unreadable_file":
                        raise ValueError(f"{file}: {message}")
                    skipped.append(_skip(file, i, None, None, message))
                    continue
                assert record is not None
                if not checked:  # datasets gives every row all the file's columns
                    _check_columns(
                        file, record, text_field, summary_field, id_field, lang_field, file_lang
                    )
                    checked = True
                where = f"{name} row {i}"
                if id_field and record.get(id_field) in (None, ""):
                    raise ValueError(f"{file} row {i}: field {id_field!r} (the id) is empty")
                doc_id = str(record[id_field]) if id_field else str(i)
                code = record.get(lang_field) if lang_field else None
                if code is None:
                    if file_lang is None:
                        raise ValueError(
                            f"{file} row {i}: field {lang_field!r} (the language) is empty; "
                            f"fill it or give the file's language as LANG={file}"
                        )
                    code = file_lang
                lang = validate_lang(code, SONAR_LANGS, f"{file} row {i} field {lang_field!r}")
                text = _field_text(record.get(text_field))
                summary = _field_text(record.get(summary_field))
                problem = None
                if text is None or not text.strip():
                    problem = f"field {text_field!r} (the document) is missing, empty or not text"
                elif summary is None or not summary.strip():
                    problem = f"field {summary_field!r} (the summary) is missing, empty or not text"
                elif doc_id in by_lang.get(lang, {}):
                    first = by_lang[lang][doc_id].where
                    problem = f"duplicate id {doc_id!r} in {lang} (first at {first})"
                if problem:
                    skipped.append(_skip(file, i, doc_id, lang, problem))
                    continue
                by_lang.setdefault(lang, {})[doc_id] = Row(doc_id, lang, text, summary, where)
    return by_lang, skipped, files


def _skip(file: str, row: int | None, doc_id: str | None, lang: str | None, reason: str) -> dict:
    return {"file": file, "row": row, "id": doc_id, "lang": lang, "reason": reason}


def _check_columns(file, record, text_field, summary_field, id_field, lang_field, file_lang):
    have = sorted(record)
    needed = [("text_field", text_field), ("summary_field", summary_field)]
    if id_field:
        needed.append(("id_field", id_field))
    if lang_field and file_lang is None:
        needed.append(("lang_field", lang_field))
    for option, name in needed:
        if name not in record:
            hint = ""
            if option == "lang_field":
                hint = f", or give the file's language as LANG={file}"
            elif option == "id_field":
                hint = ", or --id_field null to number rows"
            raise ValueError(
                f"{file}: no field {name!r} (the rows have {have}); set --{option}{hint}"
            )
    if not lang_field and file_lang is None:
        raise ValueError(f"{file}: no language: set --lang_field or give it as LANG={file}")


def parse_settings(settings: Sequence[dict[str, Any]] | None) -> list[tuple[str, Any]]:
    """``[(label, lcm.api.Settings)]``; the label lists the overridden fields (``default``)."""
    from lcm.api import Settings

    out: list[tuple[str, Any]] = []
    for i, overrides in enumerate(settings or [{}]):
        parsed = Settings.from_mapping(overrides, where=f"settings[{i}]")
        clean = {k: getattr(parsed, k) for k in overrides}
        label = ",".join(f"{k}={clean[k]}" for k in sorted(clean)) or "default"
        if label in [x[0] for x in out]:
            raise ValueError(f"settings[{i}] repeats the setting {label!r}")
        out.append((label, parsed))
    return out


def parse_baselines(names: Sequence[str]) -> list[tuple[str, str, int]]:
    """``lead-K`` / ``random-K`` -> ``[(name, kind, K)]``."""
    out = []
    for name in names:
        m = re.fullmatch(r"(lead|random)-(\d+)", name)
        if not m or int(m.group(2)) < 1:
            raise ValueError(f"unknown baseline {name!r}: expected lead-K or random-K, K >= 1")
        out.append((name, m.group(1), int(m.group(2))))
    return out


def _sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:16]


def checkpoint_fingerprint(path: str | Path) -> str:
    """Size and the hash of the first and last MiB: changes when the checkpoint is rewritten,
    costs nothing on multi-GB files."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Per-document records (resumable)
# ---------------------------------------------------------------------------------------------
class RecordStore:
    """``documents.jsonl``: one json record per unit of work, keyed by
    ``(kind, system, pair, setting, unit)``; the last record of a key wins.

    A record is reused only if its ``ctx`` (what produced it: checkpoint, batch, seeds) and
    ``input`` (the document and reference) hashes match, and it holds every metric asked for.
    A line cut by a kill is ignored (and counted); its document is computed again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        self.partial_lines = 0
        self.computed = 0
        self.reused: set[str] = set()
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    self.partial_lines += 1
                    continue
                self.records[rec["key"]] = rec

    @staticmethod
    def key(kind: str, system: str, pair: str, setting: str, unit: str) -> str:
        return json.dumps([kind, system, pair, setting, unit], ensure_ascii=False)

    def get(self, key: str, ctx: str, inp: str, need: Iterable[str] = ()) -> dict | None:
        rec = self.records.get(key)
        if rec is None or rec.get("ctx") != ctx or rec.get("input") != inp:
            return None
        if "error" not in rec and not set(need) <= set(rec.get("metrics", {})):
            return None
        self.reused.add(key)
        return rec

    def add(self, records: list[dict]) -> None:
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:  # a killed run may have left half a line: start on a fresh one
                f.seek(f.tell() - 1)
                if f.read(1) != "\n":
                    f.write("\n")
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
        for rec in records:
            self.records[rec["key"]] = rec
            self.reused.discard(rec["key"])
        self.computed += len(records)


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


# ---------------------------------------------------------------------------------------------
# Summarization metrics
# ---------------------------------------------------------------------------------------------
class ModelMetrics:
    """The model-scored metrics asked for: loaded once, or "missing" with the reason."""

    def __init__(self, names: Sequence[str], models: dict[str, str], device: str) -> None:
        from eval.metrics import model_based

        self.available: dict[str, Any] = {}
        self.missing: dict[str, str] = {}
        for name in names:
            metric = model_based.get_model_metric(name, model=models.get(name), device=device)
            try:
                metric.load()
            except model_based.ModelUnavailable as e:
                self.missing[name] = str(e)
                continue
            self.available[name] = metric

    def score(self, hyp_sentences: list[list[str]], sources: list[str]) -> dict[str, list]:
        """Per-document scores: CoLA is the mean over the summary's sentences (the paper scores
        sentences), SEAHORSE scores (source, summary)."""
        out: dict[str, list] = {}
        for name, metric in self.available.items():
            if metric.needs_source:
                out[name] = metric.score([" ".join(s) for s in hyp_sentences], sources)
            else:
                flat = [s for sents in hyp_sentences for s in sents]
                values = metric.score(flat) if flat else []
                per_doc, k = [], 0
                for sents in hyp_sentences:
                    part = values[k : k + len(sents)]
                    k += len(sents)
                    per_doc.append(sum(part) / len(part) if part else None)
                out[name] = per_doc
        return out


def text_metrics(
    hyp_sentences: list[str], reference: str, source: str, need: Sequence[str]
) -> dict[str, float | None]:
    """ROUGE-L F, OVL-3, REP-4, words, sentences of one summary (None = undefined)."""
    from eval.metrics import text as tm

    hyp = " ".join(hyp_sentences)
    out: dict[str, float | None] = {}
    if "rouge_l" in need:
        out["rouge_l"] = tm.rouge_l([hyp], [reference]).f
    if "ovl3" in need:
        out["ovl3"] = _finite(tm.ovl3(hyp, source))
    if "rep4" in need:
        out["rep4"] = _finite(tm.rep4(hyp))
    if "words" in need:
        stats = tm.length_stats(hyp_sentences)
        out["words"], out["sentences"] = float(stats.words), float(stats.sentences)
    return out


def _record(key: str, ctx: str, inp: str, **fields: Any) -> dict:
    """One line of ``documents.jsonl``."""
    return {"key": key, "ctx": ctx, "input": inp, **fields}


def _score_batch(items, text_need, model_metrics: ModelMetrics) -> list[dict]:
    """items: [(hyp_sentences, reference, source)] -> per-item metric dicts."""
    scored = [text_metrics(h, r, s, text_need) for h, r, s in items]
    extra = model_metrics.score([h for h, _, _ in items], [s for _, _, s in items])
    for name, values in extra.items():
        for m, v in zip(scored, values):
            m[name] = None if v is None else float(v)
    return scored


# ---------------------------------------------------------------------------------------------
# Teacher-forced next-concept metrics
# ---------------------------------------------------------------------------------------------
@dataclass
class ConceptDoc:
    id: str
    lang: str
    src: torch.Tensor  # (n_src, D) raw
    src_sentences: list[str]
    tgt: torch.Tensor | None  # (n_tgt, D) raw, summarize mode
    tgt_sentences: list[str]


def _read_shards(folder: Path, fields: Sequence[str], max_documents: int | None = None):
    """Rows of a prepared folder: dicts with id, lang and ``<f>_sentences``/``_embeddings``,
    read through the shared shard reader, which verifies every shard first (sizes, checksums,
    finite values, alignment) and names the shard and document of any problem."""
    from lcm.data.shards import iter_shard_rows

    columns = ["id", "lang"] + [f"{f}_{s}" for f in fields for s in ("sentences", "embeddings")]
    for row in iter_shard_rows(folder, columns):
        yield row
        max_documents = None if max_documents is None else max_documents - 1
        if max_documents == 0:
            return


def _training_mean(data_dir: str | None, field: str) -> tuple[torch.Tensor | None, str]:
    """Mean concept of ``field`` over the model's training shards (the mean-concept predictor:
    the best constant guess under l2, fitted without the evaluation documents)."""
    if not data_dir or not Path(data_dir, "manifest.json").exists():
        return None, f"the training shards ({data_dir or 'not recorded'}) are not available"
    total, count = None, 0
    for row in _read_shards(Path(data_dir), [field]):
        v = torch.tensor(row[f"{field}_embeddings"], dtype=torch.float64)  # (n, D)
        total = v.sum(0) if total is None else total + v.sum(0)
        count += v.shape[0]
    if not count:
        return None, f"the training shards {data_dir} hold no {field!r} concepts"
    return (total / count).float(), ""


def _pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    from eval.baselines import pad_documents

    return pad_documents(seqs)


@torch.inference_mode()
def _teacher_forced(model, docs: list[ConceptDoc], max_seq_len: int):
    """Model predictions for every scored position, in the metric layout ``[source, target]``
    (summarize) or ``[document]`` (pretrain): returns x (B, T, D), mask, weight, pred (raw),
    per-document gold sentences, and the documents that could not be laid out."""
    module = model.module
    summarize = model.mode == "summarize"
    device = module.device
    norm = module.normalizer
    model_x, model_loss, model_sep, metric_x, weights, sentences, kept, problems = (
        [],
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    )
    for d in docs:
        if summarize:
            n_tgt = d.tgt.shape[0]
            keep = min(d.src.shape[0], max_seq_len - 1 - n_tgt)
            if keep < 1:
                problems.append(
                    (d, f"{n_tgt} summary concepts do not fit max_seq_len={max_seq_len}")
                )
                continue
            src = d.src[:keep]
            zero = torch.zeros(1, src.shape[1])
            mx = torch.cat(
                [norm.normalize(src.to(device)).cpu(), zero, norm.normalize(d.tgt.to(device)).cpu()]
            )
            loss = torch.zeros(mx.shape[0], dtype=torch.bool)
            loss[keep + 1 :] = True
            sep = torch.zeros(mx.shape[0], dtype=torch.bool)
            sep[keep] = True
            gold = torch.cat([src, d.tgt])  # (keep + n_tgt, D)
            w = torch.zeros(gold.shape[0], dtype=torch.bool)
            w[keep:] = True
            sents = d.src_sentences[:keep] + d.tgt_sentences
        else:
            n = min(d.src.shape[0], max_seq_len)
            if n < 2:
                problems.append((d, "fewer than 2 concepts: nothing to predict"))
                continue
            gold = d.src[:n]
            mx = norm.normalize(gold.to(device)).cpu()
            loss = torch.ones(n, dtype=torch.bool)
            sep = torch.zeros(n, dtype=torch.bool)
            w = torch.ones(n, dtype=torch.bool)
            w[0] = False
            sents = d.src_sentences[:n]
        model_x.append(mx)
        model_loss.append(loss)
        model_sep.append(sep)
        metric_x.append(gold)
        weights.append(w)
        sentences.append(sents)
        kept.append(d)
    if not kept:
        return None, problems
    xb, mask = _pad(model_x)
    loss_b = torch.zeros_like(mask)
    sep_b = torch.zeros_like(mask)
    for i, (lo, se) in enumerate(zip(model_loss, model_sep)):
        loss_b[i, : len(lo)] = lo
        sep_b[i, : len(se)] = se
    batch = {
        "x": xb.to(device),
        "mask": mask.to(device),
        "loss_mask": loss_b.to(device),
        "sep_mask": sep_b.to(device),
        "index": torch.arange(len(kept), device=device),
    }
    out = module.predict_step(batch, 0)
    pred_model = out["pred"].float().cpu()  # (B, Tm, D) raw
    x, xmask = _pad(metric_x)
    weight = torch.zeros_like(xmask)
    pred = torch.zeros_like(x)
    for i, (w, sep) in enumerate(zip(weights, model_sep)):
        weight[i, : len(w)] = w
        n = len(w)
        if sep.any():  # drop the separator slot: model position j > sep predicts gold j - 1
            s = int(sep.nonzero()[0])
            pred[i, :s] = pred_model[i, :s]
            pred[i, s:n] = pred_model[i, s + 1 : n + 1]
        else:
            pred[i, :n] = pred_model[i, :n]
    return (x, xmask, weight, pred, sentences, kept), problems


def concept_sums(
    pred: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    sentences: list[list[str]],
    need: Sequence[str],
    codec: SentenceCodec,
    lang: str,
    lm,
) -> dict[str, list[float]]:
    """``{metric: [sum, count]}`` over the scored positions of one batch, so that batches pool
    exactly (MI is weighted by LM tokens, as in
    :func:`eval.metrics.concepts.mutual_information`)."""
    from eval.metrics import concepts as cm

    out: dict[str, list[float]] = {}

    def add(name: str, values: torch.Tensor) -> None:
        v = values[~values.isnan()].double()
        out[name] = [float(v.sum()), int(v.numel())]

    if "l2" in need:
        add("l2", cm.l2(pred[weight], x[weight]))
    if "par" in need:
        add("par", cm.paraphrasing(pred, x, mask, weight)[weight])
    if "ca" in need:
        add("ca", cm.sequence_contrastive_accuracy(pred, x, weight, mask)[weight])
    if "l2_r" in need or ("mi" in need and lm is not None):
        rt = cm.round_trip_l2(codec, pred[weight], x[weight], lang)
        if "l2_r" in need:
            add("l2_r", rt.l2)
        if "mi" in need and lm is not None:
            bi, ni = weight.nonzero(as_tuple=True)
            ctx = [sentences[b][:n] for b, n in zip(bi.tolist(), ni.tolist())]
            mi = cm.mutual_information(lm, rt.sentences, ctx)
            total = sum(c for v, c in zip(mi.per_sentence, mi.n_tokens) if c)
            out["mi"] = [sum(v * c for v, c in zip(mi.per_sentence, mi.n_tokens) if c), total]
    return out


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
    crosslingual_check: bool = True,
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
            same id. Default: every language of the data into itself, where all codecs have it.
        settings: generation settings to sweep, each a mapping of ``lcm.api.Settings`` fields
            (``max_new_concepts``, ``seed``, ``guidance_scale``,
            ``num_inference_steps``, ...); default: one run with the defaults.
        metrics: any of rouge_l, ovl3, rep4, length, cola, seahorse-q4, seahorse-q5, l2, l2_r,
            par, ca, mi (default: all).
        baselines: text baselines ``lead-K`` and ``random-K`` (default lead-1, lead-3,
            random-3).
        max_documents: most documents per language pair (the first ones, in file order), and
            per language of ``concept_dir``; None for all.
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
        crosslingual_check: also run the codec alone: encode the SRC summary, decode it in TGT,
            BLEU/chrF against the TGT summary.
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
    clash = set(names) & {b[0] for b in base_specs} | set(names) & set(CONCEPT_BASELINES)
    if clash:
        raise ValueError(f"model names {sorted(clash)} clash with baseline names")
    sweep = parse_settings(settings)
    if batch_size < 1 or concept_batch_size < 1:
        raise ValueError("batch_size and concept_batch_size must be >= 1")
    if data is None:
        data = [str(debian_file(x)) for x in DEBIAN_LANGS]

    # ---- data and pairs
    by_lang, skipped_rows, files = load_rows(
        data, text_field, summary_field, id_field, lang_field, out / ".work"
    )
    explicit_pairs = pairs is not None
    pair_list = (
        [parse_pair(p) for p in pairs] if pairs is not None else [Pair(x, x) for x in by_lang]
    )
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

    # ---- models: codec languages (checked before any work)
    from lcm.api import ConceptModel

    def load(i: int) -> ConceptModel:
        return ConceptModel.load(checkpoints[i], codec=codec, device=device)

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
        if len(models_cache) > 1:  # keep one model in memory at a time
            models_cache.pop(min(models_cache))
    if not pair_list:
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
        if crosslingual_check:
            for p in pair_list:
                _run_codec_check(scoring, model, name, p, pair_docs[p.label], base_ctx)
        if concept_dir is not None and concept_need:
            concept_results[name] = _run_concepts(
                model, name, checkpoints[i], Path(concept_dir), concept_need, lm, lm_missing,
                max_documents, concept_batch_size, base_ctx, store, progress,
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
    )
    results["config"] = {
        "checkpoints": dict(zip(names, checkpoints)),
        "data": list(data),
        "files": files,
        "pairs": [p.label for p in pair_list],
        "settings": {label: dataclasses.asdict(s) for label, s in sweep},
        "metrics": wanted,
        "baselines": [b[0] for b in base_specs],
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
    report = render_report(results)
    (out / "report.md").write_text(report, encoding="utf-8")
    results["plots"] = write_plots(results, out) if plots else []
    run = {
        "computed": store.computed,
        "reused": len(store.reused),
        "partial_lines_ignored": store.partial_lines,
        "seconds": round(time.perf_counter() - t0, 2),
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
        return _score_batch(items, self.need, self.model_metrics) if items else []


def _run_baselines(sc: _Scoring, p: Pair, docs, base_specs, baseline_seed: int) -> None:
    from eval import baselines as bl
    from lcm.splitting import SentenceSplitter

    splitter = SentenceSplitter(max_chars=0)  # real sentences: lead-k is not re-split
    for name, kind, k in base_specs:
        ctx = _sha("baseline", kind, k, baseline_seed if kind == "random" else None)
        todo = []
        for row, ref in docs:
            key = sc.store.key("baseline", name, p.label, "-", row.id)
            if sc.store.get(key, ctx, _sha(row.text, ref), sc.need) is None:
                todo.append((key, row, ref))
        items = []
        for _key, row, ref in todo:
            sents = splitter.split(row.text, p.src)
            if kind == "lead":
                hyp = bl.lead_k(sents, k)
            else:  # the seed depends on the document alone, so resuming draws the same
                hyp = bl.random_k(sents, k, int(_sha(baseline_seed, row.id), 16))
            items.append((hyp, ref, row.text))
        sc.store.add(
            [
                _record(key, ctx, _sha(row.text, ref), kind="baseline", system=name,
                        pair=p.label, setting="-", id=row.id, hypothesis=" ".join(item[0]),
                        reference=ref, metrics=metrics)
                for (key, row, ref), item, metrics in zip(todo, items, sc.score(items))
            ]
        )  # fmt: skip


def _run_codec_check(sc: _Scoring, model, name: str, p: Pair, docs, base_ctx) -> None:
    """Encode each reference summary in the source language, decode it in the target one."""
    from tqdm.auto import tqdm

    ctx = _sha("codec", *base_ctx)
    todo = []
    for row, ref in docs:
        key = sc.store.key("codec", name, p.label, "-", row.id)
        if sc.store.get(key, ctx, _sha(row.summary, ref)) is None:
            todo.append((key, row, ref))
    bar = tqdm(total=len(todo), desc=f"codec {name} {p.label}", disable=not sc.progress or not todo)
    for s in range(0, len(todo), 64):
        chunk = todo[s : s + 64]
        vectors = model.codec.encode([row.summary for _, row, _ in chunk], p.src)  # (b, D)
        hyps = model.codec.decode(vectors, p.tgt)
        sc.store.add(
            [
                _record(key, ctx, _sha(row.summary, ref), kind="codec", system=name,
                        pair=p.label, setting="-", id=row.id, hypothesis=h, reference=ref)
                for (key, row, ref), h in zip(chunk, hyps)
            ]
        )  # fmt: skip
        bar.update(len(chunk))
    bar.close()


def _run_summaries(sc: _Scoring, model, name, p: Pair, docs, label, settings, batch_size,
                   base_ctx) -> None:  # fmt: skip
    """Summarize ``docs`` in fixed batches; a batch is generated when any member is missing."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(docs), desc=f"{name} {p.label} {label}", disable=not sc.progress)
    for start in range(0, len(docs), batch_size):
        chunk = docs[start : start + batch_size]
        # a document's output depends on its batch (padding, the shared noise generator)
        ctx = _sha("model", *base_ctx, dataclasses.asdict(settings), [r.id for r, _ in chunk])
        todo = []
        for j, (row, ref) in enumerate(chunk):
            key = sc.store.key("model", name, p.label, label, row.id)
            if sc.store.get(key, ctx, _sha(row.text, ref), sc.need) is None:
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
            for k, j in enumerate(ok):
                concepts = out.concepts[k]  # (n, D) raw
                sents = model.codec.decode(concepts.cpu(), p.tgt) if len(concepts) else []
                sents = [x for x in sents if x != model.end_of_text]
                generated[j] = (sents, out.stop_reasons[k], int(len(concepts)))
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
                _record(key, ctx, _sha(row.text, ref), **common, hypothesis=" ".join(sents),
                        reference=ref, metrics=scored[j], stop_reason=reason, concepts=n)
            )  # fmt: skip
        else:
            records.append(_record(key, ctx, _sha(row.text, ref), **common, error=error[j]))
    return records


def _run_concepts(
    model,
    name,
    checkpoint,
    folder,
    need,
    lm,
    lm_missing,
    max_documents,
    concept_batch_size,
    base_ctx,
    store,
    progress,
) -> dict:
    """Teacher-forced metrics of one model and its concept baselines, per language."""
    from tqdm.auto import tqdm

    from eval import baselines as bl
    from lcm.train.module import read_checkpoint

    manifest = (
        json.loads((folder / "manifest.json").read_text())
        if (folder / "manifest.json").exists()
        else None
    )
    if manifest is None:
        raise FileNotFoundError(
            f"concept_dir {folder} has no manifest.json; make it with `lcm prepare`"
        )
    if manifest.get("codec") != model.codec.codec_id:
        raise ValueError(
            f"concept_dir {folder} was prepared with codec {manifest.get('codec')!r}, but model "
            f"{name!r} uses {model.codec.codec_id!r}"
        )
    data_hp = read_checkpoint(checkpoint).get("datamodule_hyper_parameters") or {}
    src_field = data_hp.get("text_field") or manifest["text_field"]
    tgt_field = None
    if model.mode == "summarize":
        targets = manifest.get("target_fields") or []
        tgt_field = data_hp.get("target_field") or (targets[0] if targets else None)
        if tgt_field not in targets:
            raise ValueError(
                f"concept_dir {folder} has no target field {tgt_field!r} (it has {targets}); "
                f"the summarization model {name!r} needs it: prepare with --target_fields"
            )
    max_seq_len = int(data_hp.get("max_seq_len", 128))
    fields = [src_field] + ([tgt_field] if tgt_field else [])
    train_ids: set[str] = set()
    train_dir = data_hp.get("data_dir")
    if train_dir and Path(train_dir, "manifest.json").exists():
        train_ids = {r["id"] for r in _read_shards(Path(train_dir), fields)}
    mean, mean_missing = _training_mean(train_dir, tgt_field or src_field)
    by_lang: dict[str, list[ConceptDoc]] = {}
    for r in _read_shards(folder, fields):
        docs = by_lang.setdefault(r["lang"], [])
        if max_documents is not None and len(docs) >= max_documents:
            continue
        docs.append(
            ConceptDoc(
                r["id"],
                r["lang"],
                torch.tensor(r[f"{src_field}_embeddings"], dtype=torch.float32),
                list(r[f"{src_field}_sentences"]),
                torch.tensor(r[f"{tgt_field}_embeddings"], dtype=torch.float32)
                if tgt_field
                else None,
                list(r[f"{tgt_field}_sentences"]) if tgt_field else [],
            )
        )
    systems = [name, *CONCEPT_BASELINES]
    result: dict[str, Any] = {
        "concept_dir": str(folder),
        "mode": model.mode,
        "fields": fields,
        "max_seq_len": max_seq_len,
        "in_training_shards": sum(d.id in train_ids for v in by_lang.values() for d in v),
        "missing": {},
        "languages": {},
        "not_used": [],
    }
    if "mi" in need and lm is None:
        result["missing"]["mi"] = f"no language model for MI: {lm_missing}"
    if mean is None:
        result["missing"]["mean-concept"] = mean_missing
    need_now = [m for m in need if not (m == "mi" and lm is None)]
    for lang, docs in sorted(by_lang.items()):
        if lang not in model.codec.langs:
            result["not_used"] += [{"id": d.id, "reason": f"codec has no {lang}"} for d in docs]
            continue
        sums: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
        bar = tqdm(total=len(docs), desc=f"concepts {name} {lang}", disable=not progress)
        for start in range(0, len(docs), concept_batch_size):
            chunk = docs[start : start + concept_batch_size]
            unit = _sha([d.id for d in chunk])
            ctx = _sha("concepts", *base_ctx, manifest.get("input_sha256"), max_seq_len, fields)
            keys = {
                s: store.key("concepts", s if s == name else f"{name}|{s}", lang, "-", unit)
                for s in systems
            }
            got = {}
            for s in systems:
                if s == "mean-concept" and mean is None:
                    continue
                rec = store.get(keys[s], ctx, unit, need_now)
                if rec is not None:
                    got[s] = rec
            todo = [
                s for s in systems if s not in got and not (s == "mean-concept" and mean is None)
            ]
            if todo:
                laid, problems = _teacher_forced(model, chunk, max_seq_len)
                records = []
                if laid is not None:
                    x, mask, weight, pred, sentences, kept = laid
                    preds = {name: (pred, weight)}
                    cp, d_cp = bl.copy_previous(x, mask)
                    preds["copy-previous"] = (cp, weight & d_cp)
                    cm_, d_cm = bl.context_mean(x, mask)
                    preds["context-mean"] = (cm_, weight & d_cm)
                    if mean is not None:
                        cst, d_c = bl.constant_mean(x, mean, mask)
                        preds["mean-concept"] = (cst, weight & d_c)
                for s in todo:
                    values: dict[str, list[float]] = {m: [0.0, 0] for m in need_now}
                    if laid is not None:
                        pr, w = preds[s]
                        values = concept_sums(
                            pr, x, w, mask, sentences, need_now, model.codec, lang, lm
                        )
                    records.append(
                        {
                            "key": keys[s],
                            "ctx": ctx,
                            "input": unit,
                            "kind": "concepts",
                            "system": s,
                            "model": name,
                            "pair": lang,
                            "setting": "-",
                            "unit": unit,
                            "metrics": values,
                            "not_used": [{"id": d.id, "reason": why} for d, why in problems],
                        }
                    )
                store.add(records)
                for rec in records:
                    got[rec["system"]] = rec
            for s, rec in got.items():
                for metric, (total, count) in rec["metrics"].items():
                    acc = sums[s].setdefault(metric, [0.0, 0])
                    acc[0] += total
                    acc[1] += count
            result["not_used"] += got[name]["not_used"]
            bar.update(len(chunk))
        bar.close()
        table = []
        for s in systems:
            if s == "mean-concept" and mean is None:
                continue
            row = {"system": s, "kind": "model" if s == name else "baseline"}
            for metric in need:
                total, count = sums[s].get(metric, (0.0, 0))
                row[metric] = total / count if count else None
            row["positions"] = int(sums[s].get("l2", (0, 0))[1]) if "l2" in need else None
            table.append(row)
        result["languages"][lang] = {"documents": len(docs), "systems": table}
    return result


# ---------------------------------------------------------------------------------------------
# Aggregation and report
# ---------------------------------------------------------------------------------------------
def _mean(values: list[float | None]) -> tuple[float | None, int]:
    finite = [v for v in values if v is not None]
    return (sum(finite) / len(finite) if finite else None), len(values) - len(finite)


def aggregate(
    store,
    names,
    model_info,
    base_specs,
    sweep,
    pair_list,
    pair_docs,
    need,
    model_metrics,
    wanted,
    codec_check,
) -> dict:
    """Tables from the per-document records of the current configuration."""
    from eval.metrics.crosslingual import score_translations

    summarization: dict[str, list[dict]] = {}
    failures: list[dict] = []
    metric_cols = list(need) + [m for m in model_metrics.missing]
    for p in pair_list:
        rows = []
        docs = pair_docs[p.label]
        systems = [(n, "model", label) for n in names for label, _ in sweep]
        systems += [(b[0], "baseline", "-") for b in base_specs]
        for system, kind, label in systems:
            recs = [store.records[store.key(kind, system, p.label, label, r.id)] for r, _ in docs]
            good = [r for r in recs if "error" not in r]
            for r in recs:
                if "error" in r:
                    failures.append({k: r[k] for k in ("system", "pair", "setting", "id", "error")})
            row: dict[str, Any] = {
                "system": system,
                "kind": kind,
                "setting": label,
                "documents": len(good),
                "failed": len(recs) - len(good),
            }
            for metric in metric_cols:
                if metric in model_metrics.missing:
                    row[metric] = "missing"
                    continue
                value, undefined = _mean([r["metrics"].get(metric) for r in good])
                row[metric] = value
                if undefined:
                    row[f"{metric}_undefined"] = undefined
            if kind == "model":
                reasons: dict[str, int] = {}
                for r in good:
                    reasons[r["stop_reason"]] = reasons.get(r["stop_reason"], 0) + 1
                row["stop_reasons"] = dict(sorted(reasons.items()))
            rows.append(row)
        summarization[p.label] = rows
    out: dict[str, Any] = {
        "summarization": summarization,
        "metric_columns": metric_cols,
        "missing_metrics": dict(model_metrics.missing),
        "failures": failures,
    }
    if codec_check:
        table: dict[str, dict] = {}
        for name in names:
            table[name] = {"codec": model_info[name]["codec"], "pairs": {}}
            for p in pair_list:
                recs = [
                    store.records[store.key("codec", name, p.label, "-", r.id)]
                    for r, _ in pair_docs[p.label]
                ]
                sc = score_translations(
                    [r["hypothesis"] for r in recs], [r["reference"] for r in recs], p.tgt
                )
                table[name]["pairs"][p.label] = {
                    "sentences": len(recs),
                    "bleu": sc.bleu,
                    "chrf": sc.chrf,
                    "bleu_label": sc.tokenizer.label,
                    "note": sc.tokenizer.note,
                    "bleu_signature": sc.bleu_signature,
                    "chrf_signature": sc.chrf_signature,
                }
        out["codec_check"] = table
    return out


def fmt(value: Any) -> str:
    """How a number appears in report.md (4 decimals; ``n/a`` = undefined everywhere)."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.4f}"


def _stops(reasons: dict[str, int] | None) -> str:
    """``eot 97, max_length 3``: why generation ended (``-`` for baselines)."""
    return ", ".join(f"{k} {v}" for k, v in reasons.items()) if reasons else "-"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def _system_label(row: dict, sweep: bool) -> str:
    return (
        f"{row['system']} [{row['setting']}]" if sweep and row["kind"] == "model" else row["system"]
    )


def render_report(results: dict) -> str:
    """report.md from the results (no timings: a resumed run writes the same file)."""
    cfg = results["config"]
    lines = ["# Evaluation report", ""]
    lines.append(
        "Scores are fractions in [0, 1] (ROUGE-L F1 against the reference; OVL-3: share of the "
        "summary's word 3-grams found in the source document; REP-4: share of repeated word "
        "4-grams); words and sentences are means per summary. `n/a`: undefined for every "
        "document (too short); `missing`: the metric's model is not available (reasons below)."
    )
    lines.append("")
    lines.append("Models:")
    for name, info in results["models"].items():
        lines.append(
            f"- `{name}`: `{info['checkpoint']}` ({info['family']}, {info['mode']}, codec "
            f"`{info['codec']}`)"
        )
    lines.append(
        f"\nData: {', '.join(f'`{f}`' for f in cfg['files'])}; documents per language: "
        + ", ".join(f"{k} {v}" for k, v in results["data"]["documents_per_lang"].items())
    )
    lines.append(f"Generation settings: {', '.join(f'`{k}`' for k in cfg['settings'])}.\n")
    cols = results["metric_columns"]
    sweep = len(cfg["settings"]) > 1
    lines.append("## Summarization\n")
    for pair, rows in results["summarization"].items():
        n = results["data"]["pair_documents"][pair]
        lines.append(f"### {pair.replace('->', ' -> ')} ({n} documents)\n")
        header = ["system", "setting", "docs", "failed", *[LABELS.get(c, c) for c in cols]]
        header.append("stopped by")
        body = [
            [r["system"], r["setting"], str(r["documents"]), str(r["failed"])]
            + [fmt(r.get(c)) for c in cols]
            + [_stops(r.get("stop_reasons"))]
            for r in rows
        ]
        lines += _md_table(header, body)
    pairs = [tuple(p.split("->")) for p in results["summarization"]]
    if len(pairs) > 1 or any(a != b for a, b in pairs):
        srcs = sorted({a for a, _ in pairs})
        tgts = sorted({b for _, b in pairs})
        lines.append("## Cross-lingual matrices (rows: source language, columns: target)\n")
        for c in cols:
            lines.append(f"### {LABELS.get(c, c)}\n")
            systems = []
            for rows in results["summarization"].values():
                for r in rows:
                    label = _system_label(r, sweep)
                    if label not in systems:
                        systems.append(label)
            for label in systems:
                cell = {}
                for pair, rows in results["summarization"].items():
                    for r in rows:
                        if _system_label(r, sweep) == label:
                            cell[tuple(pair.split("->"))] = fmt(r.get(c))
                lines.append(f"`{label}`\n")
                body = [[a] + [cell.get((a, b), "-") for b in tgts] for a in srcs]
                lines += _md_table(["source \\ target", *tgts], body)
    if "concepts" in results:
        lines.append("## Teacher-forced next-concept metrics\n")
        lines.append(
            "Paper section 2.4.1, in the codec's space, on the held-out shards "
            f"`{cfg['concept_dir']}`; the CA pool is a batch of {cfg['concept_batch_size']} "
            "documents. mean-concept predicts the mean training concept.\n"
        )
        cmetrics = [m for m in cfg["metrics"] if m in CONCEPT_METRICS]
        for name, res in results["concepts"].items():
            for lang, block in res["languages"].items():
                lines.append(
                    f"### {name}: {lang} ({block['documents']} documents, {res['mode']})\n"
                )
                header = ["system", "positions", *[LABELS[m] for m in cmetrics]]
                body = [
                    [r["system"], str(r["positions"])]
                    + [
                        "missing" if m in res["missing"] and r.get(m) is None else fmt(r.get(m))
                        for m in cmetrics
                    ]
                    for r in block["systems"]
                ]
                lines += _md_table(header, body)
            for what, why in res["missing"].items():
                lines.append(f"- {what} missing: {why}")
            if res["in_training_shards"]:
                lines.append(
                    f"- warning: {res['in_training_shards']} of these documents are also in the "
                    "model's training shards"
                )
            for nu in res["not_used"]:
                lines.append(f"- not used: {nu['id']}: {nu['reason']}")
            lines.append("")
    if "codec_check" in results:
        lines.append("## Codec cross-lingual check\n")
        lines.append(
            "The codec alone: encode the reference summary in the source language, decode it in "
            "the target language, score against the target-language summary (corpus scores, "
            "0-100).\n"
        )
        body = []
        for name, block in results["codec_check"].items():
            for pair, s in block["pairs"].items():
                body.append(
                    [
                        name,
                        f"`{block['codec']}`",
                        pair,
                        str(s["sentences"]),
                        s["bleu_label"],
                        fmt(s["bleu"]),
                        fmt(s["chrf"]),
                    ]
                )
        lines += _md_table(
            ["model", "codec", "pair", "sentences", "BLEU kind", "BLEU", "chrF"], body
        )
        if len(pairs) > 1 or any(a != b for a, b in pairs):
            srcs = sorted({a for a, _ in pairs})
            tgts = sorted({b for _, b in pairs})
            for metric in ("bleu", "chrf"):
                for name, block in results["codec_check"].items():
                    lines.append(f"### Codec {LABELS[metric]}: `{name}`\n")
                    cell = {tuple(k.split("->")): fmt(v[metric]) for k, v in block["pairs"].items()}
                    body = [[a] + [cell.get((a, b), "-") for b in tgts] for a in srcs]
                    lines += _md_table(["source \\ target", *tgts], body)
        notes = sorted(
            {
                s["note"]
                for b in results["codec_check"].values()
                for s in b["pairs"].values()
                if s["note"]
            }
        )
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines.append("## Not evaluated\n")
    listed = 0
    for what, why in results["missing_metrics"].items():
        lines.append(f"- metric {LABELS.get(what, what)} missing: {why}")
        listed += 1
    for item in results["data"]["pairs_not_run"]:
        lines.append(f"- {item['reason']}")
        listed += 1
    for row in results["data"]["rows_not_used"]:
        lines.append(f"- {Path(row['file']).name} row {row['row']} ({row['id']}): {row['reason']}")
        listed += 1
    for pair, items in results["data"]["pair_documents_not_used"].items():
        for item in items:
            lines.append(f"- {pair} {item['id']}: {item['reason']}")
            listed += 1
    for f in results["failures"]:
        lines.append(f"- {f['system']} {f['pair']} [{f['setting']}] {f['id']}: {f['error']}")
        listed += 1
    if not listed:
        lines.append("Nothing: every document was evaluated.")
    return "\n".join(lines).rstrip() + "\n"


def write_plots(results: dict, out: Path) -> list[str]:
    """``plot_<metric>_by_pair.png`` and, for a sweep, ``plot_<metric>_by_setting.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    cfg = results["config"]
    sweep = len(cfg["settings"]) > 1
    pairs = list(results["summarization"])
    cols = [m for m in PLOT_METRICS if m in results["metric_columns"]]
    for metric in cols:
        systems: list[str] = []
        values: dict[tuple[str, str], float] = {}
        for pair, rows in results["summarization"].items():
            for r in rows:
                label = _system_label(r, sweep)
                if label not in systems:
                    systems.append(label)
                if isinstance(r.get(metric), float):
                    values[(label, pair)] = r[metric]
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(pairs) * max(1, len(systems)) / 3), 3.5))
        width = 0.8 / max(1, len(systems))
        for k, label in enumerate(systems):
            xs = [i + k * width for i in range(len(pairs))]
            ax.bar(xs, [values.get((label, p), 0.0) for p in pairs], width, label=label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(pairs))])
        ax.set_xticklabels([p.replace("->", "\n-> ") for p in pairs], fontsize=8)
        ax.set_ylabel(LABELS[metric])
        ax.set_title(f"{LABELS[metric]} per language pair")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out / f"plot_{metric}_by_pair.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path.name)
        if not sweep:
            continue
        labels = list(cfg["settings"])
        varying = [
            k
            for k in cfg["settings"][labels[0]]
            if len({json.dumps(cfg["settings"][lb][k]) for lb in labels}) > 1
        ]
        numeric = len(varying) == 1 and all(
            isinstance(cfg["settings"][lb][varying[0]], int | float) for lb in labels
        )
        xs = (
            [cfg["settings"][lb][varying[0]] for lb in labels]
            if numeric
            else list(range(len(labels)))
        )
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for pair, rows in results["summarization"].items():
            for name in results["models"]:
                ys = []
                for lb in labels:
                    r = next(r for r in rows if r["system"] == name and r["setting"] == lb)
                    ys.append(r[metric] if isinstance(r.get(metric), float) else float("nan"))
                ax.plot(xs, ys, marker="o", label=f"{name} {pair}")
            for r in rows:
                if r["kind"] == "baseline" and isinstance(r.get(metric), float):
                    ax.axhline(r[metric], linestyle="--", linewidth=0.8, color="gray")
                    ax.annotate(
                        f"{r['system']} {pair}", (xs[0], r[metric]), fontsize=6, color="gray"
                    )
        ax.set_xlabel(varying[0] if numeric else "setting")
        if not numeric:
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, fontsize=6, rotation=20)
        ax.set_ylabel(LABELS[metric])
        ax.set_title(f"{LABELS[metric]} per generation setting (dashed: baselines)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out / f"plot_{metric}_by_setting.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path.name)
    return written


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Console entry point (``lcm-eval``, ``python -m eval``): options from :func:`evaluate`,
    ``--help`` from its docstring. Prints the report and returns the results."""
    import sys

    from jsonargparse import CLI

    args = sys.argv[1:] if argv is None else list(argv)
    prog = prog or Path(sys.argv[0]).name or "lcm-eval"
    results = CLI(evaluate, args=args, as_positional=False, prog=prog)
    out = Path(results["config"].get("out_dir", ""))
    report = (out / "report.md") if out.name else None
    if report is not None and report.exists():
        print(report.read_text(encoding="utf-8"))
    print(json.dumps(results["run"]))
    return results
