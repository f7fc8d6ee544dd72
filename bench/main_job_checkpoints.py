"""The main job's score table for any checkpoint, paired against a baseline checkpoint's scores.

    python bench/main_job_checkpoints.py --job_dir DIR --ckpt CKPT --split valid|test \
        --out OUT.json [--baseline EARLIER_OUT.json]

``job_dir`` is a ``python -m lcm.demo`` folder (its data and shards); ``ckpt`` is any summarizer
fitted on its shards (e.g. a refit with other settings). Every document of ``split`` is scored as
the job scores it: the guarded bank (:func:`lcm.demo.leave_out_references`), one predicted
concept per document, the codec's default (nearest) decoding, and :func:`lcm.demo._rouge_table`
for the floors, the ceiling and the ratio interval. ``out`` keeps the table, the document ids,
the summaries and the per-document ROUGE-L; with ``baseline`` (an earlier ``out`` of the same
split) it adds the paired model-minus-baseline difference with its bootstrap interval over the
documents (:func:`eval.report.bootstrap_interval`) and how many summaries differ.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from encoders.minilm import MiniLMCodec
from eval.report import bootstrap_interval
from lcm.demo import _rouge_table, load_guarded, sample_documents


def main(
    job_dir: str,
    ckpt: str,
    split: Literal["valid", "test"],
    out: str,
    baseline: str | None = None,
) -> dict:
    """Score ``ckpt`` on every document of ``split``; write the result to ``out`` (JSON)."""
    from rouge_score import rouge_scorer

    job = Path(job_dir)
    base = json.loads(Path(baseline).read_text()) if baseline else None
    codec = MiniLMCodec()
    model, held_out, left_out = load_guarded(job, ckpt, codec)
    docs = sample_documents(held_out[split], len(held_out[split]))  # all, in the job's order
    if base is not None and base["ids"] != [r["id"] for r in docs]:
        raise ValueError(f"{baseline} scored other documents than {split} of {job}")
    start = time.time()
    summaries = model.summarize(
        [r["text"] for r in docs], source_lang="eng_Latn", max_new_concepts=1
    )
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    per_doc = [scorer.score(r["summary"], s)["rougeL"].fmeasure for r, s in zip(docs, summaries)]
    result = {
        "ckpt": str(ckpt),
        "split": split,
        "bank": {"sentences": codec.bank.count("eng_Latn"), "references_left_out": left_out},
        "table": _rouge_table(docs, summaries, codec, model),
        "ids": [r["id"] for r in docs],
        "per_doc": per_doc,
        "summaries": summaries,
    }
    if base is not None:
        diff = [100 * (a - b) for a, b in zip(per_doc, base["per_doc"])]
        interval = bootstrap_interval(diff)
        result["minus_baseline"] = {
            "baseline": base["ckpt"],
            "mean": round(sum(diff) / len(diff), 2),
            "95% interval": None if interval is None else [round(v, 2) for v in interval],
            "summaries differing": sum(a != b for a, b in zip(summaries, base["summaries"])),
        }
    result["seconds"] = round(time.time() - start, 1)
    Path(out).write_text(json.dumps(result, indent=1))
    shown = ("ckpt", "bank", "table", "minus_baseline", "seconds")
    print(json.dumps({k: result[k] for k in shown if k in result}), flush=True)
    return result


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
