"""The retrieval bank of a prepared folder: built once from its shards, saved beside them, and
memory-mapped by every later load.

A codec that decodes by retrieval (the offline MiniLM, USE-m, e5) needs every sentence of the
training shards in a faiss index. Building it reads every shard; :func:`load_bank` does that
once and saves the bank under ``<data_dir>/bank/<codec>-<fingerprint>/`` (see
:meth:`encoders.retrieval.RetrievalBank.save`), with a ``manifest.json`` recording what it was
built from: the codec id, the vector width, the text fields, the end-of-text sentence (left
out), and each shard's rows, bytes, SHA-256, size and mtime. A later load opens the saved bank
(memory-mapped: its cost does not grow with the bank) unless the manifest no longer matches:
another codec or field selection has its own folder, and a re-prepared or changed shard makes
the bank stale, so it is rebuilt. A shard whose size and mtime changed but whose SHA-256 did not
(a copied folder) keeps the bank.

The bank is written into a temporary folder and renamed into place, so a killed build leaves
no half bank, and concurrent builders do not see each other's files. A read-only data folder
still works: the bank is then built in memory for this process, with a one-line warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from encoders.retrieval import BANK_FORMAT, RetrievalBank
from lcm.data.shards import file_record, iter_shard_tables, recorded_shards
from lcm.progress import Progress

log = logging.getLogger(__name__)

#: How many banks this process built from shards (tests assert a second load adds none).
BUILDS = 0

How = Literal["opened", "built", "memory"]


def bank_dir(
    data_dir: str | Path, codec_id: str, fields: Sequence[str] | None, end_of_text: str | None
) -> Path:
    """Where the bank of these settings lives: ``<data_dir>/bank/<codec>-<12 hex>``."""
    key = json.dumps(
        {
            "format": BANK_FORMAT,
            "codec": codec_id,
            "fields": sorted(fields) if fields else None,
            "end_of_text": end_of_text,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", codec_id).strip("-")[:48] or "codec"
    return Path(data_dir) / "bank" / f"{slug}-{digest}"


def fill(
    bank: RetrievalBank,
    data_dir: str | Path,
    fields: Sequence[str] | None = None,
    end_of_text: str | None = None,
    progress: bool = True,
) -> int:
    """Add the sentences of the shards' text columns (all, or ``fields``) to ``bank``, except
    ``end_of_text``; returns how many were offered (before de-duplication). Shards are verified
    on the way (:mod:`lcm.data.shards`). One faiss add per shard and language: linear."""
    recorded = recorded_shards(data_dir)
    rows = [r.get("rows") for r in recorded.values()]
    total = sum(rows) if all(isinstance(r, int) for r in rows) else None
    n = 0
    with Progress("bank", total, "documents", progress, prefix="lcm load") as bar:
        for _, table in iter_shard_tables(data_dir, level="quick"):
            langs = np.asarray(table.column("lang").to_pylist(), dtype=object)
            for name in table.column_names:
                if not name.endswith("_sentences"):
                    continue
                field = name[: -len("_sentences")]
                if fields is not None and field not in fields:
                    continue
                # Flat (sentences, D) arrays straight from Arrow, one bank call per language.
                sents_col = table.column(name).combine_chunks()
                sents = np.asarray(sents_col.flatten().to_pylist(), dtype=object)
                per_doc = np.diff(sents_col.offsets.to_numpy())
                vecs_col = table.column(f"{field}_embeddings").combine_chunks()
                vecs = vecs_col.flatten().flatten().to_numpy(zero_copy_only=False)
                vecs = vecs.astype(np.float32).reshape(len(sents), -1)
                lang_of = np.repeat(langs, per_doc)
                keep = sents != end_of_text
                for lang in dict.fromkeys(langs.tolist()):
                    idx = np.flatnonzero(keep & (lang_of == lang))
                    if len(idx):
                        bank.add(sents[idx].tolist(), torch.from_numpy(vecs[idx]), lang)
                        n += len(idx)
            bar.update(table.num_rows)
    return n


def _shard_states(data_dir: Path, recorded: dict[str, dict]) -> dict[str, dict]:
    """Per shard: the manifest's rows/bytes/SHA-256 (hashed now when an old manifest has none)
    and the file's size and mtime."""
    out = {}
    for name, rec in recorded.items():
        path = data_dir / "shards" / name
        st = path.stat()
        sha = rec.get("sha256") or file_record(path)["sha256"]
        out[name] = {
            "rows": rec.get("rows"),
            "bytes": rec.get("bytes"),
            "sha256": sha,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }
    return out


def stale_reason(
    folder: Path, data_dir: Path, codec_id: str, dim: int, fields, end_of_text
) -> str | None:
    """Why the saved bank in ``folder`` cannot be used for these shards (None: it can)."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        return "no saved bank"
    except (OSError, ValueError) as ex:
        return f"unreadable manifest ({ex})"
    want = {
        "format": BANK_FORMAT,
        "codec": codec_id,
        "dim": dim,
        "fields": sorted(fields) if fields else None,
        "end_of_text": end_of_text,
    }
    for key, value in want.items():
        if m.get(key) != value:
            return f"built with {key} {m.get(key)!r}, not {value!r}"
    recorded = recorded_shards(data_dir)
    saved = m.get("shards") or {}
    if sorted(saved) != sorted(recorded):
        return "the shard files differ"
    for name, rec in recorded.items():
        s = saved[name]
        for key in ("rows", "bytes", "sha256"):
            if rec.get(key) is not None and rec[key] != s.get(key):
                return f"shard {name} was prepared again ({key} differs)"
        path = data_dir / "shards" / name
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"shard {name} is missing"
        if (st.st_size, st.st_mtime_ns) != (s.get("size"), s.get("mtime_ns")):
            # Touched or copied: trust it only if its bytes are the ones the bank was built from.
            if st.st_size != s.get("size") or file_record(path)["sha256"] != s.get("sha256"):
                return f"shard {name} changed since the bank was built"
    return None


def load_bank(
    data_dir: str | Path,
    codec_id: str,
    dim: int,
    fields: Sequence[str] | None = None,
    end_of_text: str | None = None,
    progress: bool = True,
    saved: bool = True,
) -> tuple[RetrievalBank, How]:
    """The retrieval bank of a prepared folder's shards: the saved one when it matches, else
    built and saved (when the folder is writable). ``saved=False`` builds it in memory.

    Returns:
        ``(bank, how)``: ``opened`` (the saved bank, memory-mapped), ``built`` (built and saved)
        or ``memory`` (built, not saved: ``saved`` is False or the folder is read-only).
    """
    global BUILDS
    data_dir = Path(data_dir)
    folder = bank_dir(data_dir, codec_id, fields, end_of_text)
    reason = stale_reason(folder, data_dir, codec_id, dim, fields, end_of_text) if saved else "-"
    if reason is None:
        try:
            return RetrievalBank.open(folder), "opened"
        except (OSError, ValueError, RuntimeError) as ex:  # a file removed or damaged by hand
            reason = f"the saved bank cannot be opened ({type(ex).__name__}: {ex})"
    recorded = recorded_shards(data_dir)
    states = _shard_states(data_dir, recorded)
    bank = RetrievalBank(dim)
    fill(bank, data_dir, fields, end_of_text, progress)
    BUILDS += 1
    if not saved:
        return bank, "memory"
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        info = bank.save(tmp)
        manifest = {
            "format": BANK_FORMAT,
            "codec": codec_id,
            "dim": dim,
            "fields": sorted(fields) if fields else None,
            "end_of_text": end_of_text,
            "languages": {k: v["sentences"] for k, v in info["languages"].items()},
            "shards": states,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _replace(tmp, folder)
    except OSError as ex:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning(
            "lcm load: the retrieval bank was built in memory and not saved (%s: %s); "
            "the next load builds it again",
            folder,
            ex.strerror or ex,
        )
        return bank, "memory"
    if reason != "no saved bank":
        log.info("lcm load: rebuilt the retrieval bank %s (%s)", folder, reason)
    return bank, "built"


def _replace(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` folder to ``folder``, replacing a stale one."""
    old = None
    if folder.exists():
        old = folder.parent / f".old-{folder.name}-{uuid.uuid4().hex[:8]}"
        try:
            folder.rename(old)
        except FileNotFoundError:  # another process moved it first
            old = None
    try:
        tmp.rename(folder)
    except OSError:
        # Another builder renamed its (equal) bank into place between our two renames.
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
