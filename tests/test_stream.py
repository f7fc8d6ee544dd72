"""Streaming training data (lcm.train.stream): same examples as the in-memory path, disjoint
ranks, exact resume, corrupt shards named, and ``lcm fit --data.streaming true``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers_train import make_shards

from lcm.data.shards import ShardError, file_record
from lcm.train import ConceptDataModule
from lcm.train.cli import cli_main
from lcm.train.stream import StreamingBatches, read_ahead

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


pytestmark = pytest.mark.usefixtures("plain_argv")  # shards, sft_shards: tests/conftest.py


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("val"), 8, seed=5)


def _dm(folder, streaming, **kw) -> ConceptDataModule:
    args = dict(val_fraction=0, max_seq_len=8, max_concepts_per_batch=64, shuffle_buffer=7)
    args.update(kw)
    cache = str(Path(folder).parent / "arrow-cache")
    dm = ConceptDataModule(str(folder), streaming=streaming, cache_dir=cache, **args)
    dm.setup()
    return dm


def _rows(batches) -> list[tuple[bytes, bytes, bytes]]:
    """One key per real example: its concepts, loss mask and separator mask."""
    out = []
    for b in batches:
        for i in range(b["x"].shape[0]):
            if int(b["index"][i]) < 0:
                continue
            m = b["mask"][i]
            out.append(
                (
                    b["x"][i][m].numpy().tobytes(),
                    b["loss_mask"][i][m].numpy().tobytes(),
                    b["sep_mask"][i][m].numpy().tobytes(),
                )
            )
    return sorted(out)


@pytest.mark.parametrize("mode", ["pretrain", "summarize"])
def test_one_epoch_streams_the_in_memory_examples(shards, sft_shards, mode):
    folder = shards if mode == "pretrain" else sft_shards
    kw = {"mode": mode, "max_seq_len": 8 if mode == "pretrain" else 10}
    plan = _dm(folder, False, **kw)
    streamed = _dm(folder, True, **kw)
    memory = _rows(plan.batches("train", shuffle=True))
    loader = streamed.train_dataloader()
    stream = _rows(loader)
    assert len(stream) == len(memory) == plan.stats["train"]["examples"]
    assert stream == memory
    for b in loader:  # every batch respects the concept bound
        assert b["x"].shape[0] * b["x"].shape[1] <= 64
    # The order is shuffled, and differs per epoch, yet is the same on every run.
    loader2 = _dm(folder, True, **kw).train_dataloader()
    first = [b["x"].sum().item() for b in loader2]
    assert first == [b["x"].sum().item() for b in loader]
    loader2._epoch_fn = lambda: 1
    assert [b["x"].sum().item() for b in loader2] != first


def _ids(stream: StreamingBatches, epoch: int = 0) -> list[str]:
    return [i for _, _, t in stream.blocks(epoch) for i in t.column("id").to_pylist()]


@pytest.mark.parametrize("world", [2, 3])  # 4 shards: whole shards per rank, or every w-th row
def test_ranks_get_disjoint_documents_covering_all(shards, world):
    dm = _dm(shards, True)
    all_ids = {f"doc{j}" for j in range(40)}
    for epoch in (0, 1):
        seen = []
        for rank in range(world):
            s = dm._stream
            part = StreamingBatches(
                s.files, s.fields, s.mode, s.dim, 8, None, 64, seed=0, rank=rank, world_size=world
            )
            seen.append(_ids(part, epoch))
        flat = [i for part in seen for i in part]
        assert len(flat) == len(set(flat)) == 40 and set(flat) == all_ids


def test_exhausted_rank_pads_until_every_rank_is_done(shards):
    s = _dm(shards, True)._stream
    n = sum(1 for _ in s)
    others = iter([False] * 3 + [True])  # another rank has 3 more batches than this one
    s.sync = lambda done: done and next(others)
    batches = list(s)
    assert len(batches) == n + 3
    assert all(not b["loss_mask"].any() and (b["index"] < 0).all() for b in batches[n:])
    assert all(b["loss_mask"].any() for b in batches[:n])


def test_resume_from_any_position_yields_the_remaining_batches(shards):
    s = _dm(shards, True, shuffle_buffer=5)._stream
    s.set_position(1)
    full, positions = [], []
    for b in s:
        full.append(b)
        positions.append(json.loads(json.dumps(s.position)))  # survives a checkpoint
    assert len({p["block"] for p in positions}) >= 8
    for k in (0, 3, 4, len(full) - 2):
        s.set_position(1, positions[k])
        rest = list(s)
        assert len(rest) == len(full) - k - 1
        for a, b in zip(rest, full[k + 1 :]):
            for key in a:
                assert torch.equal(a[key], b[key]), key


def test_read_ahead_gives_the_same_batches_and_positions(shards):
    """A thread reading blocks ahead changes nothing: same batches, same saved positions (so
    resume is unchanged), for any depth."""
    runs = []
    for ahead in (0, 1, 3):
        s = _dm(shards, True, shuffle_buffer=5, read_ahead=ahead)._stream
        s.set_position(1)
        batches, positions = [], []
        for b in s:
            batches.append(b)
            positions.append(json.dumps(s.position))
        runs.append((batches, positions))
    (ref, ref_pos), *others = runs
    assert len(ref) > 8
    for batches, positions in others:
        assert positions == ref_pos
        assert len(batches) == len(ref)
        for a, b in zip(batches, ref):
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_read_ahead_stays_at_most_depth_items_ahead_and_stops_when_closed(shards):
    import threading
    import time

    made = []

    def items():
        for i in range(100):
            made.append(i)
            yield i

    def settle():  # until the thread stops producing (it blocks on its slots)
        n, deadline = -1, time.monotonic() + 10
        while n != len(made) and time.monotonic() < deadline:
            n = len(made)
            time.sleep(0.05)
        return len(made)

    gen = read_ahead(items(), 2)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    assert settle() == 3 + 2  # 3 taken, 2 read ahead, no more
    gen.close()
    deadline = time.monotonic() + 10
    while any(t.name == "lcm-stream-read-ahead" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the read-ahead thread did not stop"
        time.sleep(0.02)
    assert len(made) <= 6  # at most the item it was producing when told to stop

    def failing():
        yield "a"
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in read_ahead(failing(), 1):
            got.append(x)
    assert got == ["a"]  # raised where the item would have been read
    assert list(read_ahead(iter(range(5)), 0)) == list(range(5))
    with pytest.raises(ValueError, match="read_ahead"):
        ConceptDataModule(str(shards), streaming=True, val_fraction=0, read_ahead=-1)


def _corrupt(folder: Path, shard: str, row: int) -> None:
    """Put a NaN in one document's vectors and re-record the shard (size and rows still pass)."""
    path = folder / "shards" / shard
    table = pq.read_table(path)
    col = table.column("text_embeddings").to_pylist()
    col[row][1][3] = float("nan")
    table = table.set_column(
        table.schema.get_field_index("text_embeddings"),
        table.schema.field("text_embeddings"),
        pa.array(col, type=table.schema.field("text_embeddings").type),
    )
    pq.write_table(table, path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][shard] = file_record(path)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("ahead", [0, 1])  # read in the loop, or by the read-ahead thread
def test_corrupt_data_while_streaming_names_shard_and_document(tmp_path, ahead):
    folder = make_shards(tmp_path / "bad", 12, seed=3)
    _corrupt(folder, "shard-00002.parquet", 1)
    loader = _dm(folder, True, read_ahead=ahead).train_dataloader()  # the quick check passes
    with pytest.raises(ShardError, match=r"shard-00002\.parquet.*'doc9' \(row 1\).*NaN"):
        list(loader)


def test_streaming_needs_a_validation_folder(shards):
    with pytest.raises(ValueError, match="val_dir"):
        ConceptDataModule(str(shards), streaming=True, val_fraction=0.1)


def _fit(shards, val, root, steps, *extra):
    cli_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "trainer" / "default.yaml"),
            "--config",
            str(CONFIGS / "two_tower" / "tiny.yaml"),
            f"--data.data_dir={shards}",
            f"--data.val_dir={val}",
            f"--data.cache_dir={root.parent / 'cache'}",
            "--data.streaming=true",
            "--data.shuffle_buffer=9",
            f"--trainer.default_root_dir={root}",
            "--data.max_seq_len=8",
            "--data.max_concepts_per_batch=64",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.log_every_n_steps=1",
            f"--trainer.max_steps={steps}",
            "--trainer.val_check_interval=5",
            "--checkpoint.every_n_train_steps=4",
            "--model.init_args.optim.decay_steps=20",
            "--model.init_args.arch.dropout=0.1",
            *extra,
        ]
    )
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_fit_streaming_resumes_bit_for_bit(shards, val_shards, tmp_path):
    # 40 documents in blocks of 9: 12 batches per epoch; stop mid-epoch at step 8.
    straight = _fit(shards, val_shards, tmp_path / "a", 16)
    first = _fit(shards, val_shards, tmp_path / "b", 8)
    state = first["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert first["global_step"] == 8 and state["epoch"] == 0 and state["counter"] == 8
    resumed = _fit(shards, val_shards, tmp_path / "b", 16, "--ckpt_path=last")
    assert resumed["global_step"] == straight["global_step"] == 16
    assert resumed["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] >= 1
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    # Control: restarting the epoch instead of resuming gives other weights.
    other = _fit(shards, val_shards, tmp_path / "c", 8)
    del other
    ck = torch.load(tmp_path / "c" / "checkpoints" / "last.ckpt", weights_only=True)
    ck["loops"]["fit_loop"]["state_dict"]["combined_loader"] = [{"epoch": 0, "done": 0}]
    torch.save(ck, tmp_path / "c" / "checkpoints" / "last.ckpt")
    diverged = _fit(shards, val_shards, tmp_path / "c", 16, "--ckpt_path=last")
    name = "objective.model.den_postnet.weight"
    assert not torch.equal(diverged["state_dict"][name], straight["state_dict"][name])
    assert np.isfinite(resumed["state_dict"][name].numpy()).all()


def _rank_epoch(rank: int, world: int, port: int, files: list[str], out: str) -> None:
    """One process of a gloo group: stream epoch 0 with the default (all-reduce) sync."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        s = StreamingBatches(files, ["text"], "pretrain", 16, 8, None, 64, seed=0,
                             block_docs=5, rank=rank, world_size=world)  # fmt: skip
        ids = [int(b["batch_id"]) for b in s]
        Path(out, f"rank{rank}.json").write_text(json.dumps(ids))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and the toolkit (~45 s here)
def test_ranks_with_unequal_streams_yield_the_same_number_of_batches(shards, tmp_path):
    """Two gloo processes; the 4 shards hold 13, 13, 13 and 1 documents, so one rank's stream
    is shorter: it pads (batch id -1) until the other is done, and both stop together."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    files = [str(f) for f in sorted((shards / "shards").glob("*.parquet"))]
    mp.spawn(_rank_epoch, args=(2, port, files, str(tmp_path)), nprocs=2, join=True)
    ids = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ids[0]) == len(ids[1])
    real = [[i for i in part if i >= 0] for part in ids]
    assert len(real[0]) != len(real[1])  # the streams differ; the shorter one was padded
    short = min(real, key=len)
    assert ids[real.index(short)][len(short) :] == [-1] * (len(ids[0]) - len(short))
    assert sorted(real[0] + real[1]) == sorted(set(real[0] + real[1]))  # unique batch ids


def test_sample_concepts_streams_the_same_documents_on_every_rank(shards):
    dm = _dm(shards, True)
    memory = _dm(shards, False)
    x = dm.sample_concepts("train", 50, seed=3)
    assert x.shape == (50, 16) and torch.isfinite(x).all()
    assert torch.equal(x, dm.sample_concepts("train", 50, seed=3))
    assert not torch.equal(x, dm.sample_concepts("train", 50, seed=4))
    dm._stream.rank, dm._stream.world_size = 1, 2
    assert torch.equal(x, dm.sample_concepts("train", 50, seed=3))
    # Normalized with the folder's normalizer: the rows are rows of the in-memory data.
    pool = memory.sample_concepts("train", 10_000, seed=0)
    assert all((pool == row).all(dim=1).any() for row in x)
