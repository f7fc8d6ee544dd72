"""Streaming training batches with and without the read-ahead thread (``--data.read_ahead``).

    OMP_WAIT_POLICY=PASSIVE python bench/stream_read_ahead.py --docs 20000 --step_ms 20

A synthetic prepared folder (``bench/stream_startup.make_folder``: 1,000 documents per shard,
4-20 sentences each, ``--dim``-d vectors) is streamed by ``ConceptDataModule(streaming=True)``
for one epoch; each batch is followed by a stand-in for the training step: ``time.sleep`` of
``--step_ms`` milliseconds, which is what the host does while an accelerator computes (this CPU
has none, so a real step here would compete with the reading thread for the same two cores).
The table prints, per ``read_ahead``, the median seconds of the epoch over interleaved rounds and
the speed-up over ``read_ahead=0``; ``--step_ms 0`` measures reading and batching alone (the
thread cannot help there, and its cost shows).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stream_startup import make_folder  # noqa: E402


def epoch_seconds(
    folder: Path, read_ahead: int, step_ms: float, shuffle_buffer: int, max_concepts: int
) -> tuple:
    from lcm.train import ConceptDataModule

    dm = ConceptDataModule(
        str(folder), val_fraction=0.0, max_seq_len=64, max_concepts_per_batch=max_concepts,
        streaming=True, shuffle_buffer=shuffle_buffer, read_ahead=read_ahead,
    )  # fmt: skip
    dm.setup()
    loader = dm.train_dataloader()
    t0 = time.perf_counter()
    batches = 0
    for _ in loader:
        batches += 1
        if step_ms:
            time.sleep(step_ms / 1000)
    return time.perf_counter() - t0, batches


def main(
    docs: int = 20_000,
    dim: int = 1024,
    step_ms: float = 20.0,
    read_ahead: list[int] = [0, 1, 2],  # noqa: B006
    shuffle_buffer: int = 1000,
    max_concepts: int = 2048,
    repeats: int = 3,
    work_dir: str = "runs/bench_read_ahead",
) -> dict:
    """Time one streamed epoch per ``read_ahead`` value (see the module docstring).

    Args:
        docs: synthetic documents.
        dim: vector width (SONAR: 1024).
        step_ms: stand-in training step per batch, in milliseconds (0: reading alone).
        read_ahead: values compared (0 is the baseline: reading in the training loop).
        shuffle_buffer: documents per block.
        max_concepts: padded concepts per batch.
        repeats: interleaved rounds (medians are printed).
        work_dir: where the synthetic folder is written (reused if there).
    """
    import torch

    torch.set_num_threads(1)
    folder = make_folder(Path(work_dir) / f"docs{docs}-d{dim}", docs, dim=dim)
    times: dict[int, list[float]] = {k: [] for k in read_ahead}
    n_batches = {}
    for _ in range(repeats):
        for k in read_ahead:
            sec, n_batches[k] = epoch_seconds(folder, k, step_ms, shuffle_buffer, max_concepts)
            times[k].append(sec)
    base = statistics.median(times[read_ahead[0]])
    print(
        f"{docs} documents, {dim}-d, step {step_ms} ms, block {shuffle_buffer} documents, "
        f"{max_concepts} concepts per batch"
    )
    print(f"{'read_ahead':>10} {'batches':>8} {'epoch s':>8} {'speed-up':>9}")
    rows = {}
    for k in read_ahead:
        med = statistics.median(times[k])
        rows[k] = {"batches": n_batches[k], "seconds": med, "speedup": base / med}
        print(f"{k:>10} {n_batches[k]:>8} {med:8.2f} {base / med:8.2f}x")
    return rows


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
