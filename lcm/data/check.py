"""``lcm check DIR``: verify a shard folder made by ``lcm prepare`` and print a table.

    lcm check runs/demo/shards

Each shard is checked against the row count, byte size and SHA-256 recorded in
``manifest.json`` (or ``stats/`` for a run that has not finished), then decoded: every vector
must be finite and every document must have as many vectors as sentences. The command exits
non-zero when any shard fails, and names the shard and the document.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lcm.data.shards import check_shard


def _recorded(folder: Path) -> tuple[dict[str, dict], list[str]]:
    notes: list[str] = []
    manifest = json.loads((folder / "manifest.json").read_text())
    if not (folder / "summary.json").exists():
        notes.append("summary.json is missing: `lcm prepare` did not finish (rerun it)")
    shards = manifest.get("shards")
    if shards is None:  # unfinished or older folder: the per-shard stats hold the records
        shards = {}
        for stats in sorted((folder / "stats").glob("shard-*.json")):
            rec = json.loads(stats.read_text())
            shards[f"{stats.stem}.parquet"] = {k: rec.get(k) for k in ("rows", "bytes", "sha256")}
    on_disk = {p.name for p in (folder / "shards").glob("shard-*.parquet")}
    for extra in sorted(on_disk - set(shards)):
        notes.append(f"{extra}: on disk but not recorded")
        shards[extra] = {}
    return dict(sorted(shards.items())), notes


def check(data_dir: str, quick: bool = False) -> dict:
    """Verify an ``lcm prepare`` folder's shards and print a table (exit status 1 on failure).

    Checks each shard's row count, byte size and checksum against the manifest, that every
    vector is finite, and that every document has one vector per sentence.

    Args:
        data_dir: The ``lcm prepare`` output folder.
        quick: Check sizes and row counts only (no checksum, no decoding).

    Returns:
        ``{"ok": bool, "shards": [...], "problems": [...]}``.
    """
    folder = Path(data_dir)
    if not (folder / "manifest.json").exists():
        raise FileNotFoundError(f"{folder} has no manifest.json; make it with `lcm prepare`")
    recorded, problems = _recorded(folder)
    if not recorded:
        problems.append(f"no shards recorded or found in {folder / 'shards'}")
    rows = []
    for name, expected in recorded.items():
        res = check_shard(folder / "shards" / name, expected, "quick" if quick else "full")
        problems += res.problems
        rows.append(
            {
                "shard": name,
                "rows": res.rows,
                "bytes": res.bytes,
                "sentences": res.sentences if res.sha256 else None,
                "checksum": _checksum_cell(res.sha256, expected.get("sha256")),
                "status": "ok" if res.ok else "FAIL",
            }
        )
    _print_table(rows, problems, folder)
    report = {"ok": not problems, "shards": rows, "problems": problems}
    return report


def _checksum_cell(found: str | None, recorded: str | None) -> str:
    if found is None:
        return "-"  # not computed (quick, or the file is unreadable)
    if not recorded:
        return "unrecorded"
    return "ok" if found == recorded else "DIFFERS"


def _print_table(rows: list[dict], problems: list[str], folder: Path) -> None:
    head = ["shard", "rows", "bytes", "sentences", "checksum", "status"]
    cells = [[("" if r[h] is None else str(r[h])) for h in head] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]
    out = sys.stdout
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)), file=out)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)), file=out)
    total = sum(r["rows"] or 0 for r in rows)
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{folder}: {len(rows)} shards, {total} documents, {failed} failed", file=out)
    for p in problems:
        print(f"problem: {p}", file=out)
