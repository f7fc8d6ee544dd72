"""How a rerun of ``lcm prepare`` checks the shards a previous run finished (issue 16): by their
recorded size, modification time and parquet footer (no read of the shard), by SHA-256 when
any of them differs or with ``verify="full"``; and a re-planned ``plan.npz`` is compared with
the finished shards' records."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers_train import HashCodec, write_corpus

import lcm.data.prepare as prep
from lcm.data.prepare import prepare


def digests(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "shards").glob("*.parquet"))
    }


def _prepare(docs: Path, out: Path, **kw) -> dict:
    return prepare(
        str(docs), str(out), codec=HashCodec(), shard_size=8, cache=False, progress=False, **kw
    )


@pytest.fixture
def folder(tmp_path) -> tuple[Path, Path]:
    docs = write_corpus(tmp_path / "docs.jsonl", 24, seed=0)
    out = tmp_path / "shards"
    _prepare(docs, out)  # 3 shards of 8 documents
    return docs, out


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The finished shards whose every byte a rerun hashes (``file_record`` calls, by file
    name; the writer's hash of a new shard's temporary file is not counted)."""
    calls: list[str] = []
    original = prep.file_record

    def counting(path):
        if not Path(path).name.startswith("."):
            calls.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(prep, "file_record", counting)
    return calls


def _flip_data_byte(path: Path) -> None:
    """Change one byte in the middle of the column data (not the footer), keeping the size."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    at = (4 + len(data) - 8 - footer) // 2
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _stats(out: Path, name: str) -> dict:
    return json.loads((out / "stats" / f"{name}.json").read_text())


def test_a_rerun_trusts_recorded_shards_without_reading_them(folder, hashed):
    docs, out = folder
    before, normalizer = digests(out), (out / "normalizer.pt").read_bytes()
    for k in range(3):  # the record written with each shard
        st = os.stat(out / "shards" / f"shard-0000{k}.parquet")
        s = _stats(out, f"shard-0000{k}")
        assert (s["bytes"], s["mtime_ns"], s["rows"]) == (st.st_size, st.st_mtime_ns, 8)
    s = _prepare(docs, out)
    assert hashed == [] and s["rebuilt_shards"] == []  # no shard byte was hashed
    assert digests(out) == before and (out / "normalizer.pt").read_bytes() == normalizer
    s = _prepare(docs, out, verify="full")  # every finished shard hashed, all verify
    assert sorted(hashed) == sorted(before) and s["rebuilt_shards"] == []
    assert digests(out) == before


def test_a_truncated_shard_is_rebuilt(folder, hashed):
    docs, out = folder
    before = digests(out)
    shard = out / "shards" / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a copy cut short
    s = _prepare(docs, out)
    assert s["rebuilt_shards"] == ["shard-00001"] and digests(out) == before


def test_a_truncated_shard_with_its_recorded_size_and_time_is_rebuilt(folder):
    """Cut short, padded back to its size and its time restored: only the footer shows it."""
    docs, out = folder
    before = digests(out)
    shard = out / "shards" / "shard-00002.parquet"
    st = shard.stat()
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] + b"\0" * (len(data) - len(data) // 2))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    s = _prepare(docs, out)
    assert s["rebuilt_shards"] == ["shard-00002"] and digests(out) == before


def test_an_edit_with_the_same_size_and_a_new_time_is_rebuilt(folder, hashed):
    docs, out = folder
    before = digests(out)
    shard = out / "shards" / "shard-00000.parquet"
    st = shard.stat()
    _flip_data_byte(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # whatever the clock's grain
    assert shard.stat().st_size == st.st_size and digests(out) != before
    s = _prepare(docs, out)
    assert hashed == ["shard-00000.parquet"]  # only the shard whose time moved is hashed
    assert s["rebuilt_shards"] == ["shard-00000"] and digests(out) == before


def test_an_edit_keeping_size_and_time_is_found_only_by_verify_full(folder, hashed):
    docs, out = folder
    before = digests(out)
    shard = out / "shards" / "shard-00001.parquet"
    st = shard.stat()
    _flip_data_byte(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    edited = digests(out)
    assert edited != before
    s = _prepare(docs, out)  # the documented limit of the default check: trusted
    assert s["rebuilt_shards"] == [] and digests(out) == edited and hashed == []
    from lcm.cli import run

    s = run(["prepare", f"--inputs={docs}", f"--output_dir={out}", "--shard_size=8",
             "--codec=helpers_train.HashCodec", "--cache=false", "--progress=false",
             "--verify=full"])  # fmt: skip
    assert s["rebuilt_shards"] == ["shard-00001"] and digests(out) == before


def test_a_touched_shard_is_hashed_once_and_its_new_time_recorded(folder, hashed):
    docs, out = folder
    shard = out / "shards" / "shard-00002.parquet"
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a copy or `touch`
    assert _prepare(docs, out)["rebuilt_shards"] == []
    assert hashed == ["shard-00002.parquet"]
    assert _stats(out, "shard-00002")["mtime_ns"] == st.st_mtime_ns + 10**9
    hashed.clear()
    assert _prepare(docs, out)["rebuilt_shards"] == [] and hashed == []


def test_records_without_a_time_are_checked_in_full_once_then_cheaply(folder, hashed):
    """A folder of an earlier ``lcm prepare`` (records of rows, bytes and SHA-256 only)."""
    docs, out = folder
    before = digests(out)
    for path in (out / "stats").glob("*.json"):
        s = json.loads(path.read_text())
        del s["mtime_ns"]
        path.write_text(json.dumps(s))
    assert _prepare(docs, out)["rebuilt_shards"] == []
    assert sorted(hashed) == sorted(before)  # the full check, once
    assert all("mtime_ns" in _stats(out, f"shard-0000{k}") for k in range(3))
    hashed.clear()
    assert _prepare(docs, out)["rebuilt_shards"] == [] and hashed == []
    assert digests(out) == before


def test_verify_must_be_quick_or_full(tmp_path):
    docs = write_corpus(tmp_path / "docs.jsonl", 4)
    with pytest.raises(ValueError, match="verify must be 'quick' or 'full', got 'fast'"):
        _prepare(docs, tmp_path / "out", verify="fast")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------- a lost or damaged plan.npz
def _padded_corpus(path: Path, n: int = 24, pad: int = 60_000) -> Path:
    """JSON lines over 1 MiB (a field the run does not read pads them), so the cheap resume
    check of the input (16 sampled 64 KiB blocks) leaves some bytes unread."""
    with open(path, "w") as fh:
        for j in range(n):
            row = {"id": f"doc{j}", "lang": "eng_Latn", "text": f"Token {j} is here. Bye.",
                   "pad": "x" * pad}  # fmt: skip
            fh.write(json.dumps(row) + "\n")
    return path


def _unsampled_pad_byte(path: Path) -> int:
    """An offset of a pad byte that no sampled block of the resume's input check reads."""
    size = path.stat().st_size
    blocks, width = prep._SAMPLE_BLOCKS, prep._SAMPLE_BYTES
    starts = [max(size - width, 0) * k // (blocks - 1) for k in range(blocks)]
    data = path.read_bytes()
    for at in range(size // 2, size):
        if data[at : at + 1] == b"x" and not any(s <= at < s + width for s in starts):
            return at
    raise AssertionError("every byte is sampled")


def test_a_damaged_plan_is_made_again_when_the_inputs_are_unchanged(tmp_path):
    docs = _padded_corpus(tmp_path / "docs.jsonl")
    out = tmp_path / "shards"
    _prepare(docs, out)
    before = digests(out)
    (out / "plan.npz").write_bytes(b"not a plan")
    (out / "shards" / "shard-00001.parquet").unlink()  # one shard to redo from the new plan
    s = _prepare(docs, out)
    assert s["documents"] == 24 and digests(out) == before
    assert prep.RowPlan.load(out / "plan.npz").n_shards == 3


def test_a_replan_over_an_input_edited_unseen_is_refused(tmp_path):
    """An edit that keeps the input's size and time outside the sampled blocks passes the
    cheap resume check; a damaged plan.npz makes the run scan the input again, and the new
    SHA-256 is compared with the recorded one before any finished shard is trusted."""
    docs = _padded_corpus(tmp_path / "docs.jsonl")
    out = tmp_path / "shards"
    _prepare(docs, out)
    st = docs.stat()
    data = bytearray(docs.read_bytes())
    data[_unsampled_pad_byte(docs)] = ord("y")
    docs.write_bytes(bytes(data))
    os.utime(docs, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _prepare(docs, out)["documents"] == 24  # the known limit of the cheap check
    (out / "plan.npz").write_bytes(b"not a plan")
    with pytest.raises(ValueError) as e:
        _prepare(docs, out)
    message = str(e.value)
    assert f"{out / 'plan.npz'} was planned again (it cannot be read" in message
    assert f"input {docs} no longer has the SHA-256 recorded" in message
    assert not (out / "plan.npz").read_bytes().startswith(b"PK")  # the new plan is not saved


def test_a_replan_that_moves_finished_shards_is_refused(tmp_path, monkeypatch):
    """A new plan whose rows differ from those a finished shard was made from (here: a
    planner that counts one row more in the first shard's range) is refused, naming the
    shard."""
    docs = write_corpus(tmp_path / "docs.jsonl", 24, seed=0)
    out = tmp_path / "shards"
    _prepare(docs, out)
    original = prep.plan_rows

    def shifted(files, fmt, shard_size):
        plan = original(files, fmt, shard_size)
        plan.offsets[1] += 1  # shard 1 would start one byte later
        return plan

    monkeypatch.setattr(prep, "plan_rows", shifted)
    (out / "plan.npz").unlink()
    with pytest.raises(ValueError) as e:
        _prepare(docs, out)
    message = str(e.value)
    assert f"{out / 'plan.npz'} was planned again (it is missing)" in message
    assert f"the finished shard {out / 'shards' / 'shard-00001.parquet'} no longer" in message
    assert "byte offset, line), the new plan's are" in message
    assert not (out / "plan.npz").exists()


def test_a_rerun_over_unchanged_shards_reuses_the_normalizer(folder, monkeypatch):
    docs, out = folder
    before = (out / "normalizer.pt").read_bytes()
    fitted_on = json.loads((out / "summary.json").read_text())["normalizer_fitted_on"]
    fits: list[int] = []
    original = prep.RobustNormalizer.fit

    def counting(x, *a, **kw):
        fits.append(int(x.shape[0]))
        return original(x, *a, **kw)

    monkeypatch.setattr(prep.RobustNormalizer, "fit", staticmethod(counting))
    summary = _prepare(docs, out)  # nothing changed: no shard read, no refit
    assert fits == [] and summary["normalizer_fitted_on"] == fitted_on
    assert (out / "normalizer.pt").read_bytes() == before
    # a rebuilt shard with the same bytes is the same data: still reused
    (out / "shards" / "shard-00001.parquet").unlink()
    _prepare(docs, out)
    assert (out / "shards" / "shard-00001.parquet").exists() and fits == []
    # a damaged normalizer.pt is refitted, to the same bytes
    (out / "normalizer.pt").write_bytes(before[:-7])
    _prepare(docs, out)
    assert fits == [fitted_on] and (out / "normalizer.pt").read_bytes() == before
    # another sample size is another fit (the settings check refuses other settings, so the
    # record is what changes here: a record of other shards is never trusted)
    record = json.loads((out / "normalizer.json").read_text())
    record["shards_sha256"] = "0" * 64
    (out / "normalizer.json").write_text(json.dumps(record))
    _prepare(docs, out)
    assert fits == [fitted_on, fitted_on]
