"""A synthetic corpus for the report's ``ci`` preset: seconds to build, learnable structure.

Sentence ``k`` of a template is always followed by sentence ``(3k + 7) % P``, so the next concept
is a function of the current one (a model can beat copy-previous). Vectors come from a hash
codec (a fixed N(0, I) vector per sentence). The held-out "source" uses another template, so its
sentences never occur in training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from encoders.hashing import HashCodec as _HashCodec

P = 23


class HashCodec(_HashCodec):
    """Sentence -> a fixed N(0, I) vector seeded by a hash of the text (16-d)."""

    codec_id = "toy-hash-codec-16"


def _docs(template: str, n: int, seed: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        k = rng.randrange(P)
        sents = []
        for _ in range(rng.randrange(6, 20)):
            sents.append(template.format(k=k))
            k = (3 * k + 7) % P
        docs.append({"id": f"{prefix}/{i}", "text": "\n\n".join(sents), "lang": "eng_Latn"})
    return docs


def build_toy(root: str | Path) -> tuple[str, dict[str, str]]:
    """Prepare train, in-domain test and held-out shards under ``root``; returns
    ``(train_dir, {set name: folder})``. Reuses finished folders."""
    from lcm.data.prepare import prepare

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    parts = {
        "train": _docs("Token {k} is here.", 100, 0, "toy"),
        "test": _docs("Token {k} is here.", 24, 1, "toy-test"),
        "ood": _docs("Item number {k} appears now.", 24, 2, "toy-ood"),
    }
    codec = HashCodec()
    for name, docs in parts.items():
        if (root / name / "summary.json").exists():
            continue
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        prepare(str(path), str(root / name), codec=codec, cache=False, progress=False)
    return str(root / "train"), {
        "in-domain test": str(root / "test"),
        "held-out template": str(root / "ood"),
    }
