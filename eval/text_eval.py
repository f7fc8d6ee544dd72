"""Summarization metrics per document: ROUGE-L, OVL-3, REP-4, lengths, and the model-scored
metrics (CoLA, SEAHORSE) that report "missing" without their models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eval.records import finite_or_none


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
        out["ovl3"] = finite_or_none(tm.ovl3(hyp, source))
    if "rep4" in need:
        out["rep4"] = finite_or_none(tm.rep4(hyp))
    if "words" in need:
        stats = tm.length_stats(hyp_sentences)
        out["words"], out["sentences"] = float(stats.words), float(stats.sentences)
    return out


def make_record(key: str, ctx: str, inp: str, **fields: Any) -> dict:
    """One line of ``documents.jsonl``."""
    return {"key": key, "ctx": ctx, "input": inp, **fields}


def score_batch(items, text_need, model_metrics: ModelMetrics) -> list[dict]:
    """items: [(hyp_sentences, reference, source)] -> per-item metric dicts."""
    scored = [text_metrics(h, r, s, text_need) for h, r, s in items]
    extra = model_metrics.score([h for h, _, _ in items], [s for _, _, s in items])
    for name, values in extra.items():
        for m, v in zip(scored, values):
            m[name] = None if v is None else float(v)
    return scored
