"""Retrieval banks per target language for codecs that decode by retrieval (``--banks``).

A retrieval codec (USE-m, e5, MiniLM) writes a summary in language B by picking the nearest
sentence of its bank in B. ``ConceptModel.load`` fills the bank from the model's training shards,
which usually hold one language only, so a cross-lingual matrix needs a bank per target language:
``--banks '[fra_Latn=fr_synopses.jsonl, deu_Latn=de_synopses.jsonl]'``.

Every file is checked before use: the codec must handle the language, and a row whose language
field names another language stops the run (a German bank given as French is refused). Sentences
equal to the reference summary of an evaluated document in that language are left out (counted),
so retrieval cannot return the answer; the same holds for the part of a bank that the model's
training shards filled (a training synopsis can equal an evaluated reference). With
``references_in_bank=True`` every reference is kept (the closed-set variant, an upper bound).
``report.md`` says what each bank contains and how many references were left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from encoders.langs import SONAR_LANGS, validate_lang


@dataclass
class BankFile:
    """One ``LANG=path`` entry: the sentences it offers and where they come from."""

    lang: str
    path: str
    sentences: list[str]
    rows_not_used: list[dict] = field(default_factory=list)


def parse_bank_entry(entry: str) -> tuple[str, str]:
    """``"fra_Latn=path"`` -> (language, path); the language is a FLORES-200 code."""
    code, sep, path = entry.partition("=")
    if not sep or not path:
        raise ValueError(
            f"bank entry {entry!r}: expected LANG=path (e.g. fra_Latn=fr_synopses.jsonl), a "
            "bank holds the sentences of one target language"
        )
    return validate_lang(code.strip(), SONAR_LANGS, f"bank entry {entry!r}"), path


def read_bank_files(
    banks: Sequence[str], text_field: str, lang_field: str | None, work_dir: Path
) -> list[BankFile]:
    """Read the sentences of every ``LANG=path`` entry (jsonl/json, parquet, csv; globs).

    Raises:
        FileNotFoundError: a path matches nothing.
        ValueError: a file cannot be read or lacks ``text_field``; a row's language field names
            another language than the entry's (file, row and both languages in the message).
    """
    from lcm.data.documents import expand_inputs, iter_rows

    out: list[BankFile] = []
    for entry in banks:
        lang, pattern = parse_bank_entry(entry)
        for path in expand_inputs([pattern]):
            bank = BankFile(lang, str(path), [])
            rows = iter_rows([path], work_dir=work_dir / "banks", cache_dir=str(work_dir / "hf"))
            for file, i, record, error in rows:
                if error is not None:
                    kind, _, message = error.partition(": ")
                    if kind == "unreadable_file":
                        raise ValueError(f"bank {lang}={file}: {message}")
                    bank.rows_not_used.append({"file": file, "row": i, "reason": message})
                    continue
                assert record is not None
                if text_field not in record:
                    raise ValueError(
                        f"bank {lang}={file}: no field {text_field!r} (the rows have "
                        f"{sorted(record)}); set --bank_field"
                    )
                code = record.get(lang_field) if lang_field else None
                if code not in (None, ""):
                    row_lang = validate_lang(
                        str(code), SONAR_LANGS, f"bank {lang}={file} row {i} field {lang_field!r}"
                    )
                    if row_lang != lang:
                        raise ValueError(
                            f"bank {lang}={file} row {i}: field {lang_field!r} is {row_lang}, "
                            f"not {lang}: a bank for {lang} must hold {lang} sentences only "
                            "(give each language its own LANG=path entry)"
                        )
                text = record.get(text_field)
                if not isinstance(text, str) or not text.strip():
                    bank.rows_not_used.append(
                        {"file": file, "row": i, "reason": f"field {text_field!r} is empty"}
                    )
                    continue
                bank.sentences.append(text.strip())
            out.append(bank)
    return out


def bank_langs(codec) -> list[str]:
    """The languages a retrieval codec's bank holds sentences in ([] for a generative codec)."""
    return codec.bank.langs() if hasattr(codec, "bank") else []


def bank_sentences(codec, lang: str) -> list[str]:
    """The sentences a retrieval codec's bank holds in ``lang`` (empty if none)."""
    return list(codec.bank.sentences(lang)) if hasattr(codec, "bank") else []


def fill_banks(
    codec,
    files: Sequence[BankFile],
    references: dict[str, set[str]],
    references_in_bank: bool = False,
) -> dict[str, dict]:
    """Add the bank files' sentences to ``codec``'s retrieval bank, per language.

    Args:
        codec: a retrieval codec (it has ``bank`` and ``add_to_bank``).
        files: from :func:`read_bank_files`.
        references: per language, the reference summaries of the evaluated documents
            (stripped); bank sentences equal to one, whether from ``files`` or from the
            training shards ``ConceptModel.load`` filled the bank with, are left out unless
            ``references_in_bank``.
        references_in_bank: keep references in the bank (closed set: an upper bound).

    Returns:
        Per language of the bank (shard-filled ones included): ``sentences`` (bank size),
        ``files``, ``offered`` (sentences from the files), ``references_left_out`` (from the
        files and the shard part together), ``references_left_out_of_shards`` (those the
        training shards had put in the bank) and ``references_in_bank`` (how many evaluation
        references the bank holds: 0 unless ``references_in_bank``).

    Raises:
        ValueError: the codec decodes generatively (no bank).
        UnknownLanguageError: the codec does not handle a bank's language.
    """
    if files and not hasattr(codec, "add_to_bank"):
        raise ValueError(
            f"--banks: the codec {codec.codec_id!r} has a decoder, not a retrieval bank; banks "
            "are for retrieval codecs (USE-m, e5, MiniLM)"
        )
    info: dict[str, dict] = {}
    for f in files:
        codec.validate_lang(f.lang, f"bank {f.lang}={f.path}")
        refs = references.get(f.lang, set())
        keep = [s for s in f.sentences if references_in_bank or s not in refs]
        item = info.setdefault(
            f.lang, {"files": [], "offered": 0, "references_left_out": 0, "rows_not_used": 0}
        )
        item["files"].append(f.path)
        item["offered"] += len(f.sentences)
        item["references_left_out"] += len(f.sentences) - len(keep)
        item["rows_not_used"] += len(f.rows_not_used)
        if keep:
            codec.add_to_bank(keep, f.lang)
    for lang in bank_langs(codec):
        item = info.setdefault(
            lang, {"files": [], "offered": 0, "references_left_out": 0, "rows_not_used": 0}
        )
        # The part the training shards filled (ConceptModel.load) may hold references too.
        removed = 0 if references_in_bank else codec.bank.remove(references.get(lang, ()), lang)
        item["references_left_out"] += removed
        item["references_left_out_of_shards"] = removed
        held = bank_sentences(codec, lang)
        item["sentences"] = len(held)
        refs = references.get(lang, set())
        item["references_in_bank"] = len(refs & set(held))
    return dict(sorted(info.items()))
