"""Load time of a retrieval checkpoint: the first load (builds and saves the sentence bank) against
the second (opens the saved bank, memory-mapped), at growing numbers of documents.

    OMP_WAIT_POLICY=PASSIVE python bench/bank_load.py --sizes '[2000, 10000, 40000]' --repeats 3
    python bench/bank_load.py --checkpoint minilm.ckpt --shards prepared/ --repeats 3  # real codec

Per size: synthetic documents (4-8 sentences each) are prepared with a hash codec of MiniLM's
width (384-d; a sentence's vector is a seeded hash of its text, so there is no encoding cost and
the bank holds as many bytes as a MiniLM bank of the same corpus), a Base-LCM tiny is fitted for
one step, and then ``ConceptModel.load`` runs three times, each in a fresh process: ``first``
(no saved bank: builds it from the shards and saves it), ``second`` (opens the saved bank) and
``memory`` (builds in memory, ignoring the saved bank: the cost every load paid before banks were
saved). Each prints its seconds, the seconds spent on the bank and the peak RSS. The ratios
second / first, side by side in one run, are the result; absolute seconds include the imports
(torch, Lightning, faiss: several seconds on a busy 2-core machine).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._stages import fit_tiny, peak_mb, run_stage  # noqa: E402
from bench._synthetic import HashCodec, register_hash_codec, write_docs  # noqa: E402

DIM, CODEC_ID = 384, "bench-hash-384"  # MiniLM's width
register_hash_codec(DIM, CODEC_ID)


def stage(
    name: str, work: str, n: int, checkpoint: str | None = None, shards: str | None = None
) -> dict:
    """One measurement in this process; prints a JSON line. ``checkpoint`` and ``shards``: load
    that checkpoint with the bank of that prepared folder instead of the synthetic size ``n``."""
    root = Path(work) / f"n{n}"
    ckpt, data_dir = root / "last.ckpt", root / "shards"
    if checkpoint:
        ckpt, data_dir = Path(checkpoint), Path(shards)
        n = json.loads((data_dir / "summary.json").read_text())["documents"]
    t0 = time.perf_counter()
    out: dict = {}
    if name == "setup":
        from lcm.data.prepare import prepare
        from lcm.train import ConceptDataModule

        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        write_docs(root / "docs.jsonl", n)
        prepare(
            str(root / "docs.jsonl"), str(root / "shards"), codec=HashCodec(DIM, CODEC_ID),
            cache=False, progress=False, shard_size=2048,
        )  # fmt: skip
        out["prepare_seconds"] = time.perf_counter() - t0
        dm = ConceptDataModule(
            str(root / "shards"), val_fraction=0.0, max_seq_len=16, max_concepts_per_batch=256,
            cache_dir=str(root / "hf-cache"),
        )  # fmt: skip
        trainer = fit_tiny(dm, DIM, root / "run", max_steps=1, enable_checkpointing=False)
        trainer.save_checkpoint(str(root / "last.ckpt"))
        shutil.rmtree(root / "hf-cache", ignore_errors=True)
    else:
        if name == "first":
            shutil.rmtree(data_dir / "bank", ignore_errors=True)
        from lcm.api import ConceptModel
        from lcm.data import bank as banks
        from lcm.train.module import load_module  # noqa: F401 - Lightning's import, timed here

        import_seconds = time.perf_counter() - t0

        timing: dict[str, float] = {}
        load_bank = banks.load_bank

        def timed(*args, **kwargs):
            t = time.perf_counter()
            if name == "memory":
                kwargs["saved"] = False
            result = load_bank(*args, **kwargs)
            timing["bank_seconds"] = time.perf_counter() - t
            timing["how"] = result[1]
            return result

        banks.load_bank = timed
        model = ConceptModel.load(str(ckpt), shards=data_dir)
        out = {"seconds": time.perf_counter() - t0, "import_seconds": import_seconds, **timing}
        out["bank_sentences"] = len(model.codec.bank)
        # the decoded text goes through the bank: touch it once (pages of an opened bank load)
        t = time.perf_counter()
        model.codec.decode(torch.randn(8, model.codec.bank.dim), "eng_Latn")
        out["decode_8_seconds"] = time.perf_counter() - t
    out.update(stage=name, documents=n, peak_rss_mb=peak_mb())
    print(json.dumps(out), flush=True)
    return out


def main(
    sizes: list[int] = [2_000, 10_000],  # noqa: B006
    work_dir: str = "runs/bench_bank_load",
    repeats: int = 1,
    reuse: bool = False,
    stage_name: Literal["all", "setup", "first", "second", "memory"] = "all",
    documents: int = 0,
    checkpoint: str | None = None,
    shards: str | None = None,
) -> dict:
    """Prepare, fit and load at every size, each step in its own process, and print the medians.

    Args:
        sizes: Numbers of synthetic documents.
        work_dir: Where documents, shards and checkpoints go.
        repeats: Loads of each kind per size (first, second and memory alternate).
        reuse: Keep the shards and checkpoint of an earlier run at that size (no setup).
        stage_name: Internal: run one stage in this process.
        documents: Internal: the size of that stage.
        checkpoint: Instead of synthetic corpora, load this retrieval checkpoint (a real codec)
        shards: with the bank of this prepared folder (its ``bank/`` is deleted before each first
            load).
    """
    if checkpoint:
        if not shards:
            raise ValueError("--checkpoint needs --shards (the folder whose bank is measured)")
        sizes = [json.loads((Path(shards) / "summary.json").read_text())["documents"]]
    if stage_name != "all":
        return stage(stage_name, work_dir, documents, checkpoint, shards)
    extra = [f"--checkpoint={checkpoint}", f"--shards={shards}"] if checkpoint else []
    rows = []
    for n in sizes:
        ready = checkpoint or reuse and (Path(work_dir) / f"n{n}" / "last.ckpt").exists()
        for name in ([] if ready else ["setup"]) + ["first", "second", "memory"] * repeats:
            args = [f"--work_dir={work_dir}", f"--stage_name={name}", f"--documents={n}"]
            rows.append(run_stage(__file__, args + extra, f"{name} at {n} documents"))
    print(f"\n{'documents':>10} {'sentences':>10} {'load':>7} {'seconds':>8} {'imports':>8} "
          f"{'bank s':>7} {'x first':>8} {'peak MB':>8}   (medians of {repeats})")  # fmt: skip
    for n in sizes:
        med = {}
        for name in ("first", "second", "memory"):
            runs = [r for r in rows if r["documents"] == n and r["stage"] == name]
            med[name] = {
                k: float(np.median([r[k] for r in runs]))
                for k in ("seconds", "import_seconds", "bank_seconds", "peak_rss_mb")
            }
            med[name]["bank_sentences"] = runs[0]["bank_sentences"]
        for name, r in med.items():
            ratio = r["seconds"] / med["first"]["seconds"]
            print(f"{n:>10} {r['bank_sentences']:>10} {name:>7} {r['seconds']:>8.1f} "
                  f"{r['import_seconds']:>8.1f} {r['bank_seconds']:>7.2f} {ratio:>8.2f} "
                  f"{r['peak_rss_mb']:>8.0f}")  # fmt: skip
    return {"rows": rows}


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
