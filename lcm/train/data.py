"""Concept shards -> padded batches for training, built by concept count.

Reads the folder written by ``lcm prepare`` (``manifest.json``, ``shards/*.parquet``,
``normalizer.pt``) through ``datasets``, whose Arrow cache is memory-mapped, so the vectors are
never all loaded into RAM; each batch copies only its own rows. With ``streaming=True`` the
training split is streamed instead (:mod:`lcm.train.stream`: no Arrow copy, no per-document
index); validation, test and predict keep this in-memory store (small folders).

Examples
    ``pretrain``: one document = one sequence of concepts. A document longer than ``max_seq_len``
    is cut into windows of ``max_seq_len`` that overlap by one concept (stride ``max_seq_len - 1``):
    the first concept of a continuation window is context only, so every concept of a document is
    a prediction target exactly once and every transition i -> i+1 is seen once. Nothing is
    dropped.

    ``summarize`` (the paper's instruction tuning): ``[source concepts, SEP, target concepts]``
    with ``loss_mask`` True on the target concepts only. If the sequence is longer than
    ``max_seq_len`` the *source* is cut (its first concepts are kept) and the cut is counted in
    :attr:`ConceptDataModule.stats`; a target that cannot fit next to at least one source concept
    is an error that names the documents.

    The separator slot holds zeros here and is flagged in ``sep_mask``; the LightningModule fills
    it with its own separator vector (:mod:`lcm.train.module`), so the vector lives with the model
    checkpoint and generation uses the very same one.

Batches (dicts of tensors; concepts are in normalized space when ``normalize=True``)
    x (B, T, D) float32, mask (B, T) bool (True = real concept), loss_mask (B, T) bool,
    sep_mask (B, T) bool, index (B,) int64 example index (-1 for padding rows),
    batch_id () int64 (unique per epoch and batch; keys the training noise, see
    :mod:`lcm.train.module`).

Batching: examples are grouped so that ``batch_size * longest_in_batch <= max_concepts_per_batch``
(padding included, so the bound is on memory). Training shuffles examples per epoch
(``seed + epoch``), sorts them by length inside pools of ``sort_pool`` examples to cut padding,
then shuffles the batch order. The batch plan does not depend on the number of devices: rank r
of w takes batches ``r, r + w, ...``, so ``devices=w`` sees the same batches per optimizer step
as one device with ``accumulate_grad_batches=w``. When the count does not divide, the last
ranks get an all-padding batch (``loss_mask`` all False): every rank runs the same number of
steps and nothing is counted twice.

Resuming: the training loader is stateful (``state_dict``/``load_state_dict``, which Lightning
stores in checkpoints), so a run resumed from a mid-epoch checkpoint continues with the next
unseen batch of the same epoch.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lcm.data.shards import (
    Level,
    Location,
    exists,
    is_url,
    join,
    location,
    open_binary,
    read_schema,
    read_text,
    recorded_shards,
    verified_shards,
)
from lcm.normalizer import RobustNormalizer

log = logging.getLogger(__name__)

Mode = Literal["pretrain", "summarize"]

# ConceptBatches gives each DataLoader worker its own batches, so its __len__ stays exact.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


# ---------------------------------------------------------------------------------------- shards
def _shard_files(data_dir: Location, level: Level = "quick") -> list[Location]:
    """The folder's shards, verified by the shared reader (:mod:`lcm.data.shards`)."""
    return verified_shards(data_dir, level)


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a prepared folder (a local path or an fsspec URL)."""
    return json.loads(read_text(join(data_dir, "manifest.json")))


def shard_dim(data_dir: str | Path, field: str) -> int:
    """Concept dimension from the first shard's schema (reads metadata only)."""
    schema = read_schema(_shard_files(location(data_dir))[0])
    name = f"{field}_embeddings"
    if name not in schema.names:
        raise KeyError(f"shards of {data_dir} have no column {name!r}; columns: {schema.names}")
    return int(schema.field(name).type.value_type.list_size)


class ConceptStore:
    """The concept vectors of one prepared folder, memory-mapped.

    ``vectors(field, doc)`` returns a (n_sentences, D) numpy view (float16 or float32, as stored).

    Args:
        data_dir: The ``lcm prepare`` output folder.
        fields: Text fields whose ``<field>_embeddings`` columns are needed.
        cache_dir: Where ``datasets`` keeps its Arrow copy (default: the Hugging Face cache).
        verify: How the shards are checked before use (:mod:`lcm.data.shards`): ``full`` (size,
            checksum, rows, finite values, sentence/vector alignment) or ``quick`` (size and rows).
    """

    def __init__(
        self,
        data_dir: str | Path,
        fields: list[str],
        cache_dir: str | None = None,
        verify: Level = "full",
    ):
        if is_url(data_dir):
            raise ValueError(
                f"{data_dir} is a URL: only streaming training reads remote folders (pass "
                "--data.streaming true for the training folder); validation, test and predict "
                "folders are read into a local cache, so give them as local paths"
            )
        self.data_dir = Path(data_dir)
        self.fields = list(dict.fromkeys(fields))
        self.cache_dir = cache_dir
        self.files = _shard_files(self.data_dir, verify)
        self._ds = self._load()
        self.ids: list[str] = self._ds.data.table.column("id").to_pylist()
        self.dim = shard_dim(self.data_dir, self.fields[0])
        self._lengths = {name: self._column_lengths(name) for name in self.fields}
        self._index: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self._mats: dict[str, list[np.ndarray]] | None = None

    def _load(self):
        import datasets
        from datasets.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        was_disabled = are_progress_bars_disabled()
        disable_progress_bars()
        try:
            columns = ["id", *(f"{f}_embeddings" for f in self.fields)]
            return datasets.Dataset.from_parquet(
                [str(f) for f in self.files], columns=columns, cache_dir=self.cache_dir
            )
        finally:
            if not was_disabled:
                enable_progress_bars()

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        # DataLoader workers re-open the memory map instead of pickling numpy views of it.
        state = dict(self.__dict__)
        state["_index"] = state["_mats"] = None
        return state

    def _build(self) -> None:
        table = self._ds.data.table  # pyarrow Table backed by the memory-mapped Arrow file
        self._index, self._mats = {}, {}
        for name in self.fields:
            col = table.column(f"{name}_embeddings")
            chunk_of, start_of, mats = [], [], []
            for k, chunk in enumerate(col.chunks):
                offsets = chunk.offsets.to_numpy()  # (rows + 1,) into the child array
                vecs = chunk.values  # FixedSizeListArray, one vector per sentence
                flat = vecs.values.to_numpy(zero_copy_only=False)  # ignores vecs.offset
                mats.append(flat.reshape(-1, self.dim))
                chunk_of.append(np.full(len(chunk), k, dtype=np.int64))
                start_of.append(offsets[:-1].astype(np.int64) + vecs.offset)
            self._mats[name] = mats
            self._index[name] = (np.concatenate(chunk_of), np.concatenate(start_of))

    def _column_lengths(self, name: str) -> np.ndarray:
        col = self._ds.data.table.column(f"{name}_embeddings")
        return np.concatenate([np.diff(c.offsets.to_numpy()) for c in col.chunks]).astype(np.int64)

    def lengths(self, name: str) -> np.ndarray:
        """(n_docs,) number of concepts of ``name`` per document."""
        return self._lengths[name]

    def vectors(self, name: str, doc: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(stop - start, D) concepts ``start:stop`` of document ``doc``, field ``name``."""
        if self._index is None:
            self._build()
        chunk, first = self._index[name][0][doc], self._index[name][1][doc]
        stop = int(self._lengths[name][doc]) if stop is None else stop
        return self._mats[name][chunk][first + start : first + stop]


# -------------------------------------------------------------------------------------- examples
@dataclass
class Examples:
    """Sequences to train on, as parallel arrays over examples.

    ``src_*`` is the window of the main field; ``tgt_len`` > 0 only in summarize mode.
    ``first_is_target`` is False for continuation windows (their first concept is context).
    """

    doc: np.ndarray
    src_start: np.ndarray
    src_len: np.ndarray
    tgt_len: np.ndarray
    first_is_target: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.doc)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) sequence length of each example (separator included)."""
        return self.src_len + np.where(self.tgt_len > 0, self.tgt_len + 1, 0)


def window_starts(n: int, max_seq_len: int) -> list[int]:
    """Window starts covering ``n`` concepts with windows of ``max_seq_len`` overlapping by one.

    Every concept after the first window's first one is the target of exactly one window.
    """
    if n <= max_seq_len:
        return [0]
    stride = max_seq_len - 1
    return list(range(0, n - 1, stride))


def pretrain_examples(docs: np.ndarray, lengths: np.ndarray, max_seq_len: int) -> Examples:
    """Windows of every document in ``docs`` (lengths: concepts per document, all documents)."""
    doc, start, length, first = [], [], [], []
    windowed = 0
    for d in docs:
        n = int(lengths[d])
        starts = window_starts(n, max_seq_len)
        windowed += len(starts) > 1
        for s in starts:
            doc.append(d)
            start.append(s)
            length.append(min(max_seq_len, n - s))
            first.append(s == 0)
    ex = Examples(
        np.asarray(doc, dtype=np.int64),
        np.asarray(start, dtype=np.int64),
        np.asarray(length, dtype=np.int64),
        np.zeros(len(doc), dtype=np.int64),
        np.asarray(first, dtype=bool),
    )
    ex.stats = {
        "documents": len(docs),
        "examples": len(ex),
        "windowed_documents": int(windowed),
        "concepts": int(lengths[docs].sum()) if len(docs) else 0,
    }
    return ex


def summarize_examples(
    docs: np.ndarray,
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray,
    max_seq_len: int,
    ids: list[str],
) -> Examples:
    """``[source, SEP, target]`` per document; the source is cut (head kept) to fit."""
    too_long = [ids[d] for d in docs if tgt_lengths[d] + 2 > max_seq_len]
    if too_long:
        raise ValueError(
            f"{len(too_long)} targets do not fit in max_seq_len={max_seq_len} next to a separator "
            f"and one source concept (e.g. ids {too_long[:5]}); raise max_seq_len"
        )
    src = src_lengths[docs]
    tgt = tgt_lengths[docs]
    keep = np.minimum(src, max_seq_len - 1 - tgt)
    ex = Examples(
        docs.astype(np.int64),
        np.zeros(len(docs), dtype=np.int64),
        keep.astype(np.int64),
        tgt.astype(np.int64),
        np.zeros(len(docs), dtype=bool),
    )
    ex.stats = {
        "documents": len(docs),
        "examples": len(ex),
        "truncated_sources": int((keep < src).sum()),
        "source_concepts_cut": int((src - keep).sum()),
    }
    return ex


def split_documents(
    ids: list[str], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) document indices. The ``round(val_fraction * n)`` documents (at least one when
    the fraction is positive and there are two or more documents) with the smallest seeded hash
    of their id go to validation: the split depends on ids, not on file order."""
    n = len(ids)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    keys = [hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest() for i in ids]
    order = sorted(range(n), key=lambda k: keys[k])
    val = np.sort(np.asarray(order[:n_val], dtype=np.int64))
    train = np.sort(np.asarray(order[n_val:], dtype=np.int64))
    return train, val


# -------------------------------------------------------------------------------------- batching
SORT_POOL = 1000


def plan_batches(
    lengths: np.ndarray,
    max_concepts: int,
    max_batch_size: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    sort_pool: int = SORT_POOL,
) -> list[np.ndarray]:
    """Group example indices so that ``len(batch) * max(length) <= max_concepts``.

    Args:
        lengths: (N,) sequence lengths.
        max_concepts: Bound on padded concepts per batch.
        max_batch_size: Optional bound on sequences per batch.
        shuffle: Shuffle examples (seeded), sort within pools, shuffle the batch order; else
            sort all by length, longest first (deterministic evaluation order).
        seed: Seed of the shuffles.
        sort_pool: Examples sorted together when shuffling.

    Returns:
        Index arrays, one per batch; every example is in exactly one batch.
    """
    n = len(lengths)
    if n and int(lengths.max()) > max_concepts:
        raise ValueError(f"a sequence of {int(lengths.max())} concepts exceeds {max_concepts=}")
    rng = np.random.default_rng(seed)
    if shuffle:
        order = rng.permutation(n)
        pools = [order[i : i + sort_pool] for i in range(0, n, sort_pool)]
        order = np.concatenate(
            [p[np.argsort(-lengths[p], kind="stable")] for p in pools] or [order]
        )
    else:
        order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    current: list[int] = []
    longest = 0
    for i in order:
        length = int(lengths[i])
        grown = max(longest, length)
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (grown * (len(current) + 1) > max_concepts or full):
            batches.append(np.asarray(current, dtype=np.int64))
            current, grown = [], length
        current.append(int(i))
        longest = grown
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class ConceptBatches(IterableDataset):
    """Yields ready-made batches (use with ``DataLoader(batch_size=None)``).

    Args:
        store: Vectors of the main (and target) field.
        examples: The sequences.
        field: Main (source) field.
        target_field: Target field in summarize mode.
        normalizer: Applied to every concept, or None.
        max_concepts: See :func:`plan_batches`.
        max_batch_size: See :func:`plan_batches`.
        shuffle: Training order (reshuffled per epoch) or evaluation order.
        seed: Base seed of the shuffles; epoch e uses ``seed + e``.
        rank: This process's rank.
        world_size: Number of ranks.
    """

    def __init__(
        self,
        store: ConceptStore,
        examples: Examples,
        field: str,
        target_field: str | None,
        normalizer: RobustNormalizer | None,
        max_concepts: int,
        max_batch_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.store = store
        self.examples = examples
        self.field = field
        self.target_field = target_field
        self.normalizer = normalizer
        self.max_concepts = max_concepts
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0
        self._plans: dict[int, list[np.ndarray]] = {}

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The global batch plan of ``epoch`` (the same on every rank)."""
        if epoch not in self._plans:
            self._plans = {
                epoch: plan_batches(
                    self.examples.lengths,
                    self.max_concepts,
                    self.max_batch_size,
                    self.shuffle,
                    self.seed + (epoch if self.shuffle else 0),
                )
            }
        return self._plans[epoch]

    def rank_batches(self, epoch: int) -> list[int | None]:
        """Plan positions this rank runs in ``epoch``; None = an all-padding batch."""
        n = len(self.plan(epoch))
        per_rank = math.ceil(n / self.world_size) if n else 0
        positions = [self.rank + k * self.world_size for k in range(per_rank)]
        return [p if p < n else None for p in positions]

    def __len__(self) -> int:
        return len(self.rank_batches(self.epoch))

    def set_position(self, epoch: int, skip: int = 0) -> None:
        """Next iteration runs ``epoch``, starting after its first ``skip`` batches."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        plan = self.plan(epoch)
        todo = self.rank_batches(epoch)[self.skip :]
        worker = get_worker_info()
        if worker is not None:  # the DataLoader reads workers round-robin, so order is kept
            todo = todo[worker.id :: worker.num_workers]
        for pos in todo:
            if pos is None:
                batch = self.collate(plan[0][:1])
                batch["loss_mask"].zero_()
                batch["index"].fill_(-1)
                batch["batch_id"] = torch.tensor(-1, dtype=torch.int64)
            else:
                batch = self.collate(plan[pos])
                batch["batch_id"] = torch.tensor((epoch << 32) + pos, dtype=torch.int64)
            yield batch

    def collate(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Build one padded batch from example indices."""
        ex = self.examples
        lengths = ex.lengths[indices]
        B, T, D = len(indices), int(lengths.max()), self.store.dim
        x = np.zeros((B, T, D), dtype=np.float32)
        mask = np.zeros((B, T), dtype=bool)
        loss_mask = np.zeros((B, T), dtype=bool)
        sep_mask = np.zeros((B, T), dtype=bool)
        for b, i in enumerate(indices):
            doc, start, n_src = int(ex.doc[i]), int(ex.src_start[i]), int(ex.src_len[i])
            x[b, :n_src] = self.store.vectors(self.field, doc, start, start + n_src)
            if ex.tgt_len[i] > 0:
                n_tgt = int(ex.tgt_len[i])
                x[b, n_src + 1 : n_src + 1 + n_tgt] = self.store.vectors(self.target_field, doc)
                sep_mask[b, n_src] = True
                loss_mask[b, n_src + 1 : n_src + 1 + n_tgt] = True
            else:
                loss_mask[b, :n_src] = True
                loss_mask[b, 0] = bool(ex.first_is_target[i])
            mask[b, : lengths[b]] = True
        xt = torch.from_numpy(x)  # (B, T, D)
        mask_t = torch.from_numpy(mask)
        sep_t = torch.from_numpy(sep_mask)
        if self.normalizer is not None:
            xt = self.normalizer.normalize(xt)
        xt = xt.masked_fill(~(mask_t & ~sep_t)[..., None], 0.0)  # padding and SEP slots hold 0
        return {
            "x": xt,
            "mask": mask_t,
            "loss_mask": torch.from_numpy(loss_mask),
            "sep_mask": sep_t,
            "index": torch.from_numpy(np.asarray(indices, dtype=np.int64)),
        }


class ConceptLoader(DataLoader):
    """Training DataLoader that Lightning can checkpoint and resume mid-epoch.

    ``state_dict`` records the epoch and the batches this rank already handed out (with a known
    length Lightning does not prefetch, so handed out = trained on). ``load_state_dict`` makes
    the next iteration of that epoch skip them; the epoch itself comes from ``epoch_fn`` (the
    trainer's epoch), read each time an iteration starts.
    """

    def __init__(
        self,
        dataset: ConceptBatches,
        epoch_fn: Callable[[], int],
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
        self._epoch_fn = epoch_fn
        self._position = {"epoch": 0, "consumed": 0}
        self._pending: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.dataset.rank_batches(self._epoch_fn()))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self._epoch_fn()
        skip = 0
        if self._pending is not None and self._pending["epoch"] == epoch:
            skip = self._pending["consumed"]
        self._pending = None
        self.dataset.set_position(epoch, skip)  # before workers copy the dataset
        self._position = {"epoch": epoch, "consumed": skip}
        for batch in super().__iter__():
            self._position["consumed"] += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return dict(self._position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._pending = {"epoch": int(state["epoch"]), "consumed": int(state["consumed"])}


# ------------------------------------------------------------------------------------ datamodule
class ConceptDataModule(L.LightningDataModule):
    """Batches of concept sequences from ``lcm prepare`` folders.

    Args:
        data_dir: Prepared folder to train on (``manifest.json``, ``shards/``, ``normalizer.pt``).
        val_dir: Separate prepared folder for validation; if unset, ``val_fraction`` of the
            documents of ``data_dir`` are held out.
        test_dir: Prepared folder for ``test``; default: the validation documents.
        predict_dir: Prepared folder for ``predict``; default: the validation documents.
        val_fraction: Share of ``data_dir``'s documents held out for validation when ``val_dir``
            is unset (0 disables validation).
        split_seed: Seed of the document-level train/validation split.
        mode: ``pretrain`` (next concept over whole documents) or ``summarize`` (``[source,
            SEP, target]``, loss on the target only).
        text_field: Main field; default: the manifest's ``text_field``.
        target_field: Summary field in ``summarize`` mode; default: the manifest's first target
            field.
        max_seq_len: Longest sequence in concepts; longer documents are windowed (pretrain) or
            their source is cut (summarize).
        max_concepts_per_batch: Bound on padded concepts (batch size x longest sequence) per
            batch and device.
        max_batch_size: Optional bound on sequences per batch.
        seed: Seed of the training order (epoch e uses ``seed + e``).
        normalize: Apply the robust normalizer to every concept.
        normalizer_path: Normalizer to apply; default ``<data_dir>/normalizer.pt``. A model that
            already carries a normalizer (fine-tuning) replaces it, see
            :meth:`lcm.train.module.LCMModule.setup`.
        num_workers: DataLoader worker processes.
        pin_memory: Pin batches in page-locked memory (GPU training).
        cache_dir: Where ``datasets`` writes its memory-mapped Arrow copy of the shards
            (default: the Hugging Face cache).
        verify_shards: Check of every shard before use: ``full`` (recorded size, checksum and
            rows, finite values, sentence/vector alignment; reads each shard once) or ``quick``
            (size and rows only, for very large corpora). A failing shard stops with an error
            naming it (and the document, for a NaN). With ``streaming``, ``data_dir`` is always
            checked at ``quick`` at start (its values are checked as they stream).
        streaming: Stream the training shards of ``data_dir`` (:mod:`lcm.train.stream`, Hugging
            Face ``datasets`` streaming) instead of copying them into an Arrow cache and indexing
            every document first: start-up and memory no longer grow with the corpus, the order
            is deterministic and resumable across ranks, and a batch bound by
            ``max_concepts_per_batch`` is built from the same examples. The epoch length is
            unknown until the stream ends. Validation, test and predict keep the in-memory store
            (small folders), so streaming needs ``val_dir`` (or ``val_fraction=0``): holding out
            a share of ``data_dir`` would need an index of the whole corpus. Training batches
            are made in the main process, with blocks read ahead by a thread (``read_ahead``;
            ``num_workers`` applies to evaluation only). With
            ``streaming``, ``data_dir`` may be an fsspec URL (``s3://bucket/prepared``; the
            store's fsspec package must be installed, e.g. ``s3fs``).
        shuffle_buffer: With ``streaming``: documents per shuffled block (the shuffle buffer);
            memory holds one block (plus ``read_ahead``), and resume re-reads at most one block.
        read_ahead: With ``streaming``: blocks a background thread reads and checks ahead of
            training, so reading overlaps the training step (0: read in the training loop).
            The batches are the same for any value.
    """

    def __init__(
        self,
        data_dir: str,
        val_dir: str | None = None,
        test_dir: str | None = None,
        predict_dir: str | None = None,
        val_fraction: float = 0.01,
        split_seed: int = 0,
        mode: Mode = "pretrain",
        text_field: str | None = None,
        target_field: str | None = None,
        max_seq_len: int = 128,
        max_concepts_per_batch: int = 4096,
        max_batch_size: int | None = None,
        seed: int = 0,
        normalize: bool = True,
        normalizer_path: str | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
        verify_shards: Level = "full",
        streaming: bool = False,
        shuffle_buffer: int = 1000,
        read_ahead: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if mode not in ("pretrain", "summarize"):
            raise ValueError(f"mode must be 'pretrain' or 'summarize', got {mode!r}")
        min_len = 3 if mode == "summarize" else 2
        if max_seq_len < min_len:
            raise ValueError(f"max_seq_len must be >= {min_len} in {mode} mode, got {max_seq_len}")
        if max_concepts_per_batch < max_seq_len:
            raise ValueError(
                f"max_concepts_per_batch ({max_concepts_per_batch}) must be >= max_seq_len "
                f"({max_seq_len}), or a full window would not fit in a batch"
            )
        self.data_dir = location(data_dir)  # a Path, or an fsspec URL (streaming only)
        if is_url(self.data_dir) and not streaming:
            raise ValueError(
                f"data_dir {data_dir} is a URL: the in-memory path copies shards into a local "
                "cache; stream it instead with --data.streaming true"
            )
        for name, folder in (
            ("val_dir", val_dir),
            ("test_dir", test_dir),
            ("predict_dir", predict_dir),
        ):
            if folder and is_url(folder):
                raise ValueError(
                    f"{name} {folder} is a URL: only streaming training reads remote folders; "
                    "validation, test and predict folders are read into a local cache, so give "
                    "them as local paths"
                )
        self.val_dir = Path(val_dir) if val_dir else None
        self.test_dir = Path(test_dir) if test_dir else None
        self.predict_dir = Path(predict_dir) if predict_dir else None
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.mode: Mode = mode
        manifest = read_manifest(self.data_dir)
        self.text_field = text_field or manifest["text_field"]
        self.target_field: str | None = None
        if mode == "summarize":
            targets = manifest.get("target_fields") or []
            self.target_field = target_field or (targets[0] if targets else None)
            if self.target_field is None:
                raise ValueError(
                    f"summarize mode needs a target field, and {self.data_dir} was prepared "
                    "without target_fields"
                )
        self.max_seq_len = max_seq_len
        self.max_concepts_per_batch = max_concepts_per_batch
        self.max_batch_size = max_batch_size
        self.seed = seed
        self.normalize = normalize
        self.normalizer_path = normalizer_path
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.cache_dir = cache_dir
        self.verify_shards = verify_shards
        self.streaming = streaming
        self.shuffle_buffer = shuffle_buffer
        self.read_ahead = read_ahead
        if streaming and self.val_dir is None and val_fraction > 0:
            raise ValueError(
                "streaming reads data_dir without an index of its documents, so it cannot hold "
                f"out val_fraction={val_fraction} of them: pass --data.val_dir (a small prepared "
                "folder) or --data.val_fraction 0"
            )
        if streaming and shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        if read_ahead < 0:
            raise ValueError(f"read_ahead must be >= 0 blocks, got {read_ahead}")
        #: Concept dimension D, read from the shards (the CLI links it to the model's sonar_dim).
        self.dim = shard_dim(self.data_dir, self.text_field)
        self.normalizer: RobustNormalizer | None = None
        #: Counts per split: documents, examples, windowed documents or cut sources.
        self.stats: dict[str, dict[str, int]] = {}
        self._splits: dict[str, tuple[ConceptStore, Examples]] = {}
        self._stream = None  # StreamingBatches of the training split when streaming

    # ------------------------------------------------------------------------------ setup
    @property
    def fields(self) -> list[str]:
        return [self.text_field] + ([self.target_field] if self.target_field else [])

    def prepare_data(self) -> None:
        # Local rank 0 builds the datasets Arrow caches first; the other ranks then reuse them.
        folders = {self.data_dir, self.val_dir, self.test_dir, self.predict_dir} - {None}
        if self.streaming:  # the training folder is streamed: no cache to build
            folders.discard(self.data_dir)
            _shard_files(self.data_dir, self._stream_level)
        for folder in folders:
            ConceptStore(folder, self.fields, self.cache_dir, self.verify_shards)

    @property
    def _stream_level(self) -> Level:
        return "none" if self.verify_shards == "none" else "quick"

    def _examples(self, store: ConceptStore, docs: np.ndarray) -> Examples:
        src = store.lengths(self.text_field)
        if self.mode == "pretrain":
            return pretrain_examples(docs, src, self.max_seq_len)
        tgt = store.lengths(self.target_field)
        return summarize_examples(docs, src, tgt, self.max_seq_len, store.ids)

    def _add_split(self, name: str, store: ConceptStore, docs: np.ndarray) -> None:
        ex = self._examples(store, docs)
        if store.dim != self.dim:
            raise ValueError(
                f"{store.data_dir} has dim {store.dim}, {self.data_dir} has {self.dim}"
            )
        self._splits[name] = (store, ex)
        self.stats[name] = ex.stats
        rank_zero_info(f"lcm data [{name}] {store.data_dir}: {ex.stats}")

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        if self.normalize:
            path = location(self.normalizer_path or join(self.data_dir, "normalizer.pt"))
            if not exists(path):
                raise FileNotFoundError(f"normalizer {path} not found (normalize=True)")
            with open_binary(path) as fh:
                self.normalizer = RobustNormalizer.load(io.BytesIO(fh.read()))
            if self.normalizer.center.shape[0] != self.dim:
                raise ValueError(f"normalizer {path} has dim {self.normalizer.center.shape[0]}")
        if self.streaming:
            self._setup_streaming()
            return
        main = ConceptStore(self.data_dir, self.fields, self.cache_dir, self.verify_shards)
        if self.val_dir is not None:
            train_docs = np.arange(len(main), dtype=np.int64)
            self._add_folder("val", self.val_dir)
        else:
            train_docs, val_docs = split_documents(main.ids, self.val_fraction, self.split_seed)
            self._add_split("val", main, val_docs)
        self._add_split("train", main, train_docs)
        self._add_test_and_predict()

    def _add_folder(self, name: str, folder: str) -> None:
        """Split ``name`` is every document of its own prepared ``folder``."""
        store = ConceptStore(folder, self.fields, self.cache_dir, self.verify_shards)
        self._add_split(name, store, np.arange(len(store), dtype=np.int64))

    def _add_test_and_predict(self) -> None:
        """``test`` and ``predict`` read their own folders when given, else the ``val`` split."""
        for name, folder in (("test", self.test_dir), ("predict", self.predict_dir)):
            if folder is None:
                self._splits[name] = self._splits["val"]
            else:
                self._add_folder(name, folder)

    def _setup_streaming(self) -> None:
        files = _shard_files(self.data_dir, self._stream_level)  # size and rows: O(shards)
        if self.val_dir is not None:
            self._add_folder("val", self.val_dir)
        else:  # val_fraction == 0 (checked in __init__)
            self._splits["val"] = (None, pretrain_examples(np.zeros(0, np.int64), np.zeros(0), 2))
            self.stats["val"] = self._splits["val"][1].stats
        self._add_test_and_predict()
        rows = sum(int(r.get("rows") or 0) for r in recorded_shards(self.data_dir).values())
        self.stats["train"] = {"documents": rows, "shards": len(files)}
        rank_zero_info(
            f"lcm data [train] {self.data_dir}: streaming {rows} documents from {len(files)} "
            f"shards (shuffle buffer {self.shuffle_buffer} documents)"
        )
        from lcm.train.stream import StreamingBatches

        rank, world = self._rank_world()
        self._stream = StreamingBatches(
            files,
            self.fields,
            self.mode,
            self.dim,
            self.max_seq_len,
            self.normalizer if self.normalize else None,
            self.max_concepts_per_batch,
            self.max_batch_size,
            seed=self.seed,
            block_docs=self.shuffle_buffer,
            read_ahead=self.read_ahead,
            rank=rank,
            world_size=world,
        )
        self._splits["train"] = (None, None)

    def describe(self, split: str, examples: list[int]) -> list[dict[str, Any]]:
        """Where examples of ``split`` come from: the document ``id`` and the ``start`` position
        of the example's first concept in the document's main field."""
        if not self._splits:
            self.setup()
        store, ex = self._splits[split]
        return [{"id": store.ids[int(ex.doc[i])], "start": int(ex.src_start[i])} for i in examples]

    def sample_concepts(self, split: str, n: int, seed: int = 0) -> torch.Tensor:
        """Up to ``n`` concepts of ``split``'s documents (every field, the normalizer applied),
        (N, D) float32: whole documents drawn in a seeded random order until ``n`` concepts are
        reached (e.g. to fit Quant-LCM's quantizer, or to measure its error on held-out data)."""
        return self._first_concepts(self._documents(split, seed), n)

    def sample_code_targets(
        self, split: str, n: int, residual: str = "none", seed: int = 0
    ) -> torch.Tensor:
        """(N, D) what a Quant-LCM with ``residual`` predicts the codes of, so what its quantizer
        is fitted (``train``) or measured (``val``) on: concepts (:meth:`sample_concepts`), or
        with a residual the residuals of whole training windows (:meth:`sample_residuals`)."""
        if residual == "none":
            return self.sample_concepts(split, n, seed=seed)
        return self.sample_residuals(split, n, residual, seed=seed)

    def sample_residuals(self, split: str, n: int, residual: str, seed: int = 0) -> torch.Tensor:
        """Up to ``n`` residuals ``x_{t+1} - base_t`` of ``split``'s documents (the normalizer
        applied, then :func:`~lcm.objectives.base.residual_base`), (N, D) float32: what a
        residual Quant-LCM predicts the codes of (its quantizer is fitted on them). The
        documents come in :meth:`sample_concepts`' order, each cut into the training windows
        (:func:`window_starts` with ``max_seq_len``), since a context-mean base depends on where
        its window starts; every concept but a window's first gives one residual.

        Args:
            split: ``train``, ``val``, ...
            n: Most residuals.
            residual: ``last`` or ``context_mean`` (the summarization bases are refused, as is
                ``summarize`` mode: its windows hold a source and a target).
            seed: Document order.
        """
        from lcm.objectives.base import check_residual, residual_base

        if check_residual(residual) not in ("last", "context_mean"):
            raise ValueError(f"residuals over {residual!r}: only 'last' and 'context_mean'")
        if self.mode != "pretrain":
            raise ValueError(f"residuals are sampled from pretrain windows, not {self.mode!r} mode")
        parts, total = [], 0
        for store, doc in self._documents(split, seed):
            x = torch.from_numpy(store.vectors(self.text_field, doc).astype(np.float32))
            if self.normalize and self.normalizer is not None:
                x = self.normalizer.normalize(x)
            for start in window_starts(len(x), self.max_seq_len):
                z = x[start : start + self.max_seq_len][None]  # (1, T, D)
                if z.shape[1] < 2:
                    continue
                base = residual_base(z, None, residual)  # (1, T, D) base of concept t+1
                parts.append(z[0, 1:] - base[0, :-1])
                total += z.shape[1] - 1
            if total >= n:
                break
        return torch.cat(parts)[:n] if parts else torch.zeros(0, self.dim)

    def _documents(self, split: str, seed: int) -> Iterator[tuple[Any, int]]:
        """``(store, doc)`` pairs of ``split``'s whole documents in a seeded random order."""
        if not self._splits:
            self.setup()
        if split == "train" and self._stream is not None:
            yield from self._stream_documents(seed)
            return
        store, ex = self._splits[split]
        for doc in np.random.default_rng(seed).permutation(np.unique(ex.doc)):
            yield store, int(doc)

    def _first_concepts(self, documents: Iterator[tuple[Any, int]], n: int) -> torch.Tensor:
        """The first ``n`` concepts (every field of each document, in order) of ``documents``,
        ``(store, doc)`` pairs read lazily, with the normalizer applied."""
        parts, total = [], 0
        for store, doc in documents:
            for name in self.fields:
                vecs = store.vectors(name, doc)
                parts.append(vecs)
                total += len(vecs)
            if total >= n:
                break
        if not parts:
            return torch.zeros(0, self.dim)
        x = torch.from_numpy(np.concatenate(parts)[:n].astype(np.float32))
        if self.normalize and self.normalizer is not None:
            x = self.normalizer.normalize(x)
        return x

    def document_ids(self, split: str, index: torch.Tensor | np.ndarray) -> list[str]:
        """Ids of the documents behind example indices ``index`` of ``split`` (a batch's
        ``index``; padding rows, -1, are skipped), in batch order without repeats."""
        if not self._splits:
            self.setup()
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index).reshape(-1)
        if split == "train" and self._stream is not None:  # the last batches streamed
            recent = self._stream.recent_ids
            return list(
                dict.fromkeys(recent.get(int(i), f"<example {int(i)}>") for i in idx if i >= 0)
            )
        store, ex = self._splits[split]
        return list(dict.fromkeys(store.ids[int(ex.doc[i])] for i in idx if i >= 0))

    def _stream_documents(self, seed: int) -> Iterator[tuple[Any, int]]:
        """``(block, doc)`` pairs of the streamed training data: whole documents of the shards
        in a seeded order, shuffled inside blocks (the same documents on every rank, e.g. to fit
        one quantizer)."""
        from lcm.train.stream import BlockStore

        stream = self._stream
        ds = stream.stream(0, files=stream.file_order(seed + 7919), by_rank=False)
        rng = np.random.default_rng(seed)
        for table in ds.iter(batch_size=stream.block_docs):
            stream.check(table)
            block = BlockStore(table, self.fields, self.dim)
            for doc in rng.permutation(len(block)):
                yield block, int(doc)

    def set_normalizer(self, normalizer: RobustNormalizer) -> None:
        """Use ``normalizer`` (e.g. the one a fine-tuned model was pretrained with)."""
        self.normalizer = RobustNormalizer(normalizer.center.shape[0])
        self.normalizer.load_state_dict({k: v.cpu() for k, v in normalizer.state_dict().items()})

    # ------------------------------------------------------------------------- loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def batches(self, split: str, shuffle: bool = False) -> ConceptBatches:
        """The :class:`ConceptBatches` of ``split`` (``train``, ``val``, ``test``, ``predict``)."""
        if not self._splits:
            self.setup()
        if split == "train" and self._stream is not None:
            raise ValueError(
                "the training split is streamed (streaming=True): iterate train_dataloader()"
            )
        store, ex = self._splits[split]
        rank, world = self._rank_world()
        return ConceptBatches(
            store,
            ex,
            self.text_field,
            self.target_field,
            self.normalizer if self.normalize else None,
            self.max_concepts_per_batch,
            self.max_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world,
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Keep the batch id a Python int: reading it back from a GPU tensor would sync each step.
        if isinstance(batch, dict) and isinstance(batch.get("batch_id"), torch.Tensor):
            batch = {**batch, "batch_id": int(batch["batch_id"])}
        return batch

    def _epoch(self) -> int:
        trainer = self.trainer
        return trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0

    def train_dataloader(self) -> ConceptLoader | DataLoader:
        if self.streaming:
            from lcm.train.stream import StreamingLoader

            if not self._splits:
                self.setup()
            self._stream.normalizer = self.normalizer if self.normalize else None
            self._stream.rank, self._stream.world_size = self._rank_world()
            return StreamingLoader(self._stream, self._epoch, self.pin_memory)
        return ConceptLoader(
            self.batches("train", shuffle=True), self._epoch, self.num_workers, self.pin_memory
        )

    def _eval_loader(self, split: str) -> DataLoader | list:
        if not self._splits:
            self.setup()
        if len(self._splits[split][1]) == 0:
            return []
        batches = self.batches(split)
        return DataLoader(
            batches, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._eval_loader("predict")
