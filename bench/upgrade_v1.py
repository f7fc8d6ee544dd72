"""Upgrade a finished manifest-version-1 folder of `lcm prepare` in place (issue 16).

    PYTHONPATH=. nice -n 10 python bench/upgrade_v1.py

The default folder is a copy (without cache.sqlite) of /work/data/me/p200k/shards, made by the
older `lcm prepare` from /work/data/me/p200k/train.200k.jsonl with the MiniLM codec. Prints the
seconds of the rerun and whether every shard and the normalizer stayed byte-identical (nothing
is encoded). The default paths are this machine's.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _digests(out: Path) -> dict[str, str]:
    shards = sorted((out / "shards").glob("*.parquet"))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}


def main(
    folder: str = "/work/data/h19/p200k_v1",
    inputs: str = "/work/data/me/p200k/train.200k.jsonl",
) -> None:
    """Rerun `lcm prepare` over a version-1 folder with its settings and check what changed.

    Args:
        folder: the version-1 folder (a copy: it is upgraded in place).
        inputs: the inputs it was prepared from.
    """
    from encoders.minilm import MiniLMCodec
    from lcm.data.prepare import prepare

    out = Path(folder)
    before, norm = _digests(out), (out / "normalizer.pt").read_bytes()
    t = time.perf_counter()
    s = prepare(inputs, str(out), codec=MiniLMCodec(), progress=False)
    print("seconds", round(time.perf_counter() - t, 1))
    print("shards unchanged:", _digests(out) == before, len(before))
    print("normalizer unchanged:", norm == (out / "normalizer.pt").read_bytes())
    m = json.loads((out / "manifest.json").read_text())
    print({k: m[k] for k in ("version", "planning", "upgraded_from")})
    keys = ("documents", "sentences", "shards", "rejected", "rows_read", "rows_read_this_run")
    print({k: s[k] for k in keys})


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main)
