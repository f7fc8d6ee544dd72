"""Reading documents with `datasets`, row by row, with every bad row accounted for.

Inputs are jsonl/json, parquet, csv or plain-text files. Each row becomes either a
:class:`Document` (id, language, sentences per field) or a :class:`Reject` that names the file,
the row and the reason. Nothing is dropped silently: ``len(documents) + len(rejects)`` equals the
number of input rows.

Arrow's readers (through ``datasets``) read every file that they can; a file they fail on (one
malformed JSON line, bytes that are not UTF-8, a ragged csv row, a parquet row group that does
not decode) is read again row by row, so that only its bad rows are rejected, each with its file,
row, line and reason.
"""

from __future__ import annotations

import codecs
import csv
import glob
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

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
log = logging.getLogger(__name__)


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
    "unreadable_row_group",
    "malformed_json",
    "malformed_row",
    "non_utf8",
    "duplicate_id",
    "unknown_lang",
    "missing_field",
    "not_text",
    "empty",
    "no_sentences",
    "non_finite",
    "length_mismatch",
    "unknown_tokens",
)


@dataclass
class Reject:
    """One input row that could not be used, and why."""

    file: str
    row: int
    kind: str  # short category, one of REJECT_KINDS
    reason: str  # the full message
    id: str | None = None
    line: int | None = None  # 1-based line in the file, where the reader knows it

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


_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
_LINE = re.compile(r"lines? (\d+)")
_NON_UTF8 = "non_utf8: {where} is not valid UTF-8 (bytes that do not decode)"


def _decode(data: bytes) -> tuple[str, bool]:
    """Text of ``data`` (bad bytes kept as lone surrogates) and whether all of it was UTF-8."""
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="surrogateescape"), False


def parse_json_line(line: bytes) -> tuple[dict | None, str | None]:
    """One JSON-lines row: ``(record, None)`` or ``(None, "<kind>: <message>")``."""
    text, clean = _decode(line.rstrip(b"\r\n"))
    if not clean:
        return None, _NON_UTF8.format(where="row")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as ex:
        msg = ex.msg.removesuffix(" at")
        return None, f"malformed_json: invalid JSON ({msg}, column {ex.colno})"
    if not isinstance(value, dict):
        return None, f"malformed_json: a JSON {type(value).__name__}, expected an object"
    return value, None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, int, dict | None, str | None]]:
    """Per-line jsonl reader for a file the Arrow engine could not read.

    Rows are the non-blank lines, numbered from 0 as the engine numbers them; a line that is not
    UTF-8, not JSON or not an object becomes one error that names its line (1-based). Like the
    engine, every good row gets every column of the file (missing ones as None).
    """

    def lines() -> Iterator[tuple[int, bytes]]:
        with open(path, "rb") as fh:
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    yield n, line

    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if head.startswith(b"["):  # one JSON array, not JSON lines: it parses whole or not at all
        text, clean = _decode(path.read_bytes())
        try:
            records = json.loads(text) if clean else None
        except json.JSONDecodeError as ex:
            message = f"line {ex.lineno}: invalid JSON array ({ex.msg.removesuffix(' at')})"
            yield str(path), 0, None, f"unreadable_file: {message}"
            return
        if records is None:
            yield str(path), 0, None, _NON_UTF8.format(where="file")
            return
        for row, record in enumerate(records):
            if isinstance(record, dict):
                yield str(path), row, record, None
            else:
                kind = type(record).__name__
                yield str(path), row, None, f"malformed_json: item {row} is a {kind}, not an object"
        return
    columns: dict[str, None] = {}
    for _, line in lines():  # pass 1: the columns (memory stays bounded on large files)
        record, _ = parse_json_line(line)
        if record is not None:
            columns.update(dict.fromkeys(record))
    for row, (n, line) in enumerate(lines()):
        record, error = parse_json_line(line)
        if error is not None:
            kind, _, message = error.partition(": ")
            yield str(path), row, None, f"{kind}: line {n}: {message}"
        else:
            yield str(path), row, {**dict.fromkeys(columns), **record}, None


def _csv_rows(path: Path) -> Iterator[tuple[str, int, dict | None, str | None]]:
    """Per-row csv reader for a file the Arrow engine could not read (bad bytes, ragged rows).

    Quoted fields may span lines; each error names the lines of its record. Empty cells read as
    None, as in the engine.
    """
    text, _ = _decode(path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    row, last_line = 0, 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as ex:  # e.g. a NUL byte or an unterminated quote at the end
            yield str(path), row, None, f"malformed_row: line {last_line + 1}: {ex}"
            return
        first, last_line = last_line + 1, reader.line_num
        if not cells:  # blank line, skipped as the engine does
            continue
        where = f"line {first}" if first == last_line else f"lines {first}-{last_line}"
        if header is None:
            if any(_SURROGATE.search(c) for c in cells):
                yield str(path), 0, None, f"unreadable_file: {where} (the header) is not UTF-8"
                return
            header = cells
            continue
        if any(_SURROGATE.search(c) for c in cells):
            yield str(path), row, None, f"non_utf8: {where}: row is not valid UTF-8"
        elif len(cells) != len(header):
            message = f"{where}: {len(cells)} fields, the header has {len(header)}"
            yield str(path), row, None, f"malformed_row: {message}"
        else:
            yield str(path), row, {k: (v if v != "" else None) for k, v in zip(header, cells)}, None
        row += 1


def _txt_rows(path: Path, sample_by: str) -> Iterator[tuple[str, int, dict | None, str | None]]:
    """Plain-text reader for a file with bytes that are not UTF-8: rows are cut exactly as the
    ``datasets`` text builder cuts them, and only the rows holding bad bytes are rejected."""
    text, _ = _decode(path.read_bytes())
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as open()
    if sample_by == "line":
        items = [line.rstrip("\n") for line in io.StringIO(text).readlines()]
    elif sample_by == "paragraph":
        items = [p for p in text.split("\n\n") if p]
    else:
        items = [text]
    for row, item in enumerate(items):
        if _SURROGATE.search(item):
            # 1-based, as line numbers are ("paragraph 2": the file's second paragraph)
            where = "the file" if sample_by == "document" else f"{sample_by} {row + 1}"
            yield str(path), row, None, _NON_UTF8.format(where=where)
        else:
            yield str(path), row, {"text": item}, None


def _parquet_rows(path: Path) -> Iterator[tuple[str, int, dict | None, str | None]]:
    """Per-row-group parquet reader: a row group that fails to decode rejects its row range."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as ex:  # noqa: BLE001 - pyarrow raises several error types
        yield str(path), 0, None, f"unreadable_file: cannot read parquet footer: {ex}"
        return
    start = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        try:
            records = pf.read_row_group(g).to_pylist()
        except Exception as ex:  # noqa: BLE001
            message = f"row group {g} (rows {start}-{start + n - 1}) cannot be decoded: {ex}"
            for row in range(start, start + n):
                yield str(path), row, None, f"unreadable_row_group: {message}"
        else:
            for row, record in enumerate(records, start=start):
                yield str(path), row, record, None
        start += n


def _fallback_rows(path: Path, kind: str, txt_sample_by: str):
    if kind == "jsonl":
        return _jsonl_rows(path)
    if kind == "csv":
        return _csv_rows(path)
    if kind == "txt":
        return _txt_rows(path, txt_sample_by)
    return _parquet_rows(path)


def count_rows(files: Sequence[Path], fmt: InputFormat = "auto") -> int:
    """A cheap estimate of the input rows (lines, parquet metadata), for progress ETAs."""
    import pyarrow.parquet as pq

    total = 0
    for path in files:
        kind = file_format(path, fmt)
        try:
            if kind == "parquet":
                total += pq.ParquetFile(path).metadata.num_rows
            elif kind == "txt":
                total += 1
            else:
                with open(path, "rb") as fh:
                    blocks = iter(lambda: fh.read(1 << 20), b"")
                    total += sum(block.count(b"\n") for block in blocks)
        except Exception:  # noqa: BLE001 - an estimate only; the reader reports the real error
            total += 1
    return total


def iter_rows(
    files: Sequence[Path],
    fmt: InputFormat = "auto",
    txt_sample_by: Literal["document", "paragraph", "line"] = "document",
    work_dir: Path | None = None,
    cache_dir: str | None = None,
) -> Iterator[tuple[str, int, dict | None, str | None]]:
    """Yield ``(file, row, record, error)`` for every row of every file, in order.

    ``error`` is ``"<kind>: <message>"`` (kind one of :data:`REJECT_KINDS`); the message starts
    with ``line N:`` where the reader knows the row's line. Files are read by ``datasets``; a file
    that the engine cannot read (a malformed line, bytes that are not UTF-8, a ragged csv row, a
    parquet row group that does not decode) is read again row by row, so only its bad rows are
    lost. ``work_dir`` is unused (kept for callers).
    """
    import datasets

    for path in files:
        kind = file_format(path, fmt)
        if kind in ("jsonl", "csv", "txt"):
            clean = _utf8_file(path)
        else:
            clean = True
        if not clean:
            yield from _fallback_rows(path, kind, txt_sample_by)
            continue
        builder = {"jsonl": "json", "txt": "text"}.get(kind, kind)
        kwargs = {"sample_by": txt_sample_by} if kind == "txt" else {}
        try:
            arrow_files = _quiet_load(datasets, builder, str(path), cache_dir, kwargs)
        except Exception as ex:  # noqa: BLE001 - datasets/pyarrow raise many parse errors
            log.info("%s: the %s engine failed (%s); reading it row by row", path, builder, ex)
            yield from _fallback_rows(path, kind, txt_sample_by)
            continue
        yield from ((str(path), i, record, None) for i, record in enumerate(_records(arrow_files)))


def _records(files: Sequence[str]) -> Iterator[dict]:
    """The rows of the Arrow files that ``datasets`` wrote, one record batch at a time, through
    plain reads. A ``datasets.Dataset`` memory-maps them, and every page it touches (it reads
    each batch's header when it opens the file; iteration reads the rest) stays in this
    process's resident memory, which would then grow with the corpus."""
    import pyarrow as pa

    for name in files:
        with pa.OSFile(name) as fh:
            for batch in pa.ipc.open_stream(fh):
                yield from batch.to_pylist()


def _utf8_file(path: Path) -> bool:
    """Whether every byte of ``path`` decodes as UTF-8 (read incrementally)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _quiet_load(datasets, builder: str, path: str, cache_dir: str | None, kwargs: dict):
    """Have ``datasets`` convert ``path`` to Arrow (once; cached) and return the Arrow files of
    its train split, in order, without opening them as a dataset. Its error log lines are
    silenced (a failure is handled by the caller)."""
    ds_log = logging.getLogger("datasets")
    level = ds_log.level
    ds_log.setLevel(logging.CRITICAL)
    try:
        b = datasets.load_dataset_builder(builder, data_files=[path], cache_dir=cache_dir, **kwargs)
        b.download_and_prepare()
    finally:
        ds_log.setLevel(level)
    files = sorted(glob.glob(str(Path(b.cache_dir) / "*-train*.arrow")))
    if not files:
        raise FileNotFoundError(f"datasets wrote no Arrow file for {path} in {b.cache_dir}")
    return files


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    raise TypeError(type(value).__name__)


class SeenIds:
    """The document ids seen so far, in 16 bytes per id: a sorted array of 64-bit hashes of the
    ids and, beside it, where each id was first seen (file index and row).

    New ids go to a small dict (at most ``buffer`` entries, ~10 MB at the default), merged into
    the sorted arrays when it is full, so memory is 16 MB per million documents plus that buffer
    (and, during a merge, one more copy of the arrays). Two different ids with the same hash
    would read as a duplicate (the second row rejected as ``duplicate_id``, listed in the rejects,
    never silently); the chance of any such collision among ``n`` ids is at most ``n^2 / 2^65``:
    3e-8 for a million documents, 7e-5 for fifty million.
    """

    def __init__(self, buffer: int = 1 << 16) -> None:
        self.buffer = buffer
        self._keys = np.empty(0, dtype=np.uint64)  # sorted
        self._where = np.empty(0, dtype=np.int64)  # (file index << 40) | row, aligned with _keys
        self._recent: dict[int, int] = {}

    @staticmethod
    def _hash(doc_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")

    def __len__(self) -> int:
        return len(self._keys) + len(self._recent)

    @property
    def nbytes(self) -> int:
        """Bytes held by the sorted arrays (the dict buffer not counted)."""
        return self._keys.nbytes + self._where.nbytes

    def find(self, doc_id: str) -> tuple[int, tuple[int, int] | None]:
        """``(hash, first)``: the id's hash, and ``(file index, row)`` of its first occurrence
        or None if it is new."""
        key = self._hash(doc_id)
        first = self._recent.get(key)
        if first is None and len(self._keys):
            i = int(np.searchsorted(self._keys, np.uint64(key)))
            if i < len(self._keys) and int(self._keys[i]) == key:
                first = int(self._where[i])
        return key, None if first is None else (first >> 40, first & ((1 << 40) - 1))

    def insert(self, key: int, file_index: int, row: int) -> None:
        """Record a new id by its hash (from :meth:`find`) and where it was first seen."""
        self._recent[key] = (file_index << 40) | row
        if len(self._recent) >= self.buffer:
            self._merge()

    def add(self, doc_id: str, file_index: int, row: int) -> tuple[int, int] | None:
        """Record ``doc_id``; if it was seen before, return ``(file index, row)`` of its first
        occurrence instead (and record nothing)."""
        key, first = self.find(doc_id)
        if first is None:
            self.insert(key, file_index, row)
        return first

    def _merge(self) -> None:
        keys = np.fromiter(self._recent.keys(), dtype=np.uint64, count=len(self._recent))
        where = np.fromiter(self._recent.values(), dtype=np.int64, count=len(self._recent))
        order = np.argsort(keys)
        keys, where = keys[order], where[order]
        at = np.searchsorted(self._keys, keys)
        self._keys = np.insert(self._keys, at, keys)
        self._where = np.insert(self._where, at, where)
        self._recent = {}


def iter_documents(
    rows: Iterator[tuple[str, int, dict | None, str | None]],
    splitter: SentenceSplitter,
    text_field: str = "text",
    target_fields: Sequence[str] = (),
    id_field: str | None = "id",
    lang_field: str | None = "lang",
    default_lang: str = "eng_Latn",
    langs: Sequence[str] | None = None,
    seen: SeenIds | None = None,
) -> Iterator[Document | Reject]:
    """Validate rows and split their fields into sentences, one row at a time: yields a
    :class:`Document` or a :class:`Reject` per row, in input order. Only the ids seen so far are
    kept (:class:`SeenIds`), so memory does not grow with the documents."""
    seen = SeenIds() if seen is None else seen
    file_index: dict[str, int] = {}
    files: list[str] = []
    for file, row, record, error in rows:
        where = f"{Path(file).name} row {row}"
        if error is not None:
            kind, _, message = error.partition(": ")
            at = _LINE.match(message)
            yield Reject(file, row, kind, message, line=int(at[1]) if at else None)
            continue
        assert record is not None
        doc_id = None
        if id_field and record.get(id_field) not in (None, ""):
            doc_id = str(record[id_field])
        doc_id = doc_id or f"{Path(file).name}:{row}"
        key, first = seen.find(doc_id)
        if first is not None:
            message = f"duplicate id {doc_id!r} (first at {Path(files[first[0]]).name}:{first[1]})"
            yield Reject(file, row, "duplicate_id", message, doc_id)
            continue
        lang = default_lang
        if lang_field and record.get(lang_field) is not None:  # rows without one use the default
            lang = record[lang_field]
        try:
            lang = validate_lang(lang, langs or SONAR_LANGS, where)
        except UnknownLanguageError as ex:
            yield Reject(file, row, "unknown_lang", str(ex), doc_id)
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
            yield Reject(file, row, *problem, doc_id)
            continue
        if file not in file_index:
            file_index[file] = len(files)
            files.append(file)
        seen.insert(key, file_index[file], row)  # only valid documents claim their id
        yield Document(doc_id, lang, f"{file}:{row}", sentences, raw)
