"""Real evaluation data shipped with the package (see README.md in this folder).

``debian_<lang>.jsonl`` (en, fr, de): Debian package descriptions (``text``) and their one-line
synopses (``summary``), parallel across languages by ``id`` (the package name). Built by
:mod:`eval.data.build_debian`.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent

#: DDTP code of each shipped language -> its FLORES-200 code.
DEBIAN_LANGS = {"en": "eng_Latn", "fr": "fra_Latn", "de": "deu_Latn"}


def debian_file(lang: str) -> Path:
    """Path of the shipped Debian slice in ``lang`` (a DDTP code ``en``/``fr``/``de`` or its
    FLORES-200 code)."""
    by_flores = {v: k for k, v in DEBIAN_LANGS.items()}
    ddtp = by_flores.get(lang, lang)
    if ddtp not in DEBIAN_LANGS:
        raise ValueError(f"no shipped Debian slice in {lang!r}; have {sorted(DEBIAN_LANGS)}")
    return DATA_DIR / f"debian_{ddtp}.jsonl"
