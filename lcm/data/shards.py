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


class ShardError(ValueError):
    """A shard is missing, incomplete, changed since it was written, or holds bad values."""


def file_record(path: str | Path) -> dict[str, int | str]:
    """``{"rows", "bytes", "sha256"}`` of a shard file as it is on disk now."""
    import pyarrow.parquet as pq

    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {
        "rows": pq.ParquetFile(path).metadata.num_rows,
        "bytes": path.stat().st_size,
        "sha256": h.hexdigest(),
    }


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
    import pyarrow.parquet as pq

    path = Path(path)
    res = ShardCheck(path.name)
    if not path.exists():
        res.problems.append(f"{path.name}: missing (expected in {path.parent})")
        return res
    if level == "none":
        return res
    expected = expected or {}
    res.bytes = path.stat().st_size
    if expected.get("bytes") is not None and res.bytes != expected["bytes"]:
        res.problems.append(
            f"{path.name}: {res.bytes} bytes, {expected['bytes']} recorded (truncated or replaced)"
        )
    try:
        res.rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as ex:  # noqa: BLE001 - pyarrow raises several error types
        res.problems.append(f"{path.name}: not a readable parquet file ({ex})")
        return res
    if expected.get("rows") is not None and res.rows != expected["rows"]:
        res.problems.append(f"{path.name}: {res.rows} rows, {expected['rows']} recorded")
    if level == "quick":
        return res
    res.sha256 = file_record(path)["sha256"]
    if expected.get("sha256") and res.sha256 != expected["sha256"]:
        res.problems.append(f"{path.name}: checksum differs from the recorded one (file changed)")
    try:
        table = pq.read_table(path)
    except Exception as ex:  # noqa: BLE001
        res.problems.append(f"{path.name}: cannot be decoded ({type(ex).__name__}: {ex})")
        return res
    names = _embedding_fields(table.column_names)
    if names and f"{names[0]}_embeddings" in table.column_names:
        col = table.column(f"{names[0]}_embeddings")
        res.sentences = sum(len(c.values) for c in col.chunks)
    res.problems += table_problems(table, path.name, fields)
    return res


def _folder(data_dir: str | Path) -> Path:
    data_dir = Path(data_dir)
    if not (data_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{data_dir} has no manifest.json; make it with `lcm prepare`")
    return data_dir


def recorded_shards(data_dir: str | Path) -> dict[str, dict]:
    """``{file name: {rows, bytes, sha256}}`` of a finished folder (manifest), or, for a folder
    prepared before shards were recorded, ``{}`` values for the files present."""
    data_dir = _folder(data_dir)
    if not (data_dir / "summary.json").exists():
        raise RuntimeError(
            f"{data_dir} has no summary.json: `lcm prepare` did not finish; rerun it to resume"
        )
    manifest = json.loads((data_dir / "manifest.json").read_text())
    shards = manifest.get("shards")
    if shards is None:  # older folders: trust the listing, still check values
        shards = {p.name: {} for p in sorted((data_dir / "shards").glob("shard-*.parquet"))}
    if not shards:
        raise FileNotFoundError(f"no shards in {data_dir / 'shards'}")
    return dict(sorted(shards.items()))


def verified_shards(
    data_dir: str | Path, level: Level = "full", fields: Sequence[str] | None = None
) -> list[Path]:
    """The shard files of a finished ``lcm prepare`` folder, each checked at ``level``.

    Raises:
        ShardError: naming every shard that fails, and what is wrong (document ids included).
    """
    data_dir = Path(data_dir)
    recorded = recorded_shards(data_dir)
    # Several readers of one process (the data module's prepare_data and setup, eval) check the
    # same folder: files unchanged since a passing check (same size and mtime) are not re-read.
    key = (str(data_dir.resolve()), level, tuple(fields or ()), _file_states(data_dir, recorded))
    if key in _VERIFIED:
        return [data_dir / "shards" / name for name in recorded]
    problems: list[str] = []
    for name, expected in recorded.items():
        problems += check_shard(data_dir / "shards" / name, expected, level, fields).problems
    if problems:
        raise ShardError(
            f"{data_dir}: {len(problems)} shard problem(s): "
            + "; ".join(problems[:10])
            + ". Rerun `lcm prepare` with the same arguments to rebuild bad shards, or run "
            f"`lcm check {data_dir}` for a table"
        )
    _VERIFIED.add(key)
    return [data_dir / "shards" / name for name in recorded]


_VERIFIED: set[tuple] = set()


def _file_states(data_dir: Path, recorded: dict[str, dict]) -> tuple:
    states = []
    for name in recorded:
        try:
            st = (data_dir / "shards" / name).stat()
            states.append((name, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            states.append((name, None, None))
    return tuple(states)


def iter_shard_tables(
    data_dir: str | Path,
    columns: Sequence[str] | None = None,
    level: Level = "full",
) -> Iterator[tuple[Path, object]]:
    """``(path, pyarrow.Table)`` per verified shard, with ``columns`` (all when None).

    Each table is checked for finite values and alignment as it is read (cheap: the data is in
    memory anyway), so even ``level="quick"`` never yields a NaN vector.
    """
    import pyarrow.parquet as pq

    for path in verified_shards(data_dir, level):
        try:
            table = pq.read_table(path, columns=list(columns) if columns else None)
        except Exception as ex:  # noqa: BLE001
            raise ShardError(f"{path}: cannot be decoded ({type(ex).__name__}: {ex})") from ex
        if level != "full":
            problems = table_problems(table, path.name)
            if problems:
                raise ShardError(f"{path.parent.parent}: " + "; ".join(problems))
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
