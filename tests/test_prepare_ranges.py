"""`lcm prepare` plans shards as ranges of input rows: each rank and each resume reads only the
rows of its own pending shards; duplicate ids are still found across the whole corpus."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encoders.hashing import HashCodec
from lcm.data import prepare as prep
from lcm.data import ranges
from lcm.data.ranges import plan_rows
from lcm.splitting import SentenceSplitter


def _jsonl(path: Path, rows: list[dict | str]) -> None:
    """Rows as JSON lines; a str is written as is (a blank or malformed line)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _stream(files, out: Path, shard_size: int, rank: int, world: int, plan=None, done=()):
    return prep.ShardStream(
        files, "auto", "document", out, SentenceSplitter(256), "text", [], "id", "lang",
        "eng_Latn", ("eng_Latn",), None, shard_size, set(done), rank=rank, world=world,
        write_rejects=False, plan=plan,
    )  # fmt: skip


def _digests(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "shards").glob("*.parquet"))
    }


def _rejects(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "rejects" / "input.jsonl").read_text().splitlines()]


@pytest.fixture
def two_jsonl(tmp_path) -> list[Path]:
    """13 rows in two files (a blank line is no row; a malformed line is one)."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _jsonl(a, [{"id": f"a{i}", "text": f"Doc a{i}. Two sentences."} for i in range(5)]
           + ["   ", "{not json", {"id": "a7", "text": "Last of a."}])  # fmt: skip
    _jsonl(b, [{"id": f"b{i}", "text": f"Doc b{i}. Two sentences."} for i in range(6)])
    return [a, b]


def test_jsonl_plan_locates_each_range_start_by_byte_offset_and_line(two_jsonl):
    plan = plan_rows(two_jsonl, "auto", 4)
    assert plan.file_rows.tolist() == [7, 6] and plan.n_shards == 4
    # shard 1 starts at a.jsonl row 4 (line 5); shard 2 at b.jsonl row 1 (a has 7 rows)
    assert plan.segments(1) == [(0, 4, 7, plan.offsets[1], 5), (1, 0, 1, 0, 1)]
    raw = two_jsonl[0].read_bytes()
    assert raw[plan.offsets[1] :].startswith(b'{"id": "a4"')
    assert plan.segments(3) == [(1, 5, 6, plan.offsets[3], 6)]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_each_rank_reads_only_the_rows_of_its_own_shards(fmt, two_jsonl, tmp_path, monkeypatch):
    """world=2: every row is read by exactly one rank, and the two ranks together give what the
    full pass over the inputs gives (same documents, same rejects)."""
    files = two_jsonl
    if fmt == "parquet":  # the same 12 good rows, in row groups of 5 that shards cut across
        files = []
        for path in two_jsonl:
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.startswith('{"')]
            files.append(path.with_suffix(".parquet"))
            pq.write_table(pa.Table.from_pylist(rows), files[-1], row_group_size=5)
    parsed: list[str] = []  # every row any reader turns into a record or an error
    real_json, real_parquet = ranges.parse_json_line, ranges._parquet_range

    def count_json(line):
        parsed.append(line.decode(errors="replace"))
        return real_json(line)

    def count_parquet(path, r0, r1, columns):
        for item in real_parquet(path, r0, r1, columns):
            parsed.append(f"{Path(path).name}:{item[1]}")
            yield item

    monkeypatch.setattr(ranges, "parse_json_line", count_json)
    monkeypatch.setattr(ranges, "_parquet_range", count_parquet)
    (tmp_path / "rejects").mkdir()
    plan = plan_rows(files, "auto", 4)
    n_rows = plan.n_rows
    got, reads = {}, {}
    for rank in (0, 1):
        parsed.clear()
        s = _stream(files, tmp_path, 4, rank, 2, plan)
        got[rank] = [(p.index, [d.id for d in p.docs], p.read_rejects) for p in s]
        reads[rank] = (s.rows_read, len(parsed))
    assert [i for i, *_ in got[0]] == [0, 2]
    assert [i for i, *_ in got[1]] == list(range(1, plan.n_shards, 2))
    # rank 0 reads rows 0-3 and 8-11, rank 1 rows 4-7 and 12 (jsonl; parquet has 12 rows):
    # each only its own ranges
    last = n_rows - 12
    assert reads == {0: (8, 8), 1: (4 + last, 4 + last)}, reads
    # together they give exactly what the full pass gives
    full = list(_stream(files, tmp_path, 10**6, 0, 1))
    both = sorted(got[0] + got[1])
    assert [d for _, ids, _ in both for d in ids] == [d.id for p in full for d in p.docs]
    rejected = [(Path(r["file"]).name, r["row"], r["kind"]) for *_, rej in both for r in rej]
    if fmt == "jsonl":
        assert rejected == [("a.jsonl", 5, "malformed_json")]
        [r] = [r for *_, rej in both for r in rej]
        assert r["line"] == 7  # the blank line 6 is no row, but its line counts
    else:
        assert rejected == []


def test_a_resume_reads_only_the_rows_of_unfinished_shards(two_jsonl, tmp_path, hash_codec):
    out = tmp_path / "out"
    kw = dict(codec=hash_codec, shard_size=4, progress=False, cache=False)
    first = prep.prepare([str(f) for f in two_jsonl], str(out), **kw)
    assert first["planning"] == "rows" and first["rows_read_this_run"] == 13 == first["rows_read"]
    assert first["documents"] + first["rejected"] == first["rows_read"]
    digests = _digests(out)
    (out / "shards" / "shard-00001.parquet").unlink()  # as if killed before shard 1 was written
    again = prep.prepare([str(f) for f in two_jsonl], str(out), **kw)
    assert again["rows_read_this_run"] == 4  # only shard 1's rows were read
    assert _digests(out) == digests and again["rows_read"] == 13
    for key in ("documents", "rejected", "sentences", "shards"):
        assert again[key] == first[key]
    done = prep.prepare([str(f) for f in two_jsonl], str(out), **kw)  # all done: nothing read
    assert done["rows_read_this_run"] == 0 and _digests(out) == digests


def test_duplicate_ids_across_shards_are_rejected_with_their_row(tmp_path, hash_codec):
    rows = [{"id": f"d{i}", "text": f"Document {i}. It ends."} for i in range(10)]
    rows[7]["id"] = "d1"  # shard 2 repeats an id of shard 0
    rows[8]["id"] = "d6"  # shard 2 repeats an id of its own (found while reading)
    _jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    kw = dict(codec=hash_codec, shard_size=3, progress=False, cache=False)
    s = prep.prepare(str(tmp_path / "d.jsonl"), str(out), **kw)
    assert (s["documents"], s["rejected"], s["rows_read"]) == (8, 2, 10)
    got = [(Path(r["file"]).name, r["row"], r["kind"], r["reason"]) for r in _rejects(out)]
    assert got == [
        ("d.jsonl", 7, "duplicate_id", "duplicate id 'd1' (first at d.jsonl:1)"),
        ("d.jsonl", 8, "duplicate_id", "duplicate id 'd6' (first at d.jsonl:6)"),
    ]
    ids = [pq.read_table(p)["id"].to_pylist() for p in sorted((out / "shards").glob("*.parquet"))]
    assert ids == [["d0", "d1", "d2"], ["d3", "d4", "d5"], ["d6"], ["d9"]]
    stats = json.loads((out / "stats" / "shard-00002.json").read_text())
    assert stats["documents"] == 1 and stats["sentences"] == 2 and len(stats["id_hashes"]) == 1
    assert stats["rows"] == 1 and stats["rows_read"] == 3  # the rewritten shard verifies
    digests = _digests(out)
    again = prep.prepare(str(tmp_path / "d.jsonl"), str(out), **kw)  # nothing more to drop
    assert _digests(out) == digests and again["rejected"] == 2
    assert again["rows_read_this_run"] == 0 and len(_rejects(out)) == 2


def test_a_run_killed_before_the_duplicate_check_resumes_to_the_same_folder(
    tmp_path, hash_codec, monkeypatch
):
    rows = [{"id": f"d{i % 5}", "text": f"Document {i}. It ends."} for i in range(8)]
    _jsonl(tmp_path / "d.jsonl", rows)
    kw = dict(codec=hash_codec, shard_size=3, progress=False, cache=False)
    clean = prep.prepare(str(tmp_path / "d.jsonl"), str(tmp_path / "clean"), **kw)
    assert clean["documents"] == 5 and clean["rejected"] == 3

    def killed(*args):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(prep, "_drop_duplicates_across_shards", killed)
        with pytest.raises(KeyboardInterrupt):
            prep.prepare(str(tmp_path / "d.jsonl"), str(out), **kw)
    # the shards on disk still hold the duplicates; a stale rewrite is rebuilt from its rows
    (out / "shards" / "shard-00001.parquet").write_bytes(b"truncated")
    s = prep.prepare(str(tmp_path / "d.jsonl"), str(out), **kw)
    assert s["rows_read_this_run"] == 3 and _digests(out) == _digests(tmp_path / "clean")
    assert _rejects(out) == _rejects(tmp_path / "clean")
    for key in ("documents", "rejected", "sentences", "rows_read"):
        assert s[key] == clean[key]


def _as_v1(out: Path, files: list[Path], finished: bool = True) -> None:
    """Make ``out`` look as an older `lcm prepare` (manifest version 1) left it."""
    from lcm.data.documents import fingerprint

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["version"] = 1
    manifest["input_sha256"] = fingerprint(files)
    for key in ("planning", "input_files", *([] if finished else ["shards"])):
        del manifest[key]
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_a_finished_folder_of_manifest_version_1_is_upgraded_in_place_without_encoding(
    tmp_path, hash_codec, monkeypatch
):
    rows = [{"id": f"d{i}", "text": f"Document {i}. It ends."} for i in range(10)]
    rows[4] = "{not json"
    _jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    kw = dict(codec=hash_codec, shard_size=3, progress=False, cache=False)
    with monkeypatch.context() as m:  # version 1 cut every input by valid documents
        m.setattr(prep, "locatable", lambda *a: False)
        first = prep.prepare(str(tmp_path / "d.jsonl"), str(out), **kw)
    _as_v1(out, [tmp_path / "d.jsonl"])
    digests = _digests(out)

    def encode(*args):
        raise AssertionError("an upgrade encodes nothing")

    monkeypatch.setattr(hash_codec, "_encode", encode)
    s = prep.prepare(str(tmp_path / "d.jsonl"), str(out), **kw)
    assert _digests(out) == digests and s["planning"] == "documents"
    for key in ("documents", "sentences", "rejected", "rows_read", "shards"):
        assert s[key] == first[key], key
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["upgraded_from"] == 1
    assert manifest["planning"] == "documents" and len(manifest["shards"]) == 3
    again = prep.prepare(str(tmp_path / "d.jsonl"), str(out), **kw)  # a v2 folder now
    assert again["documents"] == first["documents"] and _digests(out) == digests


def test_a_folder_of_manifest_version_1_that_cannot_be_upgraded_says_what_to_do(
    tmp_path, hash_codec
):
    _jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "One. Two."}])
    files = [tmp_path / "d.jsonl"]
    out = tmp_path / "out"
    kw = dict(codec=hash_codec, progress=False)
    prep.prepare(str(files[0]), str(out), **kw)
    v2 = (out / "manifest.json").read_text()
    _as_v1(out, files, finished=False)
    with pytest.raises(ValueError, match="did not finish.*delete .*out.* rerun the same command"):
        prep.prepare(str(files[0]), str(out), **kw)
    (out / "manifest.json").write_text(v2)
    _as_v1(out, files)  # finished, but its input changed since
    _jsonl(files[0], [{"id": "a", "text": "One. Three."}])
    with pytest.raises(ValueError, match="inputs that have changed.*restore them.*or delete"):
        prep.prepare(str(files[0]), str(out), **kw)
    with pytest.raises(ValueError, match=r"other settings \(shard_size differ\)"):
        prep.prepare(str(files[0]), str(out), shard_size=7, **kw)


def test_csv_keeps_the_full_pass(tmp_path, hash_codec):
    (tmp_path / "d.csv").write_text('id,text\na,"One.\nTwo."\nb,Three. Four.\n')
    s = prep.prepare(str(tmp_path / "d.csv"), str(tmp_path / "out"), codec=hash_codec,
                     progress=False, lang_field=None)  # fmt: skip
    assert s["planning"] == "documents" and (s["documents"], s["rows_read"]) == (2, 2)
    assert not (tmp_path / "out" / "plan.npz").exists()


def test_the_byte_scan_counts_rows_across_scan_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(ranges, "_BLOCK", 7)  # lines longer than a block, cut anywhere
    rows = [{"id": str(i), "text": "x" * (i % 4)} for i in range(23)]
    _jsonl(tmp_path / "d.jsonl", rows[:10] + ["", " \t"] + rows[10:])
    raw = (tmp_path / "d.jsonl").read_bytes()
    (tmp_path / "d.jsonl").write_bytes(raw.rstrip(b"\n"))  # no newline after the last row
    plan = plan_rows([tmp_path / "d.jsonl"], "auto", 5)
    assert plan.file_rows.tolist() == [23] and plan.n_shards == 5
    for k in range(5):
        got = [r[2]["id"] for r in plan.iter_rows(k)]
        assert got == [str(i) for i in range(5 * k, min(5 * k + 5, 23))]
    assert np.array_equal(plan.lines, [1, 6, 13, 18, 23])


def test_text_read_by_line_is_planned_by_rows_like_the_full_pass(tmp_path):
    lines = [
        b"First line. Two.",
        b"",
        b"caf\xe9 au lait.",
        b"Windows line.\r",
        b"Last, no newline.",
    ]
    (tmp_path / "t.txt").write_bytes(b"\n".join(lines))
    (tmp_path / "u.txt").write_bytes(b"Old Mac.\rLine.\n")  # a lone \r: the full pass
    files = [tmp_path / "t.txt"]
    assert ranges.locatable(files[0], "auto", "line")
    assert not ranges.locatable(files[0], "auto", "paragraph")
    assert not ranges.locatable(tmp_path / "u.txt", "auto", "line")
    plan = plan_rows(files, "auto", 2)
    assert plan.file_rows.tolist() == [5] and plan.n_shards == 3
    (tmp_path / "rejects").mkdir()

    def run(plan, shard_size):
        s = prep.ShardStream(
            files, "auto", "line", tmp_path, SentenceSplitter(256), "text", [], None, None,
            "eng_Latn", ("eng_Latn",), None, shard_size, set(), write_rejects=False, plan=plan,
        )  # fmt: skip
        docs = [(d.source, d.sentences["text"]) for p in s for d in p.docs]
        return docs, dict(s.input_rejects)

    by_rows, by_pass = run(plan, 2), run(None, 10)
    assert by_rows == by_pass
    assert [src.rpartition(":")[2] for src, _ in by_rows[0]] == ["0", "3", "4"]
    assert by_rows[0][1][1] == ["Windows line."] and by_rows[1] == {"empty": 1, "non_utf8": 1}


class _CountingCodec(HashCodec):
    """Counts a sentence with "LONG" as truncated and one with "??" as mostly unknown."""

    def count_truncated(self, sentences, lang):
        return sum("LONG" in s for s in sentences)

    def unknown_ratio(self, sentences, lang):
        return [1.0 if "??" in s else 0.0 for s in sentences]


def test_counts_add_up_after_a_duplicate_is_dropped_from_its_shard(tmp_path):
    rows = [{"id": f"d{i}", "text": f"Document {i}. It ends."} for i in range(9)]
    rows[1]["text"] = "A LONG one. Fine. Then ?? here."
    # shard 2 repeats d1 with the same counted sentences, and its summary field too
    rows[7] = {"id": "d1", "text": "A LONG one. Fine. Then ?? here. And LONG again."}
    for r in rows:
        r["summary"] = f"Sum of {r['id']}. LONG ??."
    clean_rows = [r for i, r in enumerate(rows) if i != 7]
    _jsonl(tmp_path / "d.jsonl", rows)
    _jsonl(tmp_path / "clean.jsonl", clean_rows)
    kw = dict(codec=_CountingCodec(), shard_size=3, progress=False, cache=False,
              target_fields=["summary"])  # fmt: skip
    s = prep.prepare(str(tmp_path / "d.jsonl"), str(tmp_path / "out"), **kw)
    c = prep.prepare(str(tmp_path / "clean.jsonl"), str(tmp_path / "clean"), **kw)
    assert s["rejected_by_reason"] == {"duplicate_id": 1}
    # every summary has one truncated and one unknown sentence, d1's text one of each; the
    # dropped row had 2 truncated and 1 unknown text sentences and 1 + 1 in its summary
    assert c["truncated_sentences"] == 8 + 1 and c["unknown_token_sentences"] == 8 + 1
    for key in ("documents", "sentences", "truncated_sentences", "unknown_token_sentences"):
        assert s[key] == c[key], key
    stats = json.loads((tmp_path / "out" / "stats" / "shard-00002.json").read_text())
    assert (stats["documents"], stats["truncated"], stats["unknown_sentences"]) == (2, 2, 2)
    assert stats["sentences"] == 4


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_an_input_edited_between_two_runs_is_refused_naming_the_file(
    tmp_path, hash_codec, keep_mtime
):
    rows = [{"id": f"d{i}", "text": f"Document {i}. It ends here."} for i in range(40)]
    _jsonl(tmp_path / "a.jsonl", rows[:2])
    _jsonl(tmp_path / "b.jsonl", rows[2:])
    files = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    out = tmp_path / "out"
    kw = dict(codec=hash_codec, shard_size=4, progress=False, cache=False)
    prep.prepare(files, str(out), **kw)
    record = json.loads((out / "manifest.json").read_text())["input_files"][1]
    raw = (tmp_path / "b.jsonl").read_bytes()
    assert record["sha256"] == hashlib.sha256(raw).hexdigest() and record["bytes"] == len(raw)
    st = (tmp_path / "b.jsonl").stat()
    middle = raw.index(b"Document 20") + len("Document ")  # one digit in the middle: 2 -> 7
    (tmp_path / "b.jsonl").write_bytes(raw[:middle] + b"7" + raw[middle + 1 :])
    if keep_mtime:  # an edit that hides behind the old modification time: a sampled block
        os.utime(tmp_path / "b.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns))
    why = "differs although its modification" if keep_mtime else r"differs \(SHA-256\)"
    with pytest.raises(ValueError, match=rf"input {tmp_path / 'b.jsonl'} changed.*{why}"):
        prep.prepare(files, str(out), **kw)
    (tmp_path / "b.jsonl").write_bytes(raw[:-10])  # a shorter file: named by its size
    with pytest.raises(ValueError, match=rf"b.jsonl changed .*size is {len(raw) - 10} bytes"):
        prep.prepare(files, str(out), **kw)


def test_an_unchanged_input_is_checked_cheaply_and_a_touched_one_by_its_checksum(
    tmp_path, hash_codec, monkeypatch
):
    rows = [{"id": f"d{i}", "text": f"Document {i}. It ends here."} for i in range(20)]
    _jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    kw = dict(codec=hash_codec, shard_size=4, progress=False, cache=False)
    prep.prepare(str(tmp_path / "d.jsonl"), str(out), **kw)
    digests = _digests(out)
    for k in (1, 3):  # two unfinished shards
        (out / "shards" / f"shard-0000{k}.parquet").unlink()
    full_reads = []
    real = prep.file_sha256
    monkeypatch.setattr(prep, "file_sha256", lambda p: full_reads.append(p) or real(p))
    monkeypatch.setattr(ranges, "_scan_lines", None)  # no new planning scan either
    s = prep.prepare(str(tmp_path / "d.jsonl"), str(out), **kw)
    assert full_reads == [] and s["rows_read_this_run"] == 8 and _digests(out) == digests
    before = json.loads((out / "manifest.json").read_text())["input_files"][0]
    os.utime(tmp_path / "d.jsonl")  # touched, content unchanged: one full read, then cheap
    s = prep.prepare(str(tmp_path / "d.jsonl"), str(out), **kw)
    assert len(full_reads) == 1 and s["rows_read_this_run"] == 0
    after = json.loads((out / "manifest.json").read_text())["input_files"][0]
    assert after["mtime_ns"] != before["mtime_ns"] and after["sha256"] == before["sha256"]
    prep.prepare(str(tmp_path / "d.jsonl"), str(out), **kw)
    assert len(full_reads) == 1


def test_the_duplicate_check_in_small_buckets_finds_every_duplicate_across_shards(
    tmp_path, hash_codec, monkeypatch
):
    rows = [{"id": f"d{i}", "text": f"Document {i}. It ends."} for i in range(30)]
    for i, j in [(7, 1), (12, 1), (20, 5), (29, 5), (25, 13), (14, 0)]:
        rows[i]["id"] = f"d{j}"  # 6 later repeats of 4 ids, all in other shards
    _jsonl(tmp_path / "d.jsonl", rows)
    kw = dict(codec=hash_codec, shard_size=4, progress=False, cache=False)
    one = prep.prepare(str(tmp_path / "d.jsonl"), str(tmp_path / "one"), **kw)
    loaded = []
    monkeypatch.setattr(prep, "DUPLICATE_BUCKET_ROWS", 4)  # 8 buckets of about 4 documents
    real = prep._load_bucket
    monkeypatch.setattr(prep, "_load_bucket", lambda p: loaded.append(len(real(p))) or real(p))
    s = prep.prepare(str(tmp_path / "d.jsonl"), str(tmp_path / "out"), **kw)
    assert len(loaded) == 8 and sum(loaded) == 30 and max(loaded) < 30
    assert (s["documents"], s["rejected"], s["rows_read"]) == (24, 6, 30)
    assert s["documents"] + s["rejected"] == s["rows_read"]
    dropped = sorted((r["row"], r["reason"]) for r in _rejects(tmp_path / "out"))
    assert [r for r, _ in dropped] == [7, 12, 14, 20, 25, 29]
    assert dropped[0][1] == "duplicate id 'd1' (first at d.jsonl:1)"
    ids = [i for p in sorted((tmp_path / "out" / "shards").glob("*.parquet"))
           for i in pq.read_table(p)["id"].to_pylist()]  # fmt: skip
    assert len(ids) == len(set(ids)) == 24
    assert _digests(tmp_path / "out") == _digests(tmp_path / "one")
    assert _rejects(tmp_path / "out") == _rejects(tmp_path / "one") and one == {
        **s,
        "seconds": one["seconds"],
        "encode_seconds": one["encode_seconds"],
    }
    assert not (tmp_path / "out" / ".duplicates").exists()
