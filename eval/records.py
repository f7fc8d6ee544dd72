"""The per-document record store of an evaluation run (``documents.jsonl``): append batch by
batch, reuse every record whose inputs are unchanged, so a killed run resumes."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path


# ---------------------------------------------------------------------------------------------
# Per-document records (resumable)
# ---------------------------------------------------------------------------------------------
class RecordStore:
    """``documents.jsonl``: one json record per unit of work, keyed by
    ``(kind, system, pair, setting, unit)``; the last record of a key wins.

    A record is reused only if its ``ctx`` (what produced it: checkpoint, batch, seeds) and
    ``input`` (the document and reference) hashes match, and it holds every metric asked for.
    A line cut by a kill is ignored (and counted); its document is computed again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        self.partial_lines = 0
        self.computed = 0
        self.reused: set[str] = set()
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    self.partial_lines += 1
                    continue
                self.records[rec["key"]] = rec

    @staticmethod
    def key(kind: str, system: str, pair: str, setting: str, unit: str) -> str:
        return json.dumps([kind, system, pair, setting, unit], ensure_ascii=False)

    def get(self, key: str, ctx: str, inp: str, need: Iterable[str] = ()) -> dict | None:
        rec = self.records.get(key)
        if rec is None or rec.get("ctx") != ctx or rec.get("input") != inp:
            return None
        if "error" not in rec and not set(need) <= set(rec.get("metrics", {})):
            return None
        self.reused.add(key)
        return rec

    def add(self, records: list[dict]) -> None:
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:  # a killed run may have left half a line: start on a fresh one
                f.seek(f.tell() - 1)
                if f.read(1) != "\n":
                    f.write("\n")
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
        for rec in records:
            self.records[rec["key"]] = rec
            self.reused.discard(rec["key"])
        self.computed += len(records)


def finite_or_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)
