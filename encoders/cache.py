"""A persistent embedding cache keyed by codec, language and sentence.

Encoding is the slow part of data preparation, and real corpora repeat sentences (boilerplate,
headers, licences). The cache stores one float32 vector per ``(codec id, language, sentence)`` in
SQLite, so it survives restarts (a resumed ``lcm prepare`` re-reads what it already encoded, which
also makes resumed shards bit-identical) and can be shared by several processes on one machine.
"""

from __future__ import annotations

import hashlib
import sqlite3
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
        path: database file, or ``":memory:"`` for a cache that lives only in this process.
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # timeout: several DDP ranks may write to one file; SQLite serializes them.
        self._db = sqlite3.connect(self.path, timeout=120, check_same_thread=False)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (k BLOB PRIMARY KEY, dim INT, v BLOB)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

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
