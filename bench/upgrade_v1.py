"""Upgrade a finished manifest-version-1 folder of `lcm prepare` in place (issue 16).

    PYTHONPATH=. nice -n 10 python bench/upgrade_v1.py

A copy (without cache.sqlite) of /work/data/me/p200k/shards, made by the older `lcm prepare`
from /work/data/me/p200k/train.200k.jsonl with the MiniLM codec, in /work/data/h19/p200k_v1.
Prints the seconds of the rerun and whether every shard and the normalizer stayed
byte-identical (nothing is encoded). Paths are this machine's.
"""

import hashlib
import json
import time
from pathlib import Path

from encoders.minilm import MiniLMCodec
from lcm.data.prepare import prepare

out = Path("/work/data/h19/p200k_v1")
before = {
    p.name: hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted((out / "shards").glob("*.parquet"))
}
norm = (out / "normalizer.pt").read_bytes()
t = time.perf_counter()
s = prepare("/work/data/me/p200k/train.200k.jsonl", str(out), codec=MiniLMCodec(), progress=False)
print("seconds", round(time.perf_counter() - t, 1))
after = {
    p.name: hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted((out / "shards").glob("*.parquet"))
}
print("shards unchanged:", before == after, len(after))
print("normalizer unchanged:", norm == (out / "normalizer.pt").read_bytes())
m = json.loads((out / "manifest.json").read_text())
print({k: m[k] for k in ("version", "planning", "upgraded_from")})
print(
    {
        k: s[k]
        for k in (
            "documents",
            "sentences",
            "shards",
            "rejected",
            "rows_read",
            "encode_seconds",
            "seconds",
            "rows_read_this_run",
        )
    }
)
