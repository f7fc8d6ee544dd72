"""Row ranges: shards planned as ranges of input rows, so each rank reads only its own rows.

A cheap planning pass (:func:`plan_rows`) counts the rows of every input file without parsing
it: parquet from its footer (row-group metadata), JSON lines by a byte scan for non-blank lines
and plain text read by line (``txt_sample_by=line``) by a byte scan for lines (numpy over 4 MB
blocks). Shard ``k`` is the global input rows ``[k * shard_size, (k + 1) *
shard_size)`` of the files concatenated in order, whichever of them turn out valid; for JSON
lines the plan records the byte offset and line number where each range starts, so a reader
seeks straight to it (:meth:`RowPlan.iter_rows`). Memory holds 16 bytes per shard (offset and
line), never per row.

Files whose rows cannot be located without parsing them (csv, whose quoted fields may span
lines; plain text read by document or paragraph, or with a lone CR line break; a ``.json``
file holding one JSON array) are not planned here:
:func:`locatable` says so, and ``lcm prepare`` then keeps its full pass over the inputs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lcm.data.documents import _NON_UTF8, _decode, file_format, parse_json_line

#: 2: the plan records each input file's SHA-256, computed by the planning scan itself
PLAN_VERSION = 2
_BLOCK = 1 << 22  # bytes per scan block
_WS = np.zeros(256, dtype=bool)
_WS[[9, 10, 11, 12, 13, 32]] = True  # what bytes.strip() strips: a line of only these is blank


def locatable(path: Path, fmt: str, txt_sample_by: str = "document") -> bool:
    """Whether the rows of ``path`` can be located without parsing: parquet, JSON lines (not a
    single JSON array), and text read by line whose line breaks are all LF or CR LF."""
    kind = file_format(path, fmt)
    if kind == "parquet":
        return True
    if kind == "txt":
        return txt_sample_by == "line" and not _lone_cr(path)
    if kind != "jsonl":
        return False
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    return not head.startswith(b"[")


def _lone_cr(path: Path) -> bool:
    """Whether ``path`` has a CR not followed by LF (a line break that universal
    newlines honour, so its text lines cannot be found by LF alone)."""
    tail = b""
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            buf = tail + block
            body, tail = (buf[:-1], buf[-1:]) if buf.endswith(b"\r") else (buf, b"")
            if body.count(b"\r") != body.count(b"\r\n"):
                return True
    return tail == b"\r"


def _scan_lines(
    path: Path, first_row: int, shard_size: int, skip_blank: bool = True, digest=None
) -> tuple[int, list, list]:
    """Rows of ``path`` (its non-blank lines, or every line without ``skip_blank``), and the
    byte offset and 1-based line of every row whose global index (``first_row`` + its index
    here) is a multiple of ``shard_size``. ``digest`` (a hashlib object) is fed every byte of
    the file as it is scanned, so the file's checksum costs no second read."""
    rows = lines = pos = 0  # rows and lines before buf; pos: file offset of buf[0]
    offsets: list[int] = []
    line_nos: list[int] = []
    carry = b""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_BLOCK)
            if digest is not None:
                digest.update(block)
            buf = carry + block
            if not buf:
                break
            arr = np.frombuffer(buf, dtype=np.uint8)
            ends = np.flatnonzero(arr == 10)  # each line ends at its "\n" ...
            if not block and (not len(ends) or ends[-1] != len(buf) - 1):
                ends = np.append(ends, len(buf))  # ... or at the end of the file
            if len(ends):
                starts = np.concatenate(([0], ends[:-1] + 1))
                solid = np.concatenate(([0], np.cumsum(~_WS[arr], dtype=np.int64)))
                stop = np.minimum(ends, len(buf))
                is_row = (solid[stop] - solid[starts]) > 0
                if not skip_blank:
                    is_row[:] = True
                index = rows + np.cumsum(is_row) - 1  # row index of each line (valid if is_row)
                wanted = np.flatnonzero(is_row & ((first_row + index) % shard_size == 0))
                offsets.extend((pos + starts[wanted]).tolist())
                line_nos.extend((lines + wanted + 1).tolist())
                rows += int(is_row.sum())
                lines += len(ends)
                cut = int(ends[-1]) + 1
                carry, pos = buf[cut:], pos + cut
            else:
                carry = buf
            if not block:
                break
    return rows, offsets, line_nos


def _parquet_rows_count(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - an unreadable footer: one row, the file's reject
        return 1


@dataclass
class RowPlan:
    """Shards as ranges of input rows: shard ``k`` is global rows ``[k * shard_size, ...)``.

    ``offsets[k]``/``lines[k]``: byte offset and 1-based line of shard ``k``'s first row in its
    file (-1 for parquet, which is located by row groups).
    """

    files: list[Path]
    kinds: list[str]
    file_rows: np.ndarray  # int64, rows per file
    shard_size: int
    offsets: np.ndarray  # int64, one per shard
    lines: np.ndarray  # int64, one per shard
    #: SHA-256 of each file as planned (hex); the manifest records them (``input_files``)
    sha256: list[str] | None = None

    def __post_init__(self) -> None:
        self._starts = np.concatenate(([0], np.cumsum(self.file_rows))).astype(np.int64)

    @property
    def n_rows(self) -> int:
        return int(self.file_rows.sum())

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_size)

    def shard_rows(self, k: int) -> int:
        """Input rows in shard ``k`` (``shard_size`` except for the last)."""
        return min(self.shard_size, self.n_rows - k * self.shard_size)

    def segments(self, k: int) -> list[tuple[int, int, int, int, int]]:
        """``(file index, first row, end row, byte offset, line)`` of each file piece of shard
        ``k``, in order (offset 0 and line 1 where the piece starts a file)."""
        starts = self._starts
        lo, hi = k * self.shard_size, min((k + 1) * self.shard_size, self.n_rows)
        out = []
        f = int(np.searchsorted(starts, lo, side="right")) - 1
        while lo < hi:
            while starts[f + 1] <= lo:  # skip empty files
                f += 1
            r0 = lo - int(starts[f])
            r1 = min(hi, int(starts[f + 1])) - int(starts[f])
            if r0 == 0:
                offset, line = 0, 1
            else:
                offset, line = int(self.offsets[k]), int(self.lines[k])
            out.append((f, r0, r1, offset, line))
            lo = int(starts[f]) + r1
            f += 1
        return out

    def iter_rows(
        self, k: int, columns: Sequence[str] | None = None
    ) -> Iterator[tuple[str, int, dict | None, str | None]]:
        """``(file, row, record, error)`` for every input row of shard ``k``, as
        :func:`lcm.data.documents.iter_rows` yields them. ``columns``: the parquet columns to
        read (those a file lacks are skipped); None reads all."""
        for f, r0, r1, offset, line in self.segments(k):
            path = self.files[f]
            if self.kinds[f] == "parquet":
                yield from _parquet_range(path, r0, r1, columns)
            elif self.kinds[f] == "txt":
                yield from _txt_range(path, r0, r1, offset)
            else:
                yield from _jsonl_range(path, r0, r1, offset, line)

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                version=np.int64(PLAN_VERSION),
                files=np.array([str(f) for f in self.files]),
                kinds=np.array(self.kinds),
                file_rows=self.file_rows,
                shard_size=np.int64(self.shard_size),
                offsets=self.offsets,
                lines=self.lines,
                sha256=np.array(self.sha256 or []),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> RowPlan:
        with np.load(path) as z:
            if int(z["version"]) != PLAN_VERSION:
                raise ValueError(f"{path}: plan version {int(z['version'])}")
            return cls(
                [Path(f) for f in z["files"].tolist()],
                z["kinds"].tolist(),
                z["file_rows"],
                int(z["shard_size"]),
                z["offsets"],
                z["lines"],
                z["sha256"].tolist() or None,
            )


def plan_rows(files: Sequence[Path], fmt: str, shard_size: int) -> RowPlan:
    """Plan shards of ``shard_size`` input rows over ``files`` (all :func:`locatable`), with
    each file's SHA-256 (JSON lines and text: from the byte scan itself; parquet: one extra
    read, once per folder)."""
    kinds = [file_format(f, fmt) for f in files]
    digests: list[str] = []
    file_rows: list[int] = []
    offsets: list[int] = []
    lines: list[int] = []
    total = 0
    for path, kind in zip(files, kinds):
        if kind == "parquet":
            n = _parquet_rows_count(path)
            digests.append(file_sha256(path))
            first = -(-total // shard_size) * shard_size  # the first shard start in this file
            for _ in range(first, total + n, shard_size):
                offsets.append(-1)
                lines.append(-1)
        elif kind in ("jsonl", "txt"):  # txt: locatable() has checked it is read by line
            h = hashlib.sha256()
            n, offs, nos = _scan_lines(path, total, shard_size, kind == "jsonl", h)
            digests.append(h.hexdigest())
            offsets.extend(offs)
            lines.extend(nos)
        else:
            raise ValueError(f"{path}: rows of a {kind} file cannot be located without parsing")
        file_rows.append(n)
        total += n
    return RowPlan(
        list(files), kinds, np.array(file_rows, dtype=np.int64), shard_size,
        np.array(offsets, dtype=np.int64), np.array(lines, dtype=np.int64), digests,
    )  # fmt: skip


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of every byte of ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _jsonl_range(
    path: Path, r0: int, r1: int, offset: int, line: int
) -> Iterator[tuple[str, int, dict | None, str | None]]:
    row = r0
    with open(path, "rb") as fh:
        fh.seek(offset)
        for n, raw in enumerate(fh, start=line):
            if row >= r1:
                return
            if not raw.strip():
                continue
            record, error = parse_json_line(raw)
            if error is not None:
                kind, _, message = error.partition(": ")
                yield str(path), row, None, f"{kind}: line {n}: {message}"
            else:
                yield str(path), row, record, None
            row += 1
    if row < r1:  # the file shrank since it was planned (its fingerprint is checked first)
        raise RuntimeError(f"{path}: {r1 - row} planned rows are missing from row {row}")


def _txt_range(
    path: Path, r0: int, r1: int, offset: int
) -> Iterator[tuple[str, int, dict | None, str | None]]:
    """Rows ``r0..r1`` of a text file read by line: every line is a row (an empty one too, to be
    rejected as empty), as the ``datasets`` text builder cuts them."""
    row = r0
    with open(path, "rb") as fh:
        fh.seek(offset)
        for raw in fh:
            if row >= r1:
                return
            text, clean = _decode(raw.removesuffix(b"\n").removesuffix(b"\r"))
            if clean:
                yield str(path), row, {"text": text}, None
            else:
                yield str(path), row, None, _NON_UTF8.format(where=f"line {row + 1}")
            row += 1
    if row < r1:
        raise RuntimeError(f"{path}: {r1 - row} planned rows are missing from row {row}")


_GROUP_CACHE: dict = {}  # the last decoded parquet row group: consecutive shards share it


def _parquet_range(
    path: Path, r0: int, r1: int, columns: Sequence[str] | None
) -> Iterator[tuple[str, int, dict | None, str | None]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        meta = pf.metadata
    except Exception as ex:  # noqa: BLE001 - pyarrow raises several error types
        yield str(path), 0, None, f"unreadable_file: cannot read parquet footer: {ex}"
        return
    names = set(pf.schema_arrow.names)
    cols = None if columns is None else [c for c in dict.fromkeys(columns) if c in names]
    start = 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        lo, hi = max(r0, start), min(r1, start + n)
        if lo < hi:
            key = (str(path), os.stat(path).st_mtime_ns, g, tuple(cols or ()))
            try:
                if _GROUP_CACHE.get("key") != key:
                    _GROUP_CACHE.clear()
                    _GROUP_CACHE["table"] = pf.read_row_group(g, columns=cols)
                    _GROUP_CACHE["key"] = key
                records = _GROUP_CACHE["table"].slice(lo - start, hi - lo).to_pylist()
            except Exception as ex:  # noqa: BLE001
                _GROUP_CACHE.clear()
                message = f"row group {g} (rows {start}-{start + n - 1}) cannot be decoded: {ex}"
                for row in range(lo, hi):
                    yield str(path), row, None, f"unreadable_row_group: {message}"
            else:
                for row, record in enumerate(records, start=lo):
                    yield str(path), row, record, None
        start += n
        if start >= r1:
            break


def release_row_group_cache() -> None:
    """Drop the cached parquet row group (the end of a pass)."""
    _GROUP_CACHE.clear()
