"""Build the shipped evaluation slice: parallel Debian descriptions and synopses in en, fr, de.

    python -m eval.data.build_debian [--work_dir /tmp/lcm-debian] [--per_lang 100]

Fetches the Debian package descriptions and their DDTP translations through apt with
:func:`lcm.corpora.debian.fetch_debian_descriptions` (a private apt configuration under
``work_dir``; about 30 MB of index files), then keeps packages that

- are in the fetcher's ``test`` split (split by source package, so none of them is in the
  ``train`` split that ``lcm fetch-debian`` users train on),
- have a description in every language of ``langs`` translated from the *same* English text
  (equal ``Description-md5``), so the files are parallel row for row,
- have 3 to 6 sentences and at most ``max_chars`` characters in every language,
- are the first of their source package (``libfoo1``/``libfoo-dev`` are near-duplicates),

and writes the ``per_lang`` of them with the lowest SHA-256 of the package name (a fixed,
order-free sample) to ``debian_<lang>.jsonl`` beside this file, plus ``debian_slice.json``
(counts, the apt index files used, the settings). See README.md in this folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEEP_FIELDS = ("id", "lang", "text", "summary", "md5", "source")


def build(
    work_dir: str = "/tmp/lcm-debian-eval",
    out_dir: str = str(HERE),
    langs: list[str] | None = None,
    per_lang: int | None = 100,
    splits: list[str] | None = None,
    min_sentences: int = 3,
    max_sentences: int = 6,
    max_chars: int = 700,
) -> dict:
    """Fetch Debian descriptions and write the parallel evaluation slice.

    Args:
        work_dir: where apt's index files and the full fetched jsonl files go (not shipped).
        out_dir: where ``debian_<lang>.jsonl`` and ``debian_slice.json`` are written.
        langs: DDTP language codes (default ``[en, fr, de]``); ``en`` must be one of them.
        per_lang: packages kept (the same packages in every language); None: every package
            that qualifies.
        splits: the fetcher's splits to draw from (default ``[test]``; ``[test, valid]`` for a
            larger set that a model trained on the ``train`` split has not seen).
        min_sentences: fewest sentences of a kept description, in every language.
        max_sentences: most sentences of a kept description, in every language.
        max_chars: longest kept description, in characters, in every language.

    Returns:
        The contents of ``debian_slice.json``.
    """
    from lcm.corpora.debian import DDTP_TO_FLORES, fetch_debian_descriptions
    from lcm.splitting import SentenceSplitter

    langs = list(langs or ["en", "fr", "de"])
    splits = list(splits or ["test"])
    if "en" not in langs:
        raise ValueError("langs must include 'en' (the md5 that aligns translations is English)")
    fetched = fetch_debian_descriptions(work_dir, langs=langs, min_sentences=2)
    rows: dict[str, dict[str, dict]] = {}
    for lang in langs:
        path = Path(fetched["files"][lang])
        with open(path, encoding="utf-8") as f:
            rows[lang] = {r["id"]: r for r in map(json.loads, f) if r["split"] in splits}
    splitter = SentenceSplitter(max_chars=0)

    def fits(row: dict, lang: str) -> bool:
        n = len(splitter.split(row["text"], DDTP_TO_FLORES[lang]))
        return min_sentences <= n <= max_sentences and len(row["text"]) <= max_chars

    candidates = []
    for package in sorted(rows["en"]):
        group = [rows[lang].get(package) for lang in langs]
        if any(r is None for r in group) or len({r["md5"] for r in group}) != 1:
            continue
        if all(fits(r, lang) for r, lang in zip(group, langs)):
            candidates.append(package)
    one_per_source: dict[str, str] = {}
    for package in candidates:  # sorted: the alphabetically first binary package of a source
        one_per_source.setdefault(rows["en"][package]["source"], package)
    chosen = sorted(one_per_source.values(), key=lambda p: hashlib.sha256(p.encode()).hexdigest())[
        :per_lang
    ]
    chosen.sort()
    if per_lang is not None and len(chosen) < per_lang:
        raise RuntimeError(f"only {len(chosen)} packages qualify; relax the filters")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for lang in langs:
        path = out / f"debian_{lang}.jsonl"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for package in chosen:
                row = rows[lang][package]
                f.write(json.dumps({k: row[k] for k in KEEP_FIELDS}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        files[lang] = {"file": path.name, "rows": len(chosen), "bytes": path.stat().st_size}
    lists = Path(work_dir) / "apt" / "state" / "lists"
    indexes = sorted(p.name for p in lists.glob("*_i18n_Translation-*") if p.is_file())
    slice_info = {
        "source": "Debian package descriptions and DDTP translations (apt Translation-<lang>)",
        "apt_index_files": indexes,
        "settings": {
            "langs": langs,
            "split": splits[0] if len(splits) == 1 else splits,
            "per_lang": per_lang,
            "min_sentences": min_sentences,
            "max_sentences": max_sentences,
            "max_chars": max_chars,
            "aligned_by": "package name with equal Description-md5 in every language",
            "sample": "lowest sha256(package name), one package per source package",
        },
        "candidates": len(candidates),
        "files": files,
    }
    (out / "debian_slice.json").write_text(json.dumps(slice_info, indent=2) + "\n")
    return slice_info


if __name__ == "__main__":
    from jsonargparse import CLI

    print(json.dumps(CLI(build, as_positional=False), indent=2))
