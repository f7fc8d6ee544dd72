"""The input check of a resumed ``lcm prepare``: the old full fingerprint vs the per-file records.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python bench/resume_fingerprint.py --rows 1000000

Writes a synthetic JSON-lines corpus of ``rows`` documents (``bench/_synthetic.py``; reused if
it is there), plans it once as a new ``lcm prepare`` folder does (the byte scan that finds the
row ranges, now also computing each file's SHA-256: the planning cost, paid once per folder),
then times, side by side in this process, what every rank of every resume did before any work:

- ``before``: :func:`lcm.data.documents.fingerprint`, a SHA-256 of every input byte;
- ``after``: :func:`lcm.data.prepare._check_inputs` on the manifest's ``input_files`` records
  (a ``stat`` and 1 MiB of sampled blocks per file), for an unchanged input;
- ``after, touched``: the same after ``touch`` (the modification time moved: one full read
  of that file, then the new time is recorded and later resumes are cheap again).

Each is the median of ``repeats`` runs (the file is in the page cache after the first read, so
``before`` is measured at memory speed: on a cold disk or a network filesystem it is slower).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(rows: int = 1_000_000, folder: str = "/tmp/lcm_bench_fingerprint", repeats: int = 3):
    """Print the resume input check before and after, and their ratio.

    Args:
        rows: documents in the synthetic jsonl.
        folder: where the corpus is written (and reused).
        repeats: timed runs per variant (median).
    """
    from bench._synthetic import write_docs
    from lcm.data import prepare as prep
    from lcm.data.documents import fingerprint
    from lcm.data.ranges import plan_rows

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"docs-{rows}.jsonl"
    if not path.exists():
        write_docs(path, rows)
    files = [path]
    size = path.stat().st_size
    st = os.stat(path)
    t = time.perf_counter()
    plan = plan_rows(files, "auto", 256)  # once per folder: rows, offsets, and the SHA-256
    plan_s = time.perf_counter() - t
    records = [prep.input_record(path, st, plan.sha256[0])]
    old = {"input_files": records}
    before = _median(lambda: fingerprint(files), repeats)
    after = _median(lambda: prep._check_inputs(out, old, files), repeats)

    def touched():
        os.utime(path)
        prep._check_inputs(out, old, files)

    after_touched = _median(touched, repeats)
    print(f"input: {rows} rows, {size / 2**20:.1f} MiB, 1 file; planning (once): {plan_s:.2f} s")
    print("| resume input check | seconds | vs before |")
    print("|---|---|---|")
    print(f"| before: SHA-256 of every byte | {before:.3f} | 1.00x |")
    print(f"| after: stat + sampled blocks | {after:.4f} | {before / after:.0f}x faster |")
    print(f"| after, input touched (full read once) | {after_touched:.3f} | "
          f"{before / after_touched:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main)
