"""Scale benchmark: peak memory and speed of `lcm prepare`, of a short `fit`, and of loading a
checkpoint with a retrieval codec, at growing numbers of synthetic documents.

    OMP_WAIT_POLICY=PASSIVE python bench/scale.py --sizes '[10000, 100000, 1000000]' \
        --stages '[prepare]'

``--stages '[prepare, resume]'`` also reruns prepare with one shard deleted and prints the rows
that resume read and its seconds.

The goal for ``prepare`` (issue 16) is a peak RSS at 1M documents of at most 1.2x its peak at
10k: it streams, so only the id hashes (16 bytes per document) grow with the corpus.

Each measurement runs in a fresh process (``bench/scale.py --stage ...``), whose peak RSS is read
from ``getrusage``. The codec is trivial (a hash of the sentence -> a 16-d vector, a faiss bank
for decoding), so the numbers are the toolkit's own cost, not encoding. The ratios against the
smallest size are the result: memory and load time that grow with the corpus show what is not
yet streamed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Literal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stages import first_step_clock, fit_tiny, peak_mb, run_stage  # noqa: E402
from bench._synthetic import HashCodec, register_hash_codec, write_docs  # noqa: E402

DIM, CODEC_ID = 16, "bench-trivial-16"
register_hash_codec(DIM, CODEC_ID)


def stage(name: str, work: str, n: int) -> dict:
    """One measurement in this process; prints a JSON line."""
    root = Path(work) / f"n{n}"
    t0 = time.perf_counter()
    if name == "prepare":
        from lcm.data.prepare import prepare

        root.mkdir(parents=True, exist_ok=True)
        write_docs(root / "docs.jsonl", n, summaries=True)
        t0 = time.perf_counter()
        prepare(
            str(root / "docs.jsonl"), str(root / "shards"), codec=HashCodec(DIM, CODEC_ID),
            target_fields=["summary"], cache=False, progress=False, shard_size=1024,
        )  # fmt: skip
        out = {"seconds": time.perf_counter() - t0}
        out["docs_per_s"] = n / out["seconds"]
    elif name == "resume":
        # a rerun with all shards but one done (the middle one deleted, as if a kill had hit
        # it): row planning reads that shard's rows only; the full pass read them all
        from lcm.data.prepare import prepare

        shards = sorted((root / "shards" / "shards").glob("shard-*.parquet"))
        shards[len(shards) // 2].unlink()
        t0 = time.perf_counter()
        s = prepare(
            str(root / "docs.jsonl"), str(root / "shards"), codec=HashCodec(DIM, CODEC_ID),
            target_fields=["summary"], cache=False, progress=False, shard_size=1024,
        )  # fmt: skip
        out = {"seconds": time.perf_counter() - t0, "shards": len(shards)}
        out["rows_read_this_run"] = s.get("rows_read_this_run", s["rows_read"])
    elif name == "fit":
        from lcm.train import ConceptDataModule

        first = first_step_clock()
        dm = ConceptDataModule(
            str(root / "shards"), mode="summarize", val_fraction=0.0, max_seq_len=32,
            max_concepts_per_batch=512, cache_dir=str(root / "hf-cache"),
        )  # fmt: skip
        trainer = fit_tiny(dm, DIM, root / "run", max_steps=50, callbacks=[first])
        trainer.save_checkpoint(str(root / "last.ckpt"))
        out = {"seconds_to_first_step": first.at - t0, "seconds": time.perf_counter() - t0}
    else:
        from lcm.api import ConceptModel

        model = ConceptModel.load(str(root / "last.ckpt"), codec=HashCodec(DIM, CODEC_ID))
        out = {"seconds": time.perf_counter() - t0, "bank_sentences": len(model.codec.bank)}
    out.update(stage=name, documents=n, peak_rss_mb=peak_mb())
    print(json.dumps(out), flush=True)
    return out


def main(
    sizes: list[int] = [10_000, 100_000, 1_000_000],  # noqa: B006
    stages: list[Literal["prepare", "resume", "fit", "load"]] = ["prepare", "fit", "load"],  # noqa: B006
    work_dir: str = "runs/bench_scale",
    stage_name: Literal["all", "prepare", "resume", "fit", "load"] = "all",
    documents: int = 0,
) -> dict:
    """Run every stage at every size, each in its own process, and print the ratios.

    Args:
        sizes: Numbers of synthetic documents.
        stages: Which stages to run (resume and fit need prepare's shards, load needs fit's
            checkpoint; resume reruns prepare with one shard deleted).
        work_dir: Where documents, shards and checkpoints go.
        stage_name: Internal: run one stage in this process.
        documents: Internal: the size of that stage.
    """
    if stage_name != "all":
        return stage(stage_name, work_dir, documents)
    rows = []
    for n in sizes:
        for name in stages:
            args = [f"--work_dir={work_dir}", f"--stage_name={name}", f"--documents={n}"]
            rows.append(run_stage(__file__, args, f"{name} at {n} documents"))
    base = {r["stage"]: r for r in rows if r["documents"] == sizes[0]}
    print(f"\n{'stage':<8} {'documents':>10} {'peak RSS MB':>12} {'x smallest':>11} "
          f"{'seconds':>9} {'docs/s':>8} {'x smallest':>11}")  # fmt: skip
    for r in rows:
        b = base[r["stage"]]
        rate = r["documents"] / r["seconds"]
        base_rate = b["documents"] / b["seconds"]
        print(f"{r['stage']:<8} {r['documents']:>10} {r['peak_rss_mb']:>12.0f} "
              f"{r['peak_rss_mb'] / b['peak_rss_mb']:>11.2f} {r['seconds']:>9.1f} "
              f"{rate:>8.0f} {rate / base_rate:>11.2f}")  # fmt: skip
    for r in rows:
        if r["stage"] == "resume":
            print(f"\nresume at {r['documents']} documents, 1 of {r['shards']} shards to redo: "
                  f"read {r['rows_read_this_run']} rows in {r['seconds']:.1f} s")  # fmt: skip
    prep = [r for r in rows if r["stage"] == "prepare"]
    if len(prep) > 1:
        ratio = prep[-1]["peak_rss_mb"] / prep[0]["peak_rss_mb"]
        verdict = "met" if ratio <= 1.2 else "MISSED"
        print(f"\nprepare peak RSS at {prep[-1]['documents']} documents = {ratio:.2f}x the peak at "
              f"{prep[0]['documents']} (goal <= 1.2x: {verdict})")  # fmt: skip
    return {"rows": rows}


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
