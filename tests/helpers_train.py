"""Test helpers: a deterministic toy codec, structured toy corpora, and the real ``lcm``
command in a fresh process (for kill -9 tests).

The corpora have learnable structure: sentence k is always followed by sentence ``(3k + 7) % P``,
so the next concept is a function of the current one and a small model can fit it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import encoders.hashing
from encoders.hashing import text_hash

P = 23  # distinct sentences
ROOT = Path(__file__).resolve().parents[1]


def next_token(k: int) -> int:
    return (3 * k + 7) % P


def sentence(k: int) -> str:
    return f"Token {k} is here."


class HashCodec(encoders.hashing.HashCodec):
    """The toy hash codec (:mod:`encoders.hashing`) with the tests' id and languages; decodes
    by nearest seen. Its seeds are the low 63 bits of the hash (the default takes the high
    ones): the vectors every test here was written with."""

    codec_id = "test-hash-codec-16"
    langs = ("eng_Latn", "fra_Latn")

    def seed(self, sentence: str) -> int:
        return text_hash(sentence) % (2**63)


def write_corpus(
    path: Path,
    n_docs: int,
    seed: int = 0,
    min_len: int = 4,
    max_len: int = 14,
    summaries: bool = False,
) -> Path:
    """jsonl of documents following the token chain; optional ``summary`` field (the chain's
    first three tokens, shifted by 5: a deterministic function of the source)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for j in range(n_docs):
            k = rng.randrange(P)
            toks = []
            for _ in range(rng.randint(min_len, max_len)):
                toks.append(k)
                k = next_token(k)
            row = {"id": f"doc{j}", "lang": "eng_Latn", "text": " ".join(map(sentence, toks))}
            if summaries:
                row["summary"] = " ".join(sentence((t + 5) % P) for t in toks[:3])
            f.write(json.dumps(row) + "\n")
    return path


def make_shards(
    root: Path, n_docs: int, seed: int = 0, summaries: bool = False, **corpus_kw
) -> Path:
    """Run the real ``lcm prepare`` on a toy corpus with :class:`HashCodec`; returns the folder."""
    root.mkdir(parents=True, exist_ok=True)
    write_corpus(root / "docs.jsonl", n_docs, seed, summaries=summaries, **corpus_kw)
    prepare_shards(root / "shards", max(1, n_docs // 3), summaries)
    return root / "shards"


def prepare_shards(folder: Path, shard_size: int, summaries: bool = False) -> dict:
    """The real ``lcm prepare`` of ``folder.parent / "docs.jsonl"`` into ``folder`` with
    :class:`HashCodec`; returns its summary. On a folder :func:`make_shards` made, with its
    shard size (a third of the documents), this is the rerun that verifies and resumes it."""
    from lcm.data.prepare import prepare

    return prepare(
        inputs=str(folder.parent / "docs.jsonl"),
        output_dir=str(folder),
        codec=HashCodec(),
        target_fields=["summary"] if summaries else None,
        shard_size=shard_size,
        cache=False,
        progress=False,
    )


class FixedHashCodec(HashCodec):
    """HashCodec decoding among a fixed set of sentences (HashCodec's own decode depends on what
    the instance encoded before, which would make two runs differ for the codec's sake)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode([sentence(k) for k in range(P)], "eng_Latn")
        self.fixed = dict(self.seen)

    def decode(self, vectors: torch.Tensor, lang: str) -> list[str]:
        names = list(self.fixed)
        table = torch.stack([self.fixed[n] for n in names])
        return [names[int(i)] for i in torch.cdist(vectors.float(), table).argmin(dim=1)]


class _SlowEncode:
    """Sleeps ``LCM_TEST_ENCODE_SLEEP`` seconds (default 0.2) per encode call: room for a kill
    at a random point of a run in a fresh process (``--codec helpers_train.SlowHashCodec``)."""

    def _encode(self, sentences: list[str], lang: str) -> torch.Tensor:
        time.sleep(float(os.environ.get("LCM_TEST_ENCODE_SLEEP", "0.2")))
        return super()._encode(sentences, lang)


class SlowHashCodec(_SlowEncode, HashCodec):
    """:class:`HashCodec`, slowed down (``lcm prepare`` in a fresh process)."""


class SlowFixedHashCodec(_SlowEncode, FixedHashCodec):
    """:class:`FixedHashCodec`, slowed down (``lcm summarize``/``lcm eval`` in a fresh
    process: each generated batch encodes its documents once)."""


# ------------------------------------------------------- the real command in a fresh process
def lcm_command(*args: object) -> list[str]:
    """``python -m lcm.cli <args>``: the command a user runs, in a fresh interpreter."""
    return [sys.executable, "-m", "lcm.cli", *map(str, args)]


def fresh_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh ``lcm`` process: the project and ``tests/`` importable (so
    ``--codec helpers_train.SlowHashCodec`` resolves) and one thread (the same float
    reductions as a test run under ``torch.set_num_threads(1)``)."""
    path = f"{ROOT}{os.pathsep}{ROOT / 'tests'}"
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def kill_fresh_when(
    args: list[str], env: dict[str, str], ready, log: Path, timeout: float = 240.0
) -> None:
    """Start ``args`` in a fresh process and SIGKILL it (no handler, no cleanup: ``kill -9``)
    as soon as ``ready()`` is true; its stderr goes to ``log``."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + timeout
        try:
            while not ready():
                alive = proc.poll() is None and time.time() < deadline
                assert alive, f"exit code {proc.poll()}: {log.read_text()[-2000:]}"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]


def run_fresh(args: list[str], env: dict[str, str], timeout: float = 300.0) -> str:
    """Run ``args`` to the end in a fresh process; returns its stdout (asserts it succeeded)."""
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
