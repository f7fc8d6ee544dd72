"""A persistent embedding cache keyed by codec, language and sentence.

Encoding is the slow part of data preparation, and real corpora repeat sentences (boilerplate,
headers, licences). The cache stores one float32 vector per ``(codec id, language, sentence)`` in
SQLite, so it survives restarts (a resumed ``lcm prepare`` re-reads what it already encoded, which
also makes resumed shards bit-identical) and can be shared by several processes on one machine
(DDP ranks): SQLite's write-ahead log serializes their writes. Local disk only: write-ahead
logging needs shared memory between the processes, which network filesystems do not provide.
The cache grows by about one float32 vector per distinct sentence, so large runs turn it off.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def _key(codec_id: str, lang: str, sentence: str) -> bytes:
    # The sentence is hashed, not stored: keys stay small and the cache leaks no text.
    return hashlib.blake2b(f"{codec_id}\x1f{lang}\x1f{sentence}".encode(), digest_size=20).digest()


class EmbeddingCache:
    """SQLite-backed map from (codec id, language, sentence) to a float32 vector.

    Args:
        path: database file (on a local disk), or ``":memory:"`` for a cache that lives only in
            this process.
        timeout: seconds a process waits for another one's write before giving up.
    """

    def __init__(self, path: str | Path = ":memory:", timeout: float = 120.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # timeout: several DDP ranks may write to one file; SQLite serializes them.
        self._db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False)
        self._setup(timeout)
        self.hits = 0
        self.misses = 0

    def _setup(self, timeout: float) -> None:
        """Switch to write-ahead logging and create the table. Two processes opening a new file
        at once can get "database is locked" here without SQLite's busy wait (switching the
        journal mode takes an exclusive lock that is not retried), so it is retried here."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.path != ":memory:":
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS emb (k BLOB PRIMARY KEY, dim INT, v BLOB)"
                )
                self._db.commit()
                return
            except sqlite3.OperationalError as ex:
                busy = "locked" in str(ex) or "busy" in str(ex)
                if not busy or time.monotonic() > deadline:
                    raise
                self._db.rollback()
                time.sleep(0.01 + 0.05 * random.random())

    def get_many(
        self, codec_id: str, lang: str, sentences: Sequence[str]
    ) -> list[torch.Tensor | None]:
        """Cached vectors for ``sentences`` (None where absent), in order."""
        keys = [_key(codec_id, lang, s) for s in sentences]
        found: dict[bytes, torch.Tensor] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for k, dim, v in self._db.execute(
                f"SELECT k, dim, v FROM emb WHERE k IN ({marks})", chunk
            ):
                found[k] = torch.from_numpy(np.frombuffer(v, dtype=np.float32, count=dim).copy())
        out = [found.get(k) for k in keys]
        n_hit = sum(v is not None for v in out)
        self.hits += n_hit
        self.misses += len(out) - n_hit
        return out

    def put_many(
        self, codec_id: str, lang: str, sentences: Sequence[str], vectors: torch.Tensor
    ) -> None:
        """Store ``vectors[i]`` (any float dtype, stored as float32) for ``sentences[i]``."""
        if len(sentences) != vectors.shape[0]:
            raise ValueError(f"{len(sentences)} sentences but {vectors.shape[0]} vectors")
        arr = vectors.detach().to("cpu", torch.float32).numpy()
        rows = [
            (_key(codec_id, lang, s), arr.shape[1], arr[i].tobytes())
            for i, s in enumerate(sentences)
        ]
        self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?, ?)", rows)
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM emb").fetchone()[0]

    def close(self) -> None:
        self._db.close()
