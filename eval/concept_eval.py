"""Teacher-forced next-concept metrics of a checkpoint on held-out ``lcm prepare`` shards
(l2, l2-r, PAR, CA, MI; LCM paper section 2.4.1) beside the concept baselines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from encoders.base import SentenceCodec


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
