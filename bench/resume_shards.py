"""The finished-shard check of a resumed ``lcm prepare``: full SHA-256 vs the recorded
size, modification time and parquet footer (issue 16).

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python bench/resume_shards.py --docs 65536 \\
        --shard_size 256 --dim 1024 --folder /work/data/h27/resume_shards

Prepares (once; reused if it is there) a folder of ``docs / shard_size`` finished shards from a
synthetic JSON-lines corpus (``bench/_synthetic.py``) with a table codec that costs nothing (a
sentence's vector is a row of a fixed random table picked by its hash, ``dim`` wide, so shards
are as large as real ones of that width), then times, side by side in this process, alternating:

- the shard check alone, as every rank of every resume runs it over all finished shards before
  any work (``lcm.data.prepare._shard_problem``): ``verify="full"`` (what every resume did
  before: the SHA-256 of every shard byte) vs ``verify="quick"`` (the default now: a ``stat``,
  the stats file and the parquet footer), with the shards in the page cache, and ``full`` once
  more after each shard file is dropped from the page cache (``posix_fadvise DONTNEED``: a
  cold read, as after a reboot or on another node; this evicts only these files);
- the whole rerun of ``lcm prepare`` over the finished folder (Lightning start, the shard
  check, the duplicate check across shards, the normalizer, the manifest) three ways: as before
  (``--verify full`` and the normalizer refitted: ``normalizer.json`` removed first), the quick
  shard check with the normalizer refitted, and the default now (quick check, and the
  normalizer reused because ``normalizer.json`` says it was fitted on these shards).

Each figure is the median of ``repeats`` (shard check) or ``rerun_repeats`` (whole rerun) runs.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from encoders.base import SentenceCodec  # noqa: E402
from encoders.hashing import text_hash  # noqa: E402


class TableCodec(SentenceCodec):
    """A sentence's vector is row ``hash % 4096`` of a fixed random ``(4096, dim)`` table."""

    langs = ("eng_Latn",)

    def __init__(self, dim: int = 1024) -> None:
        super().__init__(cache=None)
        self.dim = dim
        self.codec_id = f"bench-table-{dim}"
        self.table = torch.randn(4096, dim, generator=torch.Generator().manual_seed(0))

    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        rows = torch.tensor([text_hash(s) % 4096 for s in sentences], dtype=torch.long)
        return self.table[rows]

    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        raise NotImplementedError("a benchmark codec: encoding only")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main(
    docs: int = 65536,
    shard_size: int = 256,
    dim: int = 1024,
    folder: str = "/tmp/lcm_bench_resume_shards",
    repeats: int = 3,
    rerun_repeats: int = 1,
) -> None:
    """Print the finished-shard check of a resume before (full SHA-256) and after, and ratios.

    Args:
        docs: documents in the synthetic jsonl.
        shard_size: input rows per shard.
        dim: vector width of the table codec (1024: SONAR's).
        folder: where the corpus and the prepared folder are written (and reused).
        repeats: timed runs of each shard-check variant (median).
        rerun_repeats: timed whole reruns per variant (median); a refit of the normalizer
            takes minutes at 1024-d.
    """
    from bench._synthetic import write_docs
    from lcm.data import prepare as prep

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / f"docs-{docs}.jsonl"
    if not corpus.exists():
        write_docs(corpus, docs)
    out = root / f"prepared-{docs}-{shard_size}-{dim}"
    kw = dict(codec=TableCodec(dim), shard_size=shard_size, cache=False, progress=False)
    made_s = None
    if not (out / "summary.json").exists():  # the folder, once
        made_s = _time(lambda: prep.prepare(str(corpus), str(out), **kw))
    shards = sorted((out / "shards").glob("shard-*.parquet"))
    n = len(shards)
    size = sum(p.stat().st_size for p in shards)

    def check(level: str) -> None:
        for k in range(n):
            assert prep._shard_problem(out, k, True, level) is None, k

    def cold_full() -> None:
        _evict(shards)
        check("full")

    check("full")  # warm the page cache
    warm_full, quick, cold = [], [], []
    for _ in range(repeats):  # alternating, so load swings hit both alike
        warm_full.append(_time(lambda: check("full")))
        quick.append(_time(lambda: check("quick")))
        cold.append(_time(cold_full))
    check("full")  # back into the page cache for the whole reruns

    def rerun(verify: str, refit: bool) -> float:
        if refit:
            (out / "normalizer.json").unlink(missing_ok=True)
        return _time(lambda: prep.prepare(str(corpus), str(out), verify=verify, **kw))

    rerun_full, rerun_quick, rerun_reuse = [], [], []
    for _ in range(rerun_repeats):
        rerun_full.append(rerun("full", refit=True))
        rerun_quick.append(rerun("quick", refit=True))
        rerun_reuse.append(rerun("quick", refit=False))
    med = statistics.median
    wf, q, cf, rf, rq, rr = map(med, (warm_full, quick, cold, rerun_full, rerun_quick, rerun_reuse))
    print(
        f"folder: {n} finished shards, {size / 2**20:.0f} MiB ({docs} documents, {dim}-d "
        f"float32); prepared in: {'(reused)' if made_s is None else f'{made_s:.1f} s'}"
    )
    print("| resume step | seconds | vs before |")
    print("|---|---|---|")
    print(f"| shard check, before: SHA-256 of every shard (page cache) | {wf:.3f} | 1.00x |")
    print(f"| shard check, before, cold (shards evicted from the page cache) | {cf:.3f} | "
          f"{wf / cf:.2f}x |")  # fmt: skip
    print(f"| shard check, after: stat + stats + parquet footer | {q:.4f} | "
          f"**{wf / q:.0f}x faster** ({cf / q:.0f}x vs cold) |")  # fmt: skip
    print(f"| whole rerun, `--verify full`, normalizer refitted (before) | {rf:.2f} | 1.00x |")
    print(f"| whole rerun, quick shard check, normalizer refitted | {rq:.2f} | {rf / rq:.2f}x |")
    print(f"| whole rerun, default: quick check, normalizer reused | {rr:.2f} | "
          f"**{rf / rr:.2f}x** |")  # fmt: skip


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main)
