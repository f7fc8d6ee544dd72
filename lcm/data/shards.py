"""The one reader of concept shards: every shard is verified before its vectors are used.

``lcm prepare`` records each shard's row count, byte size and SHA-256 (``stats/shard-*.json``
while it runs, and ``manifest.json["shards"]`` when it finishes). Every reader (training data,
``fit-rvq``, evaluation, the API's sentence bank, ``lcm check``) goes through this module, so a
truncated, replaced or hand-edited shard, a NaN vector or a sentence list that does not match its
vectors stops the reader with an error that names the shard (and the document), instead of
reaching a model.

    files = verified_shards("runs/demo/shards")                # raises ShardError on any problem
    for path, table in iter_shard_tables("runs/demo/shards", ["id", "text_embeddings"]):
        ...

A folder may also be an fsspec URL (``s3://bucket/prepared``, ``gs://...``, ``memory://...``):
the manifest, the checks and the reads then go through fsspec, and the shard paths returned are
URLs (strings) instead of :class:`~pathlib.Path` objects. Streaming training reads such folders
(``lcm fit --data.streaming true --data.data_dir s3://...``).

Levels of checking (``level``):
    ``full``: size, checksum, row count, finite values and sentence/vector alignment (reads every
    byte once). ``quick``: size and row count from the parquet footer only. ``none``: only that the
    shards listed in the manifest exist.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Level = Literal["full", "quick", "none"]
Location = Path | str  # a local path, or an fsspec URL (str)


def is_url(path: str | Path) -> bool:
    """Whether ``path`` is an fsspec URL such as ``s3://bucket/folder`` (not a local path)."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def location(path: str | Path) -> Location:
    """``path`` as this module handles it: a URL stays a string, anything else a Path."""
    if isinstance(path, str) and path.startswith("file://"):
        return Path(path[len("file://") :])
    return path if is_url(path) else Path(path)


def join(folder: str | Path, *parts: str) -> Location:
    """``folder / part / ...`` for a local folder or a URL."""
    folder = location(folder)
    if isinstance(folder, Path):
        return folder.joinpath(*parts)
    return "/".join([folder.rstrip("/"), *parts])


def name_of(path: str | Path) -> str:
    """The file name of a local path or URL."""
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_url(path) else Path(path).name


def open_binary(path: str | Path):
    """A binary file object for reading a local path or URL (a context manager)."""
    if is_url(path):
        import fsspec

        return fsspec.open(str(path), "rb").open()
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def exists(path: str | Path) -> bool:
    if is_url(path):
        import fsspec

        fs, _ = fsspec.core.url_to_fs(str(path))
        return fs.exists(str(path))
    return Path(path).exists()


def read_text(path: str | Path) -> str:
    with open_binary(path) as fh:
        return fh.read().decode("utf-8")


def _num_rows(path: Location) -> int:
    import pyarrow.parquet as pq

    if not is_url(path):
        return pq.ParquetFile(path).metadata.num_rows
    with open_binary(path) as fh:
        return pq.ParquetFile(fh).metadata.num_rows


def read_schema(path: str | Path):
    """The pyarrow schema of a parquet file (local path or URL); reads its metadata only."""
    import pyarrow.parquet as pq

    if not is_url(path):
        return pq.read_schema(path)
    with open_binary(path) as fh:
        return pq.read_schema(fh)


def read_table(path: str | Path, columns: Sequence[str] | None = None):
    """The pyarrow Table of a parquet file (local path or URL), ``columns`` only if given."""
    import pyarrow.parquet as pq

    columns = list(columns) if columns else None
    if not is_url(path):
        return pq.read_table(path, columns=columns)
    with open_binary(path) as fh:
        return pq.read_table(fh, columns=columns)


def file_state(path: str | Path) -> tuple[int | None, object]:
    """``(size, version)`` of a file, or ``(None, None)`` if it is missing: the version is the
    modification time (local) or what the store reports (mtime, ETag, creation time)."""
    if not is_url(path):
        try:
            st = Path(path).stat()
        except FileNotFoundError:
            return None, None
        return st.st_size, st.st_mtime_ns
    import fsspec

    fs, _ = fsspec.core.url_to_fs(str(path))
    try:
        info = fs.info(str(path))
    except FileNotFoundError:
        return None, None
    version = next(
        (info[k] for k in ("mtime", "LastModified", "ETag", "etag", "created") if k in info), None
    )
    return int(info["size"]), str(version)


class ShardError(ValueError):
    """A shard is missing, incomplete, changed since it was written, or holds bad values."""


def file_record(path: str | Path) -> dict[str, int | str]:
    """``{"rows", "bytes", "sha256"}`` of a shard file as it is on disk now."""

    path = location(path)
    h = hashlib.sha256()
    with open_binary(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"rows": _num_rows(path), "bytes": file_state(path)[0], "sha256": h.hexdigest()}


@dataclass
class ShardCheck:
    """What :func:`check_shard` found in one shard."""

    name: str
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    sentences: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _embedding_fields(names: Sequence[str]) -> list[str]:
    return [n[: -len("_embeddings")] for n in names if n.endswith("_embeddings")]


def table_problems(
    table, name: str, fields: Sequence[str] | None = None, alignment: bool = True
) -> list[str]:
    """Non-finite vectors and sentence/vector mismatches in a shard table, each naming the
    shard, the document id and the field (the first few per field)."""
    import pyarrow as pa

    problems: list[str] = []
    ids = table.column("id").to_pylist() if "id" in table.column_names else None
    fields = _embedding_fields(table.column_names) if fields is None else fields

    def doc(row: int) -> str:
        return f"document {ids[row]!r} (row {row})" if ids is not None else f"row {row}"

    for f in fields:
        col_name = f"{f}_embeddings"
        if col_name not in table.column_names:
            problems.append(f"{name}: no column {col_name!r}")
            continue
        col = table.column(col_name).combine_chunks()
        if not isinstance(col, pa.ListArray) or not pa.types.is_fixed_size_list(
            col.type.value_type
        ):
            problems.append(f"{name}: column {col_name!r} is {col.type}, not list<vector>")
            continue
        offsets = col.offsets.to_numpy().astype(np.int64)  # (rows + 1,) into the vectors
        vecs = col.values  # one fixed-size list per sentence
        dim = vecs.type.list_size
        flat = vecs.values.to_numpy(zero_copy_only=False)[vecs.offset * dim :]
        mat = flat[: len(vecs) * dim].reshape(-1, dim)
        bad = np.flatnonzero(~np.isfinite(mat).all(axis=1))  # sentence indices, over the shard
        if len(bad):
            rows = np.searchsorted(offsets, bad, side="right") - 1
            for row in list(dict.fromkeys(rows.tolist()))[:3]:
                first = int(bad[rows == row][0] - offsets[row])
                problems.append(
                    f"{name}: {doc(row)} has a non-finite value (NaN/inf) in {col_name!r} "
                    f"sentence {first}"
                )
        sent_name = f"{f}_sentences"
        if alignment and sent_name in table.column_names:
            sent = table.column(sent_name).combine_chunks()
            n_sent = np.diff(sent.offsets.to_numpy()).astype(np.int64)
            n_vec = np.diff(offsets)
            for row in np.flatnonzero(n_sent != n_vec)[:3].tolist():
                problems.append(
                    f"{name}: {doc(row)} has {n_sent[row]} {f!r} sentences but {n_vec[row]} vectors"
                )
    return problems


def check_shard(
    path: str | Path,
    expected: dict | None = None,
    level: Level = "full",
    fields: Sequence[str] | None = None,
) -> ShardCheck:
    """Check one shard against its recorded ``expected`` ``{rows, bytes, sha256}`` (any may be
    absent) and, at level ``full``, its values. Never raises for a bad file: see ``problems``."""

    path = location(path)
    name = name_of(path)
    res = ShardCheck(name)
    size, _ = file_state(path)
    if size is None:
        parent = str(path).rsplit("/", 1)[0] if is_url(path) else path.parent
        res.problems.append(f"{name}: missing (expected in {parent})")
        return res
    if level == "none":
        return res
    expected = expected or {}
    res.bytes = size
    if expected.get("bytes") is not None and res.bytes != expected["bytes"]:
        res.problems.append(
            f"{name}: {res.bytes} bytes, {expected['bytes']} recorded (truncated or replaced)"
        )
    try:
        res.rows = _num_rows(path)
    except Exception as ex:  # noqa: BLE001 - pyarrow raises several error types
        res.problems.append(f"{name}: not a readable parquet file ({ex})")
        return res
    if expected.get("rows") is not None and res.rows != expected["rows"]:
        res.problems.append(f"{name}: {res.rows} rows, {expected['rows']} recorded")
    if level == "quick":
        return res
    res.sha256 = file_record(path)["sha256"]
    if expected.get("sha256") and res.sha256 != expected["sha256"]:
        res.problems.append(f"{name}: checksum differs from the recorded one (file changed)")
    try:
        table = read_table(path)
    except Exception as ex:  # noqa: BLE001
        res.problems.append(f"{name}: cannot be decoded ({type(ex).__name__}: {ex})")
        return res
    names = _embedding_fields(table.column_names)
    if names and f"{names[0]}_embeddings" in table.column_names:
        col = table.column(f"{names[0]}_embeddings")
        res.sentences = sum(len(c.values) for c in col.chunks)
    res.problems += table_problems(table, name, fields)
    return res


def _folder(data_dir: str | Path) -> Location:
    data_dir = location(data_dir)
    if not exists(join(data_dir, "manifest.json")):
        raise FileNotFoundError(f"{data_dir} has no manifest.json; make it with `lcm prepare`")
    return data_dir


def recorded_shards(data_dir: str | Path) -> dict[str, dict]:
    """``{file name: {rows, bytes, sha256}}`` of a finished folder (manifest), or, for a folder
    prepared before shards were recorded, ``{}`` values for the files present."""
    data_dir = _folder(data_dir)
    if not exists(join(data_dir, "summary.json")):
        raise RuntimeError(
            f"{data_dir} has no summary.json: `lcm prepare` did not finish; rerun it to resume"
        )
    manifest = json.loads(read_text(join(data_dir, "manifest.json")))
    shards = manifest.get("shards")
    if shards is None:  # older folders (local): trust the listing, still check values
        shards = {p.name: {} for p in sorted(Path(data_dir, "shards").glob("shard-*.parquet"))}
    if not shards:
        raise FileNotFoundError(f"no shards in {join(data_dir, 'shards')}")
    return dict(sorted(shards.items()))


def verified_shards(
    data_dir: str | Path, level: Level = "full", fields: Sequence[str] | None = None
) -> list[Location]:
    """The shard files of a finished ``lcm prepare`` folder, each checked at ``level``
    (:class:`~pathlib.Path` objects, or URLs for a folder given as a URL).

    Raises:
        ShardError: naming every shard that fails, and what is wrong (document ids included).
    """
    data_dir = location(data_dir)
    recorded = recorded_shards(data_dir)
    files = [join(data_dir, "shards", name) for name in recorded]
    # Several readers of one process (the data module's prepare_data and setup, eval) check the
    # same folder: files unchanged since a passing check (same size and version) are not re-read.
    where = str(data_dir) if is_url(data_dir) else str(Path(data_dir).resolve())
    states = tuple((name, *file_state(f)) for name, f in zip(recorded, files))
    key = (where, level, tuple(fields or ()), states)
    if key in _VERIFIED:
        return files
    problems: list[str] = []
    for f, expected in zip(files, recorded.values()):
        problems += check_shard(f, expected, level, fields).problems
    if problems:
        raise ShardError(
            f"{data_dir}: {len(problems)} shard problem(s): "
            + "; ".join(problems[:10])
            + ". Rerun `lcm prepare` with the same arguments to rebuild bad shards, or run "
            f"`lcm check {data_dir}` for a table"
        )
    _VERIFIED.add(key)
    return files


_VERIFIED: set[tuple] = set()


def iter_shard_tables(
    data_dir: str | Path,
    columns: Sequence[str] | None = None,
    level: Level = "full",
) -> Iterator[tuple[Location, object]]:
    """``(path, pyarrow.Table)`` per verified shard, with ``columns`` (all when None).

    Each table is checked for finite values and alignment as it is read (cheap: the data is in
    memory anyway), so even ``level="quick"`` never yields a NaN vector.
    """

    for path in verified_shards(data_dir, level):
        try:
            table = read_table(path, columns)
        except Exception as ex:  # noqa: BLE001
            raise ShardError(f"{path}: cannot be decoded ({type(ex).__name__}: {ex})") from ex
        if level != "full":
            problems = table_problems(table, name_of(path))
            if problems:
                raise ShardError(f"{location(data_dir)}: " + "; ".join(problems))
        yield path, table


def iter_shard_rows(
    data_dir: str | Path, columns: Sequence[str], level: Level = "full"
) -> Iterator[dict]:
    """Rows (dicts of ``columns``) of every verified shard, in shard order."""
    for path, table in iter_shard_tables(data_dir, None, level):
        absent = [c for c in columns if c not in table.column_names]
        if absent:
            raise ValueError(f"{path}: no column(s) {absent}; columns: {table.column_names}")
        yield from table.select(list(columns)).to_pylist()
