"""Reading documents with `datasets`, row by row, with every bad row accounted for.

Inputs are jsonl/json, parquet, csv or plain-text files. Each row becomes either a
:class:`Document` (id, language, sentences per field) or a :class:`Reject` that names the file,
the row and the reason. Nothing is dropped silently: ``len(documents) + len(rejects)`` equals the
number of input rows.

Bytes that are not UTF-8 would make Arrow's readers fail the whole file; we find them first and
turn only the affected rows (jsonl/txt lines) or file (csv) into rejects.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from encoders.langs import SONAR_LANGS, UnknownLanguageError, validate_lang
from lcm.splitting import SentenceSplitter

InputFormat = Literal["auto", "jsonl", "parquet", "csv", "txt"]
_SUFFIX_FORMAT = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "txt",
}
_BAD_UTF8 = "__lcm_non_utf8__"


@dataclass
class Document:
    """One valid input row, split into sentences."""

    id: str
    lang: str
    source: str  # "<file>:<row>", row counted from 0
    sentences: dict[str, list[str]]  # field name -> sentences
    raw: dict[str, str] = field(default_factory=dict)  # target field -> original text


REJECT_KINDS = (
    "unreadable_file",
    "non_utf8",
    "duplicate_id",
    "unknown_lang",
    "missing_field",
    "not_text",
    "empty",
    "no_sentences",
    "non_finite",
    "length_mismatch",
)


@dataclass
class Reject:
    """One input row that could not be used, and why."""

    file: str
    row: int
    kind: str  # short category, one of REJECT_KINDS
    reason: str  # the full message
    id: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files named by ``inputs`` (paths or glob patterns), in a stable order, each once."""
    files: list[Path] = []
    for pattern in inputs:
        matches = sorted(glob.glob(str(pattern), recursive=True))
        if not matches:
            raise FileNotFoundError(f"input not found: {pattern}")
        for m in matches:
            p = Path(m).resolve()
            if p.is_dir():
                raise IsADirectoryError(f"input is a folder, pass files or a glob: {m}")
            if p not in files:
                files.append(p)
    return files


def file_format(path: Path, fmt: InputFormat) -> str:
    if fmt != "auto":
        return fmt
    try:
        return _SUFFIX_FORMAT[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"cannot tell the format of {path} from its suffix; pass input_format="
            f"jsonl|parquet|csv|txt"
        ) from None


def fingerprint(files: Sequence[Path]) -> str:
    """Content hash of the inputs, so a resumed run can refuse changed inputs."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _utf8_clean_copy(path: Path, fmt: str, work_dir: Path) -> tuple[Path, list[int]]:
    """Return a readable copy of ``path`` and the rows whose bytes were not UTF-8.

    jsonl and line-sampled txt: a bad line is replaced by a marker row (row numbers are kept).
    csv and document txt: quoting can span lines, so a file with bad bytes is rejected as a whole
    (signalled by row -1).
    """
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return path, []
    except UnicodeDecodeError:
        pass
    if fmt not in ("jsonl", "txt_line"):
        return path, [-1]
    bad: list[int] = []
    lines = data.split(b"\n")
    out = []
    for i, line in enumerate(lines):
        try:
            line.decode("utf-8")
            out.append(line)
        except UnicodeDecodeError:
            bad.append(i)
            marker = {_BAD_UTF8: True} if fmt == "jsonl" else _BAD_UTF8
            out.append(json.dumps(marker).encode() if fmt == "jsonl" else marker.encode())
    work_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    clean = work_dir / f"{digest}-{path.name}"
    clean.write_bytes(b"\n".join(out))
    return clean, bad


def iter_rows(
    files: Sequence[Path],
    fmt: InputFormat = "auto",
    txt_sample_by: Literal["document", "paragraph", "line"] = "document",
    work_dir: Path | None = None,
    cache_dir: str | None = None,
) -> Iterator[tuple[str, int, dict | None, str | None]]:
    """Yield ``(file, row, record, error)`` for every row of every file, in order."""
    import datasets

    work_dir = work_dir or Path(".lcm_inputs")
    for path in files:
        kind = file_format(path, fmt)
        if kind == "txt":
            line_based = txt_sample_by == "line"
            clean, bad = _utf8_clean_copy(path, "txt_line" if line_based else "txt", work_dir)
        elif kind in ("jsonl", "csv"):
            clean, bad = _utf8_clean_copy(path, kind, work_dir)
        else:
            clean, bad = path, []
        if bad == [-1]:
            yield str(path), 0, None, "non_utf8: file is not valid UTF-8 (bytes that do not decode)"
            continue
        builder = {"jsonl": "json", "txt": "text"}.get(kind, kind)
        kwargs = {"sample_by": txt_sample_by} if kind == "txt" else {}
        try:
            ds = datasets.load_dataset(
                builder,
                data_files=[str(clean)],
                split="train",
                cache_dir=cache_dir,
                **kwargs,
            )
        except Exception as ex:  # noqa: BLE001 - datasets/pyarrow raise many parse errors
            msg = f"unreadable_file: cannot read file as {kind}: {type(ex).__name__}: {ex}"
            yield str(path), 0, None, msg
            continue
        bad_rows = set(bad)
        for i, record in enumerate(ds):
            if i in bad_rows or record.get(_BAD_UTF8) or record.get("text") == _BAD_UTF8:
                yield (
                    str(path),
                    i,
                    None,
                    "non_utf8: row is not valid UTF-8 (bytes that do not decode)",
                )
            else:
                yield str(path), i, record, None


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    raise TypeError(type(value).__name__)


def to_documents(
    rows: Iterator[tuple[str, int, dict | None, str | None]],
    splitter: SentenceSplitter,
    text_field: str = "text",
    target_fields: Sequence[str] = (),
    id_field: str | None = "id",
    lang_field: str | None = "lang",
    default_lang: str = "eng_Latn",
    langs: Sequence[str] | None = None,
) -> tuple[list[Document], list[Reject]]:
    """Validate rows and split their fields into sentences."""
    docs: list[Document] = []
    rejects: list[Reject] = []
    seen: dict[str, str] = {}
    for file, row, record, error in rows:
        where = f"{Path(file).name} row {row}"
        if error is not None:
            kind, _, message = error.partition(": ")
            rejects.append(Reject(file, row, kind, message))
            continue
        assert record is not None
        doc_id = None
        if id_field and record.get(id_field) not in (None, ""):
            doc_id = str(record[id_field])
        doc_id = doc_id or f"{Path(file).name}:{row}"
        if doc_id in seen:
            message = f"duplicate id {doc_id!r} (first at {seen[doc_id]})"
            rejects.append(Reject(file, row, "duplicate_id", message, doc_id))
            continue
        lang = default_lang
        if lang_field and record.get(lang_field) is not None:  # rows without one use the default
            lang = record[lang_field]
        try:
            lang = validate_lang(lang, langs or SONAR_LANGS, where)
        except UnknownLanguageError as ex:
            rejects.append(Reject(file, row, "unknown_lang", str(ex), doc_id))
            continue
        sentences: dict[str, list[str]] = {}
        raw: dict[str, str] = {}
        problem = None
        for name in (text_field, *target_fields):
            try:
                value = _text(record.get(name))
            except TypeError as ex:
                problem = ("not_text", f"field {name!r} is {ex}, expected a string")
                break
            # datasets fills a key that a row lacks with null, so both read as missing
            if value is None:
                problem = ("missing_field", f"missing field {name!r}")
                break
            if not value.strip():
                problem = ("empty", f"field {name!r} is empty or whitespace")
                break
            sentences[name] = splitter.split(value, lang)
            if not sentences[name]:
                problem = ("no_sentences", f"field {name!r} has no sentences")
                break
            if name != text_field:
                raw[name] = value
        if problem:
            rejects.append(Reject(file, row, *problem, doc_id))
            continue
        seen[doc_id] = f"{Path(file).name}:{row}"
        docs.append(Document(doc_id, lang, f"{file}:{row}", sentences, raw))
    return docs, rejects
