"""Training start-up at two corpus sizes: streaming (``--data.streaming``) vs the in-memory store.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python bench/stream_startup.py --sizes '[2000, 50000]'

Synthetic prepared folders are written directly in the ``lcm prepare`` format (parquet shards of
1,000 documents with ``id``, ``text_sentences`` and ``text_embeddings``, a manifest recording
each shard's rows, bytes and SHA-256, ``summary.json``, ``normalizer.pt``): 4-20 sentences per
document, 32-d float32 vectors. Each measurement runs in a fresh process (its own cold
``datasets`` cache for the in-memory store), which fits the Base-LCM ``tiny`` model for 3 steps
on CPU; it reports the seconds from building the data module to the start of the first training
step (imports, ``datasets`` included, happen before the clock starts) and the process's peak
RSS (``getrusage``). Variants: ``memory`` (the default: Arrow copy, per-document index,
``verify_shards=full``), ``memory-quick`` (the same with ``verify_shards=quick``) and
``streaming``. The table shows medians over ``repeats``
interleaved rounds and the size of the Arrow cache each run wrote; the result is the ratio
between the two sizes per variant: start-up that grows with the corpus shows a full copy.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Literal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stages import first_step_clock, fit_tiny, peak_mb, run_stage  # noqa: E402

DIM = 32
VARIANTS = ("memory", "memory-quick", "streaming")


def make_folder(
    folder: Path, n_docs: int, docs_per_shard: int = 1000, seed: int = 0, dim: int = DIM
) -> Path:
    """A prepared folder of ``n_docs`` synthetic documents of ``dim``-d vectors (see the module
    docstring)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from lcm.data.shards import file_record
    from lcm.normalizer import RobustNormalizer

    if (folder / "summary.json").exists():
        return folder
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records, sample = {}, []
    for k, first in enumerate(range(0, n_docs, docs_per_shard)):
        n = min(docs_per_shard, n_docs - first)
        counts = rng.integers(4, 21, size=n)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        vecs = rng.standard_normal((int(offsets[-1]), dim), dtype=np.float32)
        if len(sample) < 20:
            sample.append(vecs[:2000])
        emb = pa.ListArray.from_arrays(
            offsets, pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim)
        )
        sents = pa.ListArray.from_arrays(
            offsets, pa.array([f"Sentence {j}." for j in range(int(offsets[-1]))])
        )
        ids = pa.array([f"doc{first + i}" for i in range(n)])
        table = pa.table(
            {"id": ids, "lang": pa.array(["eng_Latn"] * n), "text_sentences": sents,
             "text_embeddings": emb}
        )  # fmt: skip
        name = f"shard-{k:05d}.parquet"
        pq.write_table(table, folder / "shards" / name)
        records[name] = file_record(folder / "shards" / name)
    RobustNormalizer.fit(torch.from_numpy(np.concatenate(sample))).save(folder / "normalizer.pt")
    manifest = {"version": 1, "codec": f"bench-synthetic-{dim}", "text_field": "text",
                "target_fields": [], "id_field": "id", "lang_field": "lang",
                "shards": records}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "summary.json").write_text(json.dumps({"documents": n_docs}))
    return folder


def measure(folder: str, variant: str) -> dict:
    """One fit of 3 steps in this process; prints a JSON line."""
    import datasets  # noqa: F401 - imported before the clock: 1-3 s, the same at every size

    from lcm.train import ConceptDataModule

    first = first_step_clock()
    run = Path(folder).parent / f"run-{variant}-{os.getpid()}"
    t0 = time.perf_counter()
    dm = ConceptDataModule(
        folder, val_fraction=0.0, max_seq_len=32, max_concepts_per_batch=512,
        cache_dir=str(run / "hf-cache"), streaming=variant == "streaming",
        verify_shards="quick" if variant == "memory-quick" else "full",
    )  # fmt: skip
    fit_tiny(dm, DIM, run, max_steps=3, enable_checkpointing=False, callbacks=[first])
    cache = run / "hf-cache"
    out = {
        "variant": variant,
        "documents": json.loads((Path(folder) / "summary.json").read_text())["documents"],
        "seconds_to_first_step": first.at - t0,
        "peak_rss_mb": peak_mb(),
        "arrow_cache_mb": sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20,
    }
    shutil.rmtree(run, ignore_errors=True)
    print(json.dumps(out), flush=True)
    return out


def main(
    sizes: list[int] = [2_000, 50_000],  # noqa: B006
    work_dir: str = "runs/bench_stream",
    variants: list[str] = list(VARIANTS),  # noqa: B006
    repeats: int = 3,
    measure_folder: str | None = None,
    measure_variant: Literal["memory", "memory-quick", "streaming"] = "streaming",
) -> dict:
    """Make the folders, measure every variant at every size in its own process, print ratios.

    Args:
        sizes: Numbers of synthetic documents (the first is the reference).
        work_dir: Where the folders go (kept between runs).
        variants: Which of ``memory``, ``memory-quick``, ``streaming`` to measure.
        repeats: Rounds; each round measures every variant and size once (interleaved), and the
            table shows medians (the machine is shared, so single runs swing).
        measure_folder: Internal: measure this folder in this process.
        measure_variant: Internal: the variant to measure.
    """
    if measure_folder is not None:
        return measure(measure_folder, measure_variant)
    folders = {n: make_folder(Path(work_dir) / f"n{n}", n) for n in sizes}
    runs = []
    for _ in range(repeats):
        for n in sizes:
            for variant in variants:
                args = [f"--measure_folder={folders[n]}", f"--measure_variant={variant}"]
                runs.append(run_stage(__file__, args, f"{variant} at {n} documents"))
    rows = []
    for n in sizes:
        for variant in variants:
            mine = [r for r in runs if r["documents"] == n and r["variant"] == variant]
            rows.append({"variant": variant, "documents": n, **{
                k: statistics.median(r[k] for r in mine)
                for k in ("seconds_to_first_step", "peak_rss_mb", "arrow_cache_mb")}})  # fmt: skip
    base = {r["variant"]: r for r in rows if r["documents"] == sizes[0]}
    print(f"\n{'variant':<13} {'documents':>10} {'s to 1st step':>14} {'x smallest':>11} "
          f"{'peak RSS MB':>12} {'x smallest':>11} {'Arrow cache MB':>15}")  # fmt: skip
    for r in rows:
        b = base[r["variant"]]
        print(f"{r['variant']:<13} {r['documents']:>10} {r['seconds_to_first_step']:>14.2f} "
              f"{r['seconds_to_first_step'] / b['seconds_to_first_step']:>11.2f} "
              f"{r['peak_rss_mb']:>12.0f} "
              f"{r['peak_rss_mb'] / b['peak_rss_mb']:>11.2f} "
              f"{r['arrow_cache_mb']:>15.1f}")  # fmt: skip
    return {"rows": rows, "runs": runs}


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
