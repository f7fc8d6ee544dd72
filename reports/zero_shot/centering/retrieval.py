"""Does language-mean centering make USE-m more language-neutral? Cross-lingual retrieval top-1.

    python reports/zero_shot/centering/retrieval.py --data_dir /work/data/h5 \
        --cache /work/data/h26/xling/cache.sqlite   # writes retrieval.json beside this file

For each language, the English test synopses aligned with one of its test synopses (the test
cells' references, at most 1,000) retrieve their translation among all of them by cosine: raw
vectors, and both sides centred by their language's mean (the means of the zero-shot run: the
sentences of each language's first 200 train-split descriptions).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

HERE = Path(__file__).parent


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _top1(q: torch.Tensor, c: torch.Tensor) -> float:
    q = q / q.norm(dim=1, keepdim=True)
    c = c / c.norm(dim=1, keepdim=True)
    hits = (q @ c.T).argmax(dim=1) == torch.arange(len(q))
    return round(hits.float().mean().item(), 4)


def main(data_dir: str, cache: str, n: int = 1000, mean_docs: int = 200) -> dict:
    """Top-1 per language, raw and centred; written to ``retrieval.json``."""
    from encoders.cache import EmbeddingCache
    from encoders.multilingual import USECodec
    from lcm.corpora.debian import DDTP_TO_FLORES
    from lcm.splitting import SentenceSplitter

    data = Path(data_dir)
    codec = USECodec(cache=EmbeddingCache(cache))
    split = SentenceSplitter(256)

    def mean(lang: str) -> torch.Tensor:
        rows = _rows(data / f"debian_descriptions.{lang}.train.jsonl")[:mean_docs]
        flores = DDTP_TO_FLORES[lang]
        sents = [s for r in rows for s in split.split(r["text"], flores)]
        return codec.encode(sents, flores).mean(dim=0)

    en = {r["md5"]: r["summary"] for r in _rows(data / "debian_descriptions.en.test.jsonl")}
    mu_en = mean("en")
    out = {}
    for lang in ("fr", "de", "it", "es", "ru", "ja", "zh_CN"):
        pairs = [
            (en[r["md5"]], r["summary"])
            for r in _rows(data / f"debian_descriptions.{lang}.test.jsonl")
            if r["md5"] in en
        ][:n]
        q = codec.encode([a for a, _ in pairs], "eng_Latn")
        c = codec.encode([b for _, b in pairs], DDTP_TO_FLORES[lang])
        mu = mean(lang)
        out[lang] = {
            "pairs": len(pairs),
            "top1_raw": _top1(q, c),
            "top1_centred": _top1(q - mu_en, c - mu),
            "mean_distance_to_en": round((mu - mu_en).norm().item(), 4),
        }
        print(lang, out[lang])
    (HERE / "retrieval.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
