"""`lcm prepare` streams: bounded live documents, compact duplicate ids, and an embedding cache
that several processes can open and write at once."""

from __future__ import annotations

import gc
import json
import multiprocessing
import weakref
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import HashCodec

from encoders.cache import EmbeddingCache
from lcm.data.documents import Document, SeenIds
from lcm.data.prepare import prepare


class LiveCountingCodec(HashCodec):
    """Counts the Document objects alive at every encode call (the peak is what matters)."""

    def __init__(self, live: weakref.WeakSet) -> None:
        super().__init__()
        self.live = live
        self.seen: list[int] = []

    def _encode(self, sentences, lang):
        gc.collect()
        self.seen.append(len(self.live))
        return super()._encode(sentences, lang)


def test_at_most_a_few_shards_of_documents_are_alive_at_once(tmp_path, monkeypatch):
    from lcm.data import documents

    live: weakref.WeakSet = weakref.WeakSet()

    class Tracked(Document):  # every document the reader makes joins ``live`` until freed
        __hash__ = object.__hash__  # by identity, for the WeakSet

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            live.add(self)

    monkeypatch.setattr(documents, "Document", Tracked)
    n, shard_size = 200, 10
    rows = [{"id": f"d{i}", "text": f"Document {i} here. It has two sentences."} for i in range(n)]
    rows.insert(57, {"id": "d3", "text": "A duplicate id."})  # rejected while streaming
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    codec = LiveCountingCodec(live)
    s = prepare(
        str(tmp_path / "d.jsonl"),
        str(tmp_path / "out"),
        codec=codec,
        shard_size=shard_size,
        cache=False,
        progress=False,
    )
    # shards are ranges of 10 input rows (201 rows: 21 shards); the duplicate (row 57, in
    # shard 5) is found across shards at the end and dropped from shard 5
    assert (s["documents"], s["rejected"], s["rows_read"], s["shards"]) == (200, 1, 201, 21)
    assert len(codec.seen) == 21  # one encode call per shard (one field, one language)
    # the shard being encoded, the one read ahead by Lightning's fetcher, and the one being cut:
    # never the corpus (200 documents were alive at once before prepare streamed)
    assert max(codec.seen) <= 3 * shard_size, codec.seen
    # the count really sees the shard being encoded (the last holds one row, d199)
    assert min(codec.seen[:-1]) >= shard_size and codec.seen[-1] >= 1
    [rej] = [json.loads(x) for x in (tmp_path / "out/rejects/input.jsonl").read_text().splitlines()]
    assert (rej["row"], rej["kind"]) == (57, "duplicate_id")
    assert rej["reason"] == "duplicate id 'd3' (first at d.jsonl:3)"
    ids = [i for p in sorted((tmp_path / "out/shards").glob("*.parquet"))
           for i in pq.read_table(p)["id"].to_pylist()]  # fmt: skip
    assert ids == [f"d{i}" for i in range(n)]


def test_each_rank_keeps_only_its_own_shards(tmp_path, monkeypatch):
    """Two ranks cut the same shards from one pass each and encode disjoint halves."""
    from lcm.data import prepare as prep

    rows = [{"id": f"d{i}", "text": f"Doc {i}. Two sentences."} for i in range(25)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from lcm.splitting import SentenceSplitter

    def stream(rank):
        return prep.ShardStream(
            [tmp_path / "d.jsonl"], "auto", "document", tmp_path, SentenceSplitter(256), "text",
            [], "id", "lang", "eng_Latn", ("eng_Latn",), None, 4, {2}, rank=rank, world=2,
            write_rejects=False,
        )  # fmt: skip

    (tmp_path / "rejects").mkdir()
    got = {r: [(p.index, [d.id for d in p.docs]) for p in stream(r)] for r in (0, 1)}
    assert [i for i, _ in got[0]] == [0, 4, 6]  # shard 2 is done: skipped
    assert [i for i, _ in got[1]] == [1, 3, 5]
    assert dict(got[0] + got[1])[6] == ["d24"]  # the last, partial shard
    assert sorted(d for _, ids in got[0] + got[1] for d in ids) == sorted(
        f"d{i}" for i in range(25) if not 8 <= i < 12
    )


def test_seen_ids_find_duplicates_across_merges_in_16_bytes_each():
    seen = SeenIds(buffer=64)
    for i in range(1000):
        assert seen.add(f"id-{i}", i % 3, i) is None
    assert len(seen) == 1000
    assert seen.nbytes == 16 * 960  # merged into the sorted arrays; 40 still in the buffer
    assert seen.add("id-5", 9, 9) == (2, 5)  # long merged: file index and row of the first
    assert seen.add("id-999", 9, 9) == (0, 999)  # still in the buffer
    assert seen.add("new", 0, 1000) is None and len(seen) == 1001


def _hammer(path: str, rank: int, rounds: int, barrier) -> None:
    torch.set_num_threads(1)
    for r in range(rounds):
        barrier.wait(timeout=60)  # both processes open a new file at the same instant
        cache = EmbeddingCache(f"{path}.{r}")
        sentences = [f"rank {rank} sentence {j}." for j in range(30)] + [
            f"shared {j}." for j in range(10)
        ]
        cache.put_many("c", "eng_Latn", sentences, torch.full((40, 4), float(rank)))
        assert all(v is not None for v in cache.get_many("c", "eng_Latn", sentences))
        cache.close()


def test_embedding_cache_is_safe_when_two_processes_write_one_file(tmp_path):
    """Two processes opening a new cache file at once used to fail with "database is locked"
    (switching to write-ahead logging is not covered by SQLite's busy wait)."""
    ctx = multiprocessing.get_context("fork")
    rounds = 40
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_hammer, args=(str(tmp_path / "c.sqlite"), r, rounds, barrier))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    for r in range(rounds):
        cache = EmbeddingCache(f"{tmp_path / 'c.sqlite'}.{r}")
        assert len(cache) == 70  # 30 + 30 own sentences, 10 shared
        assert cache.get_many("c", "eng_Latn", ["rank 1 sentence 3."])[0][0] == 1.0
        cache.close()


@pytest.mark.parametrize("cache", [True, False])
def test_cache_is_optional(tmp_path, cache):
    rows = [{"id": f"d{i}", "text": f"Doc {i}. Two sentences."} for i in range(6)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = prepare(str(tmp_path / "d.jsonl"), str(tmp_path / "o"), codec=HashCodec(), cache=cache,
                progress=False)  # fmt: skip
    assert s["documents"] == 6
    assert Path(tmp_path / "o" / "cache.sqlite").exists() == cache
