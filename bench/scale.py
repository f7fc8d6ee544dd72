"""Scale benchmark: peak memory and speed of `lcm prepare`, of a short `fit`, and of loading a
checkpoint with a retrieval codec, at growing numbers of synthetic documents.

    OMP_WAIT_POLICY=PASSIVE python bench/scale.py --sizes '[10000, 100000, 1000000]' \
        --stages '[prepare]'

The goal for ``prepare`` (issue 16) is a peak RSS at 1M documents of at most 1.2x its peak at
10k: it streams, so only the id hashes (16 bytes per document) grow with the corpus.

Each measurement runs in a fresh process (``bench/scale.py --stage ...``), whose peak RSS is read
from ``getrusage``. The codec is trivial (a hash of the sentence -> a 16-d vector, a faiss bank
for decoding), so the numbers are the toolkit's own cost, not encoding. The ratios against the
smallest size are the result: memory and load time that grow with the corpus show what is not
yet streamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from encoders.base import SentenceCodec  # noqa: E402
from encoders.registry import register_codec  # noqa: E402
from encoders.retrieval import RetrievalBank  # noqa: E402

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi rho".split()


class TrivialCodec(SentenceCodec):
    """A sentence's vector is a seeded hash of its text; decoding retrieves from a bank."""

    codec_id = "bench-trivial-16"
    dim = 16
    langs = ("eng_Latn",)

    def __init__(self) -> None:
        super().__init__(cache=None)
        self.bank = RetrievalBank(self.dim)

    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        out = torch.empty(len(sentences), self.dim)
        for i, s in enumerate(sentences):
            h = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
            out[i] = torch.randn(self.dim, generator=torch.Generator().manual_seed(h >> 1))
        return out

    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        return [f[0] for f in self.bank.search(vectors, lang)[1]]


register_codec(TrivialCodec.codec_id, lambda codec_id, **kw: TrivialCodec())


def write_docs(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            sents = [
                " ".join(WORDS[(i * 7 + j * 3 + k) % len(WORDS)] for k in range(6)).capitalize()
                + f" {i}-{j}."
                for j in range(4 + i % 5)
            ]
            summary = f"Summary of document {i}."
            f.write(json.dumps({"id": str(i), "text": " ".join(sents), "summary": summary}) + "\n")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def stage(name: str, work: str, n: int) -> dict:
    """One measurement in this process; prints a JSON line."""
    root = Path(work) / f"n{n}"
    t0 = time.perf_counter()
    if name == "prepare":
        from lcm.data.prepare import prepare

        root.mkdir(parents=True, exist_ok=True)
        write_docs(root / "docs.jsonl", n)
        t0 = time.perf_counter()
        prepare(
            str(root / "docs.jsonl"), str(root / "shards"), codec=TrivialCodec(),
            target_fields=["summary"], cache=False, progress=False, shard_size=1024,
        )  # fmt: skip
        out = {"seconds": time.perf_counter() - t0}
        out["docs_per_s"] = n / out["seconds"]
    elif name == "fit":
        import lightning as L

        from lcm.models import BaseLCMConfig
        from lcm.train import BaseLCMModule, ConceptDataModule

        class FirstStep(L.Callback):
            at: float | None = None

            def on_train_batch_start(self, *args) -> None:
                self.at = self.at or time.perf_counter()

        first = FirstStep()
        dm = ConceptDataModule(
            str(root / "shards"), mode="summarize", val_fraction=0.0, max_seq_len=32,
            max_concepts_per_batch=512, cache_dir=str(root / "hf-cache"),
        )  # fmt: skip
        module = BaseLCMModule(arch=BaseLCMConfig.from_name("tiny", sonar_dim=16))
        trainer = L.Trainer(
            max_steps=50, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=str(root / "run"),
            callbacks=[first], limit_val_batches=0,
        )  # fmt: skip
        trainer.fit(module, dm)
        trainer.save_checkpoint(str(root / "last.ckpt"))
        out = {"seconds_to_first_step": first.at - t0, "seconds": time.perf_counter() - t0}
    else:
        from lcm.api import ConceptModel

        model = ConceptModel.load(str(root / "last.ckpt"), codec=TrivialCodec())
        out = {"seconds": time.perf_counter() - t0, "bank_sentences": len(model.codec.bank)}
    out.update(stage=name, documents=n, peak_rss_mb=_peak_mb())
    print(json.dumps(out), flush=True)
    return out


def main(
    sizes: list[int] = [10_000, 100_000, 1_000_000],  # noqa: B006
    stages: list[Literal["prepare", "fit", "load"]] = ["prepare", "fit", "load"],  # noqa: B006
    work_dir: str = "runs/bench_scale",
    stage_name: Literal["all", "prepare", "fit", "load"] = "all",
    documents: int = 0,
) -> dict:
    """Run every stage at every size, each in its own process, and print the ratios.

    Args:
        sizes: Numbers of synthetic documents.
        stages: Which stages to run (fit needs prepare's shards, load needs fit's checkpoint).
        work_dir: Where documents, shards and checkpoints go.
        stage_name: Internal: run one stage in this process.
        documents: Internal: the size of that stage.
    """
    if stage_name != "all":
        return stage(stage_name, work_dir, documents)
    rows = []
    for n in sizes:
        for name in stages:
            cmd = [sys.executable, __file__, f"--work_dir={work_dir}", f"--stage_name={name}",
                   f"--documents={n}"]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"{name} at {n} documents failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
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
