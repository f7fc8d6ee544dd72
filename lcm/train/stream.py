"""Training batches streamed from concept shards, for corpora of any size.

The in-memory path (:class:`lcm.train.data.ConceptStore`) copies every shard into a per-node
Arrow cache and keeps a per-document index before the first step. This path reads the shards
as a stream through Hugging Face ``datasets`` (``load_dataset("parquet", streaming=True)``), so
start-up does not grow with the number of documents and memory holds one block of documents at a
time. The folder may be local or an fsspec URL (``s3://bucket/prepared``): its manifest, the
shard checks of :mod:`lcm.data.shards` and the reads all go through fsspec, with no local copy.

Order (deterministic, the same on every run):
    1. Epoch ``e`` permutes the shard files with ``seed + e``;
       ``datasets.distributed.split_dataset_by_node`` then gives rank ``r`` of ``w`` its shards
       (whole shards when ``w`` divides the shard count, else every ``w``-th document): the ranks'
       documents are disjoint and cover the corpus.
    2. Each rank reads its stream in blocks of ``block_docs`` documents (the shuffle buffer).
       A block becomes examples with the very functions of the in-memory path
       (:func:`~lcm.train.data.pretrain_examples`, :func:`~lcm.train.data.summarize_examples`),
       and batches with :func:`~lcm.train.data.plan_batches` (shuffled, length-sorted pools,
       shuffled batch order) seeded by ``(seed, epoch, block)``; the batches are collated by
       :meth:`~lcm.train.data.ConceptBatches.collate`, so the layout is the same.

Exact resume: ``datasets``' own shuffle buffer loses its content on resume, so it is not used.
The state is the ``datasets`` stream position at the start of the current block (its
``state_dict()``), the block number and the batches of the block already trained on. Resuming
re-reads that one block (bounded cost), re-plans it identically and skips the trained batches:
a resumed run sees exactly the remaining batches of an uninterrupted one.

Distributed: ranks hold different documents, so their batch counts differ. With
``torch.distributed`` initialized, the ranks agree after every batch (one tiny all-reduce on a
gloo group) whether any rank has data left; a rank that ran out yields all-padding batches
(``loss_mask`` all False) until every rank is done, so all run the same number of steps.
The checkpoint holds every rank's stream position (gathered when Lightning saves it), so a
resumed run continues each rank exactly; resuming with another number of ranks restarts the saved
epoch, with a warning (another rank count reads other shards per rank).

Read-ahead: by default a background thread reads (and checks) the next block while the current
one trains (``read_ahead`` blocks at most; ``datasets``/pyarrow release the GIL while they read and
decode, so reading overlaps the training step). The blocks, their stream positions and so the
batches are exactly those of reading in the training loop (``read_ahead=0``); an error met while
reading ahead is raised in the training loop, where the block would have been read.

Values are checked as they stream: a NaN/inf vector or a sentence list that does not match its
vectors stops training with a :class:`~lcm.data.shards.ShardError` naming the shard file and the
document (never skipped). Sizes and row counts are checked at start from the manifest
(level ``quick``).
"""

from __future__ import annotations

import copy
import hashlib
import queue
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lcm.data.shards import ShardError, name_of, read_schema, read_table, table_problems
from lcm.normalizer import RobustNormalizer

__all__ = ["BlockStore", "StreamingBatches", "StreamingLoader", "read_ahead"]

_END = object()


def read_ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Yield the items of ``items`` in order, produced by a background thread that stays at most
    ``depth`` items ahead of the consumer (``depth`` 0: no thread, plain iteration).

    An exception raised by ``items`` is raised here, at the item where it happened. When the
    consumer stops early (the generator is closed or collected), the thread stops after the
    item it is producing; ``items`` is then left unfinished, never touched by two threads.
    """
    if depth <= 0:
        yield from items
        return
    slots = threading.Semaphore(depth)  # items the thread may produce before we take one
    ready: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def produce() -> None:
        try:
            while True:
                slots.acquire()
                if stop.is_set():
                    return
                item = next(items, _END)
                ready.put((item, None))
                if item is _END:
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            ready.put((_END, err))

    worker = threading.Thread(target=produce, name="lcm-stream-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, err = ready.get()
            if err is not None:
                raise err
            if item is _END:
                return
            slots.release()  # the thread may read the next one while this one is used
            yield item
    finally:
        stop.set()
        slots.release()  # wake the thread if it waits for a slot, so it exits


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    text = ":".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


class BlockStore:
    """The vectors of one block of streamed documents, with the store interface that
    :meth:`~lcm.train.data.ConceptBatches.collate` reads (``dim``, ``ids``, ``vectors``)."""

    def __init__(self, table, fields: list[str], dim: int) -> None:
        self.dim = dim
        self.ids: list[str] = table.column("id").to_pylist()
        self._mats: dict[str, np.ndarray] = {}
        self._starts: dict[str, np.ndarray] = {}
        self._lengths: dict[str, np.ndarray] = {}
        for name in fields:
            col = table.column(f"{name}_embeddings").combine_chunks()
            offsets = col.offsets.to_numpy().astype(np.int64)  # (docs + 1,) into the sentences
            vecs = col.values  # FixedSizeListArray, one vector per sentence
            flat = vecs.values.to_numpy(zero_copy_only=False)[vecs.offset * dim :]
            self._mats[name] = flat[: len(vecs) * dim].reshape(-1, dim)  # (sentences, D)
            self._starts[name] = offsets[:-1]
            self._lengths[name] = np.diff(offsets)

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self, name: str) -> np.ndarray:
        """(docs,) concepts of ``name`` per document of the block."""
        return self._lengths[name]

    def vectors(self, name: str, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(stop - start, D) concepts ``start:stop`` of block document ``doc``."""
        first = int(self._starts[name][doc])
        stop = int(self._lengths[name][doc]) if stop is None else stop
        return self._mats[name][first + start : first + stop]


def _distributed_world() -> int:
    """The number of ranks of the initialized process group (1 when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _gloo_group():
    """A gloo group over all ranks (NCCL cannot reduce CPU tensors or gather objects). Every
    rank creates it at the same call, as a collective."""
    import torch.distributed as dist

    global _GLOO
    if _GLOO is None:
        _GLOO = dist.new_group(backend="gloo")
    return _GLOO


def _all_ranks_done(done: bool) -> bool:
    """True when this rank and every other rank have no batch left (gloo all-reduce; True
    alone when not distributed)."""
    import torch.distributed as dist

    if _distributed_world() == 1:
        return done
    flag = torch.tensor([0 if done else 1], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_gloo_group())
    return int(flag.item()) == 0


_GLOO = None


class StreamingBatches(IterableDataset):
    """Training batches streamed from a prepared folder (see the module docstring).

    Args:
        files: The folder's shard files (local paths or fsspec URLs), already checked.
        fields: Columns ``<field>_embeddings`` to read: the main field (and the target field).
        mode: ``pretrain`` or ``summarize`` (as :class:`~lcm.train.data.ConceptDataModule`).
        dim: Concept dimension D.
        max_seq_len: Longest sequence in concepts.
        normalizer: Applied to every concept, or None.
        max_concepts: Bound on padded concepts per batch.
        max_batch_size: Optional bound on sequences per batch.
        seed: Base seed of the shard order and the block shuffles.
        block_docs: Documents per shuffled block (the shuffle buffer).
        read_ahead: Blocks a background thread reads ahead of training (0: read in the training
            loop). The batches are the same either way; each adds one block's memory.
        rank: This process's rank.
        world_size: Number of ranks.
        sync: Called after each batch with "this rank is done"; returns True when every rank is
            done (default: an all-reduce when ``torch.distributed`` is initialized).
    """

    def __init__(
        self,
        files: list[str | Path],
        fields: list[str],
        mode: str,
        dim: int,
        max_seq_len: int,
        normalizer: RobustNormalizer | None,
        max_concepts: int,
        max_batch_size: int | None = None,
        seed: int = 0,
        block_docs: int = 1000,
        read_ahead: int = 1,
        rank: int = 0,
        world_size: int = 1,
        sync: Callable[[bool], bool] | None = None,
    ) -> None:
        if block_docs < 1:
            raise ValueError(f"the shuffle buffer must hold at least 1 document, got {block_docs}")
        self.files = [str(f) for f in files]
        self.fields = list(dict.fromkeys(fields))
        self.mode = mode
        self.dim = dim
        self.max_seq_len = max_seq_len
        self.normalizer = normalizer
        self.max_concepts = max_concepts
        self.max_batch_size = max_batch_size
        self.seed = seed
        self.block_docs = block_docs
        if read_ahead < 0:
            raise ValueError(f"read_ahead must be >= 0 blocks, got {read_ahead}")
        self.read_ahead = read_ahead
        self.rank = rank
        self.world_size = world_size
        self.sync = sync or _all_ranks_done
        self.epoch = 0
        self.resume: dict[str, Any] | None = None
        #: Position of the last batch yielded: ``{epoch, block, anchor, done, exhausted}``.
        self.position: dict[str, Any] = {}
        #: Example index -> document id of the last few batches (for error messages).
        self.recent_ids: OrderedDict[int, str] = OrderedDict()
        #: Counts of the last epoch streamed on this rank (documents, examples, batches, ...).
        self.stats: dict[str, int] = {}
        self._columns: list[str] | None = None

    # ----------------------------------------------------------------------------- reading
    def columns(self) -> list[str]:
        """Columns read: id, the vectors, and the sentence lists (for the alignment check)."""
        if self._columns is None:
            names = read_schema(self.files[0]).names  # local paths and URLs (s3://...)
            cols = ["id"]
            for f in self.fields:
                cols.append(f"{f}_embeddings")
                if f"{f}_sentences" in names:
                    cols.append(f"{f}_sentences")
            self._columns = cols
        return self._columns

    def file_order(self, epoch: int) -> list[str]:
        """The shard files in epoch ``epoch``'s order (the same on every rank)."""
        order = np.random.default_rng(_seed(self.seed, epoch)).permutation(len(self.files))
        return [self.files[i] for i in order]

    def stream(self, epoch: int, files: list[str] | None = None, by_rank: bool = True):
        """This rank's ``datasets`` stream of epoch ``epoch`` (Arrow tables); with ``files``,
        those files in that order; with ``by_rank=False``, every rank's documents."""
        import datasets
        from datasets.distributed import split_dataset_by_node
        from datasets.utils import are_progress_bars_disabled, disable_progress_bars

        if not are_progress_bars_disabled():
            disable_progress_bars()
        from datasets.data_files import DataFilesList

        files = files or self.file_order(epoch)
        # A ready DataFilesList skips datasets' per-file pattern resolution (O(shards) globs and
        # stats); the files were checked against the manifest already.
        data_files = {"train": DataFilesList(files, [(f,) for f in files])}
        ds = datasets.load_dataset(
            "parquet",
            data_files=data_files,
            split="train",
            streaming=True,
            columns=self.columns(),
        )
        if by_rank and self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        return ds.with_format("arrow")

    def blocks(
        self, epoch: int, start: dict[str, Any] | None = None
    ) -> Iterator[tuple[int, dict, Any]]:
        """``(block number, stream state at the block's start, table)`` of epoch ``epoch``,
        starting at ``start`` (``{"block", "anchor"}``) when given."""
        ds = self.stream(epoch)
        block = 0
        if start is not None:
            ds.load_state_dict(start["anchor"])
            block = int(start["block"])
        anchor = copy.deepcopy(ds.state_dict())
        for table in ds.iter(batch_size=self.block_docs):
            self.check(table)
            yield block, anchor, table
            anchor = copy.deepcopy(ds.state_dict())
            block += 1

    def check(self, table) -> None:
        """Raise :class:`ShardError` naming the shard and the documents if ``table`` holds a
        non-finite vector or a sentence list that does not match its vectors."""
        if not table_problems(table, "stream", self.fields):
            return
        ids = set(table.column("id").to_pylist())
        problems: list[str] = []
        for path in self.files:  # only on the error path: find the shard that holds them
            shard_ids = read_table(path, columns=["id"]).column("id").to_pylist()
            if not ids.intersection(shard_ids):
                continue
            shard = read_table(path, columns=self.columns())
            for problem in table_problems(shard, name_of(path), self.fields):
                problems.append(f"{path}: {problem.split(': ', 1)[1]}")
        if not problems:
            problems = table_problems(table, "streamed block", self.fields)
        raise ShardError(
            f"corrupt data while streaming: {'; '.join(problems[:10])}. Rerun `lcm prepare` with "
            "the same arguments to rebuild the shard, or run `lcm check` on the folder"
        )

    # ---------------------------------------------------------------------------- batching
    def block_batches(self, epoch: int, block: int, table) -> tuple[Any, list[dict]]:
        """The shuffled batches of one block (``index``: example index inside the block)."""
        from lcm.train.data import ConceptBatches, pretrain_examples, summarize_examples

        store = BlockStore(table, self.fields, self.dim)
        docs = np.arange(len(store), dtype=np.int64)
        src = store.lengths(self.fields[0])
        if self.mode == "pretrain":
            ex = pretrain_examples(docs, src, self.max_seq_len)
        else:
            tgt = store.lengths(self.fields[1])
            ex = summarize_examples(docs, src, tgt, self.max_seq_len, store.ids)
        batches = ConceptBatches(
            store,
            ex,
            self.fields[0],
            self.fields[1] if len(self.fields) > 1 else None,
            self.normalizer,
            self.max_concepts,
            self.max_batch_size,
            shuffle=True,
            seed=_seed(self.seed, epoch, block, self.rank),
        )
        for k, v in ex.stats.items():
            self.stats[k] = self.stats.get(k, 0) + v
        return store, [(batches, idx) for idx in batches.plan(0)]

    def set_position(self, epoch: int, resume: dict[str, Any] | None = None) -> None:
        """Next iteration runs ``epoch``, from ``resume`` (``{block, anchor, done}``) if given."""
        self.epoch, self.resume = epoch, resume

    def _padding(self, last: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if last is None:
            x = torch.zeros(1, 2, self.dim)
            mask = torch.ones(1, 2, dtype=torch.bool)
            last = {"x": x, "mask": mask, "sep_mask": torch.zeros_like(mask)}
        return {
            "x": last["x"],
            "mask": last["mask"],
            "sep_mask": last["sep_mask"],
            "loss_mask": torch.zeros_like(last["mask"]),
            "index": torch.full((last["x"].shape[0],), -1, dtype=torch.int64),
            "batch_id": torch.tensor(-1, dtype=torch.int64),
        }

    def _real_batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        resume, self.resume = self.resume, None
        skip = int(resume["done"]) if resume else 0
        self.stats = {}
        counter = 0  # batches of this rank in this epoch, for batch ids
        first_example = 0
        for block, anchor, table in read_ahead(self.blocks(epoch, resume), self.read_ahead):
            store, plan = self.block_batches(epoch, block, table)
            if resume is not None:
                counter = int(resume.get("counter", 0)) - skip
                first_example = int(resume.get("first_example", 0))
                resume = None
            for j, (batches, idx) in enumerate(plan):
                if j < skip:
                    counter += 1
                    continue
                batch = batches.collate(idx)
                index = batch["index"] + first_example
                batch["index"] = index
                batch["batch_id"] = torch.tensor(
                    (epoch << 32) + counter * self.world_size + self.rank, dtype=torch.int64
                )
                for i, d in zip(index.tolist(), batches.examples.doc[idx].tolist()):
                    self.recent_ids[i] = store.ids[d]
                while len(self.recent_ids) > 4096:
                    self.recent_ids.popitem(last=False)
                counter += 1
                self.position = {
                    "epoch": epoch,
                    "block": block,
                    "anchor": anchor,
                    "done": j + 1,
                    "counter": counter,
                    "first_example": first_example,
                }
                yield batch
            skip = 0
            first_example += len(batches.examples) if plan else 0
        self.stats["batches"] = counter

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        last = None
        real = self._real_batches(epoch)
        while True:
            batch = next(real, None)
            if self.sync(batch is None):
                return
            if batch is None:
                yield self._padding(last)
            else:
                last = batch
                yield batch


class StreamingLoader(DataLoader):
    """Training DataLoader over :class:`StreamingBatches` that Lightning checkpoints and resumes.

    The epoch length is unknown, so Lightning fetches one batch ahead: while it trains on batch
    n, batch n + 1 has been handed out. ``state_dict`` therefore records the position of the
    batch before the last one handed out (the last one once the stream has ended), which is the
    last batch trained on. Reading happens in this process (``num_workers`` is not used): the
    stream position must be known here to be saved.
    """

    def __init__(
        self, dataset: StreamingBatches, epoch_fn: Callable[[], int], pin_memory: bool = False
    ) -> None:
        super().__init__(dataset, batch_size=None, num_workers=0, pin_memory=pin_memory)
        self._epoch_fn = epoch_fn
        self._pending: dict[str, Any] | None = None
        self._trained: dict[str, Any] = {"epoch": 0, "done": 0}
        self._handed: dict[str, Any] = {"epoch": 0, "done": 0}
        self._exhausted = False

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self._epoch_fn()
        resume = None
        if self._pending is not None and self._pending["epoch"] == epoch:
            resume = self._pending if "anchor" in self._pending else None
        self._pending = None
        self.dataset.set_position(epoch, resume)
        start = dict(resume) if resume else {"epoch": epoch, "done": 0}
        self._trained = self._handed = start
        self._exhausted = False
        for batch in super().__iter__():
            self._trained = self._handed
            self._handed = dict(self.dataset.position) if batch["batch_id"] >= 0 else self._handed
            yield batch
        self._exhausted = True
        self._trained = self._handed

    def state_dict(self) -> dict[str, Any]:
        """This rank's position; when distributed, every rank's (``{"ranks": [...]}``, gathered
        on a gloo group), because the ranks stream different shards and only rank 0's state is
        saved. Lightning calls it on every rank when it saves a checkpoint."""
        mine = copy.deepcopy(self._trained if not self._exhausted else self._handed)
        world = _distributed_world()
        if world == 1:
            return mine
        import torch.distributed as dist

        ranks: list[Any] = [None] * world
        dist.all_gather_object(ranks, mine, group=_gloo_group())
        return {"epoch": mine.get("epoch", 0), "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = copy.deepcopy(state)
        if "ranks" not in state and self.dataset.world_size > 1 and state.get("done", 0):
            state = {"epoch": state.get("epoch", 0), "ranks": [state]}  # saved by one process
        if "ranks" in state:
            ranks, world = state["ranks"], self.dataset.world_size
            if len(ranks) != world:
                # Another number of ranks reads other shards per rank: no position of the old
                # run is this rank's. Restart the saved epoch (its batches are seen again).
                warnings.warn(
                    f"the checkpoint's data stream was saved by {len(ranks)} ranks and this run "
                    f"has {world}: the stream cannot resume exactly, so epoch "
                    f"{state['epoch']} restarts from its first batch",
                    stacklevel=2,
                )
                state = {"epoch": state["epoch"], "done": 0}
            else:
                state = ranks[self.dataset.rank]
        self._pending = state
