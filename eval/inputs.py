"""Evaluation inputs: document files, language pairs, generation settings and baselines,
with errors that name the file, row and field."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoders.langs import SONAR_LANGS, validate_lang


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One usable document in one language."""

    id: str
    lang: str
    text: str
    summary: str
    where: str  # "<file> row <i>"


_FLORES_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")


@dataclass(frozen=True)
class Pair:
    src: str
    tgt: str

    @property
    def label(self) -> str:
        return f"{self.src}->{self.tgt}"


def parse_pair(entry: str) -> Pair:
    """``"eng_Latn->fra_Latn"`` (or ``eng_Latn-fra_Latn``; a single code means A->A), validated
    as FLORES-200 codes."""
    parts = entry.split("->") if "->" in entry else entry.split("-")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"language pair {entry!r}: expected SRC->TGT, e.g. eng_Latn->fra_Latn")
    src, tgt = (validate_lang(p.strip(), SONAR_LANGS, f"language pair {entry!r}") for p in parts)
    return Pair(src, tgt)


def _split_data_entry(entry: str) -> tuple[str, str | None]:
    """``path`` or ``LANG=path`` -> (path, LANG or None)."""
    if "=" in entry and not Path(entry).exists():
        code, path = entry.split("=", 1)
        if _FLORES_CODE.match(code) or "/" not in code:
            return path, validate_lang(code, SONAR_LANGS, f"data entry {entry!r}")
    return entry, None


def _field_text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, str) else None


def load_rows(
    data: Sequence[str],
    text_field: str,
    summary_field: str,
    id_field: str | None,
    lang_field: str | None,
    work_dir: Path,
) -> tuple[dict[str, dict[str, Row]], list[dict], list[str]]:
    """Read every row of ``data``.

    Returns:
        ``{lang: {id: Row}}`` in file order, the rows that cannot be used (file, row, id, lang,
        reason), and the files read.

    Raises:
        FileNotFoundError: a file or glob matches nothing.
        ValueError: a file cannot be read, or lacks the text, summary, id or language column.
        UnknownLanguageError: a row's language is not a FLORES-200 code (names file, row, field).
    """
    from lcm.data.documents import expand_inputs, iter_rows

    by_lang: dict[str, dict[str, Row]] = {}
    skipped: list[dict] = []
    files: list[str] = []
    for entry in data:
        pattern, file_lang = _split_data_entry(entry)
        for path in expand_inputs([pattern]):
            files.append(str(path))
            rows = iter_rows([path], work_dir=work_dir / "inputs", cache_dir=str(work_dir / "hf"))
            checked = False
            for file, i, record, error in rows:
                name = Path(file).name
                if error is not None:
                    kind, _, message = error.partition(": ")
                    if kind == "unreadable_file":
                        raise ValueError(f"{file}: {message}")
                    skipped.append(_skip(file, i, None, None, message))
                    continue
                assert record is not None
                if not checked:  # datasets gives every row all the file's columns
                    _check_columns(
                        file, record, text_field, summary_field, id_field, lang_field, file_lang
                    )
                    checked = True
                where = f"{name} row {i}"
                if id_field and record.get(id_field) in (None, ""):
                    raise ValueError(f"{file} row {i}: field {id_field!r} (the id) is empty")
                doc_id = str(record[id_field]) if id_field else str(i)
                code = record.get(lang_field) if lang_field else None
                if code is None:
                    if file_lang is None:
                        raise ValueError(
                            f"{file} row {i}: field {lang_field!r} (the language) is empty; "
                            f"fill it or give the file's language as LANG={file}"
                        )
                    code = file_lang
                lang = validate_lang(code, SONAR_LANGS, f"{file} row {i} field {lang_field!r}")
                text = _field_text(record.get(text_field))
                summary = _field_text(record.get(summary_field))
                problem = None
                if text is None or not text.strip():
                    problem = f"field {text_field!r} (the document) is missing, empty or not text"
                elif summary is None or not summary.strip():
                    problem = f"field {summary_field!r} (the summary) is missing, empty or not text"
                elif doc_id in by_lang.get(lang, {}):
                    first = by_lang[lang][doc_id].where
                    problem = f"duplicate id {doc_id!r} in {lang} (first at {first})"
                if problem:
                    skipped.append(_skip(file, i, doc_id, lang, problem))
                    continue
                by_lang.setdefault(lang, {})[doc_id] = Row(doc_id, lang, text, summary, where)
    return by_lang, skipped, files


def _skip(file: str, row: int | None, doc_id: str | None, lang: str | None, reason: str) -> dict:
    return {"file": file, "row": row, "id": doc_id, "lang": lang, "reason": reason}


def _check_columns(file, record, text_field, summary_field, id_field, lang_field, file_lang):
    have = sorted(record)
    needed = [("text_field", text_field), ("summary_field", summary_field)]
    if id_field:
        needed.append(("id_field", id_field))
    if lang_field and file_lang is None:
        needed.append(("lang_field", lang_field))
    for option, name in needed:
        if name not in record:
            hint = ""
            if option == "lang_field":
                hint = f", or give the file's language as LANG={file}"
            elif option == "id_field":
                hint = ", or --id_field null to number rows"
            raise ValueError(
                f"{file}: no field {name!r} (the rows have {have}); set --{option}{hint}"
            )
    if not lang_field and file_lang is None:
        raise ValueError(f"{file}: no language: set --lang_field or give it as LANG={file}")


def parse_settings(settings: Sequence[dict[str, Any]] | None) -> list[tuple[str, Any]]:
    """``[(label, lcm.api.Settings)]``; the label lists the overridden fields (``default``)."""
    from lcm.api import Settings

    out: list[tuple[str, Any]] = []
    for i, overrides in enumerate(settings or [{}]):
        parsed = Settings.from_mapping(overrides, where=f"settings[{i}]")
        clean = {k: getattr(parsed, k) for k in overrides}
        label = ",".join(f"{k}={clean[k]}" for k in sorted(clean)) or "default"
        if label in [x[0] for x in out]:
            raise ValueError(f"settings[{i}] repeats the setting {label!r}")
        out.append((label, parsed))
    return out


def parse_baselines(names: Sequence[str]) -> list[tuple[str, str, int]]:
    """``lead-K`` / ``random-K`` -> ``[(name, kind, K)]``."""
    out = []
    for name in names:
        m = re.fullmatch(r"(lead|random)-(\d+)", name)
        if not m or int(m.group(2)) < 1:
            raise ValueError(f"unknown baseline {name!r}: expected lead-K or random-K, K >= 1")
        out.append((name, m.group(1), int(m.group(2))))
    return out


def sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:16]


def checkpoint_fingerprint(path: str | Path) -> str:
    """Size and the hash of the first and last MiB: changes when the checkpoint is rewritten,
    costs nothing on multi-GB files."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]
