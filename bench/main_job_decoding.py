"""The main job's scores under several retrieval decodings, with a fitted checkpoint (no refit).

    python bench/main_job_decoding.py --job_dir DIR --split valid|test --out OUT.json \
        --settings '[nearest, mbr_rouge:10:0.05, ...]'

``job_dir`` is a finished ``python -m lcm.demo`` folder (its ``run/checkpoints/last.ckpt``, its
data); every document of ``split`` is scored. A setting is ``nearest`` or
``RULE:K:TEMPERATURE`` (e.g. ``mbr_rouge:10:0.05``). The model's concepts are predicted once;
each setting then decodes them, and :func:`lcm.demo._rouge_table` decodes the floors and the
ceiling, with the codec under that setting (the main job's table, guarded bank as in the job).
For each setting: the table, and the paired bootstrap interval of the model's per-document
ROUGE-L minus its ROUGE-L under the first setting (:func:`eval.report.bootstrap_interval`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from encoders.minilm import MiniLMCodec
from encoders.retrieval import RetrievalDecoding
from eval.report import bootstrap_interval
from lcm.demo import _rouge_table, load_guarded, sample_documents


def parse(setting: str) -> RetrievalDecoding:
    if setting == "nearest":
        return RetrievalDecoding()
    rule, k, temperature = setting.split(":")
    return RetrievalDecoding(rule=rule, k=int(k), temperature=float(temperature))


def main(job_dir: str, split: Literal["valid", "test"], out: str, settings: list[str]) -> dict:
    """Score the job's checkpoint on ``split`` under each of ``settings`` (the first is the
    baseline of the paired differences); write the tables to ``out`` (JSON) after each."""
    from rouge_score import rouge_scorer

    job, dst = Path(job_dir), Path(out)

    decodings = [parse(s) for s in settings]  # a bad setting fails before any work
    codec = MiniLMCodec()
    model, held_out, left_out = load_guarded(job, job / "run" / "checkpoints" / "last.ckpt", codec)
    docs = sample_documents(held_out[split], len(held_out[split]))  # all, in the job's order
    start = time.time()
    predicted = model.predict_concepts(
        [r["text"] for r in docs], source_lang="eng_Latn", max_new_concepts=1
    )
    print(f"{len(docs)} {split} documents predicted in {time.time() - start:.0f} s", flush=True)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    refs = [r["summary"] for r in docs]
    results = {
        "job": str(job),
        "split": split,
        "bank": {"sentences": codec.bank.count("eng_Latn"), "references_left_out": left_out},
        "settings": {},
    }
    first, first_summaries = None, None
    for setting, decoding in zip(settings, decodings):
        start = time.time()
        codec.decoding = decoding
        summaries = [" ".join(s) for s in model.render_sentences(predicted, "eng_Latn")]
        per_doc = [scorer.score(a, b)["rougeL"].fmeasure for a, b in zip(refs, summaries)]
        table = _rouge_table(docs, summaries, codec, model)
        if first is None:
            first, first_summaries = per_doc, summaries
        diff = [100 * (a - b) for a, b in zip(per_doc, first)]
        table[f"model minus {settings[0]}"] = round(sum(diff) / len(diff), 2)
        interval = bootstrap_interval(diff)
        table[f"model minus {settings[0]}, 95% interval"] = (
            None if interval is None else [round(v, 2) for v in interval]
        )
        changed = sum(a != b for a, b in zip(summaries, first_summaries))
        table[f"summaries differing from {settings[0]}"] = changed
        table["seconds"] = round(time.time() - start, 1)
        results["settings"][setting] = table
        print(setting, json.dumps(table), flush=True)
        dst.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
