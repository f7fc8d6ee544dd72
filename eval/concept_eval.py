"""Teacher-forced next-concept metrics of a checkpoint on held-out ``lcm prepare`` shards
(l2, l2-r, PAR, CA, MI; LCM paper section 2.4.1) beside the concept baselines, per group of
documents (:func:`run_concepts`, the concept part of ``lcm eval``)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from encoders.base import SentenceCodec
from eval.inputs import sha
from eval.names import CONCEPT_BASELINES
from lcm.progress import Progress


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


def read_concept_docs(
    folder: Path,
    fields: Sequence[str],
    max_documents: int | None = None,
    columns: Sequence[str] = (),
):
    """Rows of a prepared folder: dicts with id, lang, ``<f>_sentences``/``_embeddings`` and
    any further ``columns``,
    read through the shared shard reader, which verifies every shard first (sizes, checksums,
    finite values, alignment) and names the shard and document of any problem."""
    from lcm.data.shards import iter_shard_rows

    wanted = ["id", "lang"] + [f"{f}_{s}" for f in fields for s in ("sentences", "embeddings")]
    wanted += [c for c in columns if c not in wanted]
    for row in iter_shard_rows(folder, wanted):
        yield row
        max_documents = None if max_documents is None else max_documents - 1
        if max_documents == 0:
            return


def training_mean(data_dir: str | None, field: str) -> tuple[torch.Tensor | None, str]:
    """Mean concept of ``field`` over the model's training shards (the mean-concept predictor:
    the best constant guess under l2, fitted without the evaluation documents)."""
    if not data_dir or not Path(data_dir, "manifest.json").exists():
        return None, f"the training shards ({data_dir or 'not recorded'}) are not available"
    total, count = None, 0
    for row in read_concept_docs(Path(data_dir), [field]):
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
def teacher_forced(model, docs: list[ConceptDoc], max_seq_len: int):
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


def run_concepts(
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
    max_len: int | str = "model",
    group_by: str = "lang",
    group_pattern: str | None = None,
) -> dict:
    """Teacher-forced metrics of one model and its concept baselines, per group of documents
    (``group_by``: a shard column, optionally cut by ``group_pattern``)."""
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
    model_len = int(data_hp.get("max_seq_len", 128))
    max_seq_len = model_len if max_len == "model" else None if max_len == "whole" else int(max_len)
    if max_seq_len is not None and max_seq_len < 2:
        raise ValueError(f"concept_max_len must be >= 2, 'model' or 'whole', got {max_len!r}")
    fields = [src_field] + ([tgt_field] if tgt_field else [])
    columns = _shard_columns(folder)
    if group_by not in columns:
        raise ValueError(
            f"group_by {group_by!r} is not a column of the concept_dir shards {folder} "
            f"(columns: {[c for c in columns if not c.endswith('_embeddings')]})"
        )
    train_ids: set[str] = set()
    train_dir = data_hp.get("data_dir")
    if train_dir and Path(train_dir, "manifest.json").exists():
        train_ids = {r["id"] for r in read_concept_docs(Path(train_dir), fields)}
    mean, mean_missing = training_mean(train_dir, tgt_field or src_field)
    by_group: dict[str, list[ConceptDoc]] = {}
    available: dict[str, int] = {}
    extra = [] if group_by in ("id", "lang") else [group_by]
    for r in read_concept_docs(folder, fields, columns=extra):
        group = _group_of(r[group_by], group_pattern)
        available[group] = available.get(group, 0) + 1
        docs = by_group.setdefault(group, [])
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
        "max_len": max_seq_len,  # None: whole documents
        "model_max_seq_len": model_len,
        "group_by": group_by,
        "group_pattern": group_pattern,
        "in_training_shards": sum(d.id in train_ids for v in by_group.values() for d in v),
        "missing": {},
        "groups": {},
        "not_used": [],
    }
    if "mi" in need and lm is None:
        result["missing"]["mi"] = f"no language model for MI: {lm_missing}"
    if mean is None:
        result["missing"]["mean-concept"] = mean_missing
    need_now = [m for m in need if not (m == "mi" and lm is None)]
    for group, group_docs in sorted(by_group.items()):
        sums: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
        cut = _cut_stats(group_docs, max_seq_len, model.mode == "summarize")
        bar = Progress(
            f"concepts {name} {group}", len(group_docs), "documents", progress, prefix="lcm eval"
        )
        chunks = []  # batches of one language each (round-trip decoding is per language)
        for lang in sorted({d.lang for d in group_docs}):
            docs = [d for d in group_docs if d.lang == lang]
            if lang not in model.codec.langs:
                result["not_used"] += [{"id": d.id, "reason": f"codec has no {lang}"} for d in docs]
                bar.update(len(docs))
                continue
            for start in range(0, len(docs), concept_batch_size):
                chunks.append((lang, docs[start : start + concept_batch_size]))
        for lang, chunk in chunks:
            unit = sha([d.id for d in chunk])
            window = max_seq_len or 1 + max(
                d.src.shape[0] + (0 if d.tgt is None else d.tgt.shape[0]) for d in chunk
            )
            ctx = sha("concepts", *base_ctx, manifest.get("input_sha256"), max_seq_len, fields)
            label = lang if group_by == "lang" else f"{group_by}={group}|{lang}"
            keys = {
                s: store.key("concepts", s if s == name else f"{name}|{s}", label, "-", unit)
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
                laid, problems = teacher_forced(model, chunk, window)
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
                            "pair": label,
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
        result["groups"][group] = {
            "documents": len(group_docs),
            "documents_available": available[group],
            **cut,
            "systems": table,
        }
    return result


def _shard_columns(folder: Path) -> list[str]:
    """Column names of a prepared folder's shards (from the first shard's schema)."""
    from lcm.data.shards import read_schema

    shards = sorted((folder / "shards").glob("*.parquet"))
    return list(read_schema(shards[0]).names) if shards else []


def _group_of(value: Any, pattern: str | None) -> str:
    """The group of a document: its ``group_by`` value, cut by ``pattern`` when given."""
    text = str(value)
    if pattern is None:
        return text
    m = re.search(pattern, text)
    if m is None:
        return "(no match)"
    return m.group(1) if m.groups() else m.group(0)


def _cut_stats(docs: list[ConceptDoc], max_len: int | None, summarize: bool) -> dict[str, int]:
    """How a window of ``max_len`` concepts cuts the documents: documents cut, and positions
    left out (a summary's source concepts cut from the context, or a document's concepts past
    the window, which are not scored)."""
    cut = dropped = 0
    for d in docs:
        if max_len is None:
            continue
        if summarize:
            over = d.src.shape[0] - max(0, max_len - 1 - d.tgt.shape[0])
        else:
            over = d.src.shape[0] - max_len
        if over > 0:
            cut += 1
            dropped += over
    return {"documents_cut": cut, "positions_left_out": dropped}
