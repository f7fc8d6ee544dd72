"""``lcm prepare``: documents -> sentences -> concepts -> parquet shards (+ normalizer).

Everything streams: memory holds the documents of at most three shards at a time (the one being
encoded, the one Lightning's loader has read ahead, and the one being cut), whatever the size of
the corpus; only the id hashes of the duplicate check (16 bytes per document) grow with it.

Shards are planned in one of two ways (``planning`` in the manifest):

- ``rows`` (every input is parquet, JSON lines, or text read by line): a cheap planning pass
  (:mod:`lcm.data.ranges`: parquet footers, a byte scan of lines; saved as ``plan.npz``) fixes
  shard ``k`` as the input rows ``[k * shard_size, (k + 1) * shard_size)``, valid or not, with
  the byte offset where each range starts. Each rank then reads, validates and splits only the
  rows of its own pending shards (``k % world == rank``, not done), and a resume only the
  unfinished shards' rows. Parquet is read with pyarrow one row group at a time (only the
  columns used), JSON lines with the standard ``json`` module and text by line, seeking to the
  range's byte offset (no Arrow copy of the inputs). A shard may hold fewer than
  ``shard_size`` documents (its rejected rows).
- ``documents`` (any csv, text read by document or paragraph or with lone CR line breaks,
  or single-JSON-array input, whose rows cannot be located without parsing: csv fields may
  span lines): the full pass. Every rank reads the whole input with ``datasets`` and cuts the
  same shards of ``shard_size`` valid documents, keeping only its own; a resume reads
  everything again.

Steps:
1. read the input rows one at a time; validate; split fields into sentences
   (:mod:`lcm.data.documents`). A file the engine cannot read is re-read row by row, so only its
   bad rows are lost. Bad rows are recorded with file, row, line and reason: in
   ``rejects/read/shard-XXXXX.jsonl`` per shard (rows planning, merged in input order into
   ``rejects/input.jsonl`` at the end) or in ``rejects/input.jsonl`` as they are met (full pass).
   Duplicate ids are found with 64-bit hashes of the ids (:class:`~lcm.data.documents.SeenIds`,
   16 bytes per document). The full pass sees every id in order. Row planning sees one shard at
   a time: a duplicate inside a shard is rejected while reading, and every shard records its
   documents' id hashes in ``stats/``; at the end rank 0 spreads all hashes by value over
   on-disk buckets of at most ~4M documents, sorts one bucket at a time (bounded memory),
   confirms each repeat on the ids themselves, and drops every occurrence after the first
   (input order) by rewriting its shard without that row (every count in its stats loses the
   row's share) (written aside, stats with the new checksum, then
   renamed; a kill in between makes the shard fail verification, so it is rebuilt from its
   rows and checked again). The dropped row is a ``duplicate_id`` reject naming its file, row
   and the first occurrence; no document is lost or kept twice.
2. the valid documents are cut into shards (:class:`ShardStream`). A shard already on disk
   counts as done only if it matches its record: by default the same size, modification time
   and a readable parquet footer with the recorded rows (any difference: its SHA-256 is
   compared), with ``verify="full"`` the same SHA-256 in every case; otherwise (truncated,
   changed) it is rebuilt.
3. encode under Lightning ``Trainer.predict``, which consumes the stream: each rank encodes its
   own pending shards only, so ``--devices``/``--num_nodes`` spread the encoding over GPUs and
   machines. A shard is written to a temporary file, recorded in ``stats/``, then renamed, so a
   shard file on disk is always complete. Documents whose vectors are NaN/inf, or (with
   ``max_unknown_ratio``) with a sentence of mostly unknown tokens, go to
   ``rejects/shard-XXXXX.jsonl``.
4. rank 0 drops duplicate ids across shards (rows planning), fits the robust normalizer on a
   seeded sample of sentence vectors, reading only the shards that hold a sampled sentence, one
   at a time (a NaN there is an error naming shard and document), records every shard in
   ``manifest.json`` and writes ``summary.json``.

Progress (rows or documents per second, ETA) of reading, encoding and the normalizer goes to a
bar in a terminal, or to plain lines at least every 30 s in a log file (:mod:`lcm.progress`).

A rerun with the same settings skips finished shards, so a run killed at any point (even
``kill -9``) resumes to the same shards: a shard is always encoded whole, in one call per field
and language, and the optional persistent embedding cache (``cache.sqlite``, local disk only)
returns the very vectors the killed run computed.

Output folder::

    manifest.json            settings (with ``planning``; a rerun must match them), the inputs
                             (``input_files``: per file its bytes, mtime_ns, SHA-256 and the
                             SHA-256 of 16 sampled 64 KiB blocks; ``input_sha256`` sums them
                             up) and, once finished, {"shards": {name: {rows, bytes, sha256}}}.
                             The SHA-256 of each input is computed once, when a new folder is
                             planned (by the byte scan of row planning itself); a resume checks
                             each input by size, mtime and the sampled blocks, reads a file
                             whole only if its mtime moved, and refuses a changed input naming
                             it (an edit that keeps size and mtime is caught only in a sampled
                             block). A finished folder of manifest version 1 is upgraded in
                             place (``planning: documents``, nothing encoded) when its inputs
                             (one full read) and settings are unchanged; any other older
                             folder is refused with what to do
    plan.npz                 rows planning: rows per file, offset and line of each range start;
                             made again if it is lost or damaged, and then refused if an
                             input's SHA-256 or a finished shard's input rows (its stats'
                             rows_read and segments) differ from the new plan
    shards/shard-00000.parquet
    stats/shard-00000.json   per-shard counts (documents, sentences, truncations, unknown-token
                             sentences, rejects) and the shard's rows, bytes, sha256 and
                             mtime_ns (when it was written); rows
                             planning adds rows_read, segments, id_hashes and
                             duplicate_rejects
    rejects/input.jsonl      rows rejected while reading (and dropped duplicates)
    rejects/read/shard-00000.jsonl  rows planning: the shard's rows rejected while reading
    rejects/shard-00000.jsonl  documents rejected for non-finite vectors or unknown tokens
    normalizer.pt            RobustNormalizer statistics (load with weights_only=True)
    normalizer.json          what normalizer.pt was fitted on (the shards' SHA-256, sample size,
                             seed) and its own SHA-256: a rerun over unchanged shards reuses it
    summary.json             totals (rows_read == documents + rejected)
    .hf_cache/               full pass, while it runs: the Arrow copy of the inputs that
                             ``datasets`` reads (kept for a resume, removed when it finishes)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from encoders.base import SentenceCodec
from encoders.cache import EmbeddingCache
from lcm.data.documents import (
    Document,
    InputFormat,
    Reject,
    SeenIds,
    count_rows,
    expand_inputs,
    fingerprint,
    iter_documents,
    iter_rows,
)
from lcm.data.ranges import (
    RowPlan,
    file_sha256,
    locatable,
    plan_rows,
    release_row_group_cache,
)
from lcm.data.shards import ShardError, check_shard, file_record, table_problems
from lcm.normalizer import RobustNormalizer
from lcm.progress import Progress
from lcm.splitting import SentenceSplitter

log = logging.getLogger(__name__)

#: 2: shards are ranges of input rows (``planning: rows``) or, for inputs whose rows cannot be
#: located cheaply, of valid documents (``planning: documents``); 1 cut every input by documents
MANIFEST_VERSION = 2
#: How a rerun checks its finished shards: ``quick`` trusts a shard whose size, modification time
#: and parquet footer match its record; ``full`` also compares every shard's SHA-256
VerifyLevel = Literal["quick", "full"]
#: A sentence counts as "mostly unknown" when more than this share of its tokens are unknown to
#: the codec's tokenizer (e.g. emoji and many CJK characters for the English MiniLM codec).
MOSTLY_UNKNOWN = 0.5


def _atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


@dataclass
class ShardPlan:
    index: int
    docs: list[Document]
    # row planning only: the shard's input rows and the rows rejected while reading them
    rows: int | None = None
    read_rejects: list[dict] | None = None
    #: row planning only: the shard's file pieces (:func:`_segments`), recorded in its stats
    segments: list[list[int]] | None = None


@dataclass
class ShardStream(torch.utils.data.IterableDataset):
    """Reads, validates and splits the inputs in one pass and cuts the valid documents into
    shards of ``shard_size`` as they arrive; yields the :class:`ShardPlan` of each shard that is
    this rank's (``index % world == rank``) and not in ``done``. The documents of other shards
    are dropped as soon as they are counted, so at most one shard's documents are held here.

    Every rank computes the same shards (same input, same order). After a full pass, the
    counters below hold the totals; ``write_rejects`` (rank 0) appends the rejected rows to
    ``rejects/input.jsonl`` as they are met (through a temporary file, renamed at the end).
    """

    files: list[Path]
    input_format: str
    txt_sample_by: str
    out: Path
    splitter: SentenceSplitter
    text_field: str
    target_fields: list[str]
    id_field: str | None
    lang_field: str | None
    default_lang: str
    langs: Sequence[str]
    end_of_text: str | None
    shard_size: int
    done: set[int]
    rank: int = 0
    world: int = 1
    write_rejects: bool = True
    read_bar: Progress | None = None
    encode_bar: Progress | None = None
    # totals of the last full pass
    rows_read: int = 0
    documents: int = 0
    shards: int = 0
    mine_documents: int = 0
    input_rejects: Counter = field(default_factory=Counter)
    finished: bool = False
    #: shards as row ranges (:mod:`lcm.data.ranges`): this rank reads only its pending shards'
    #: rows; None: the full pass below (csv, plain text, a JSON array file)
    plan: RowPlan | None = None

    def __post_init__(self) -> None:
        super().__init__()

    def __iter__(self) -> Iterator[ShardPlan]:
        if self.plan is not None:
            yield from self._iter_ranges()
            return
        self.rows_read = self.documents = self.shards = self.mine_documents = 0
        self.input_rejects = Counter()
        self.finished = False
        rows = iter_rows(
            self.files, self.input_format, self.txt_sample_by, self.out / ".inputs",
            str(self.out / ".hf_cache"),
        )  # fmt: skip
        items = iter_documents(
            rows, self.splitter, self.text_field, self.target_fields, self.id_field,
            self.lang_field, self.default_lang, self.langs, SeenIds(),
        )  # fmt: skip
        rejects_path = self.out / "rejects" / "input.jsonl"
        tmp = rejects_path.with_name(f".{rejects_path.name}.{os.getpid()}.tmp")
        sink = open(tmp, "w") if self.write_rejects else None  # noqa: SIM115 - closed below
        try:
            current: list[Document] = []
            count, keep = 0, self._keep(0)
            for item in items:
                self.rows_read += 1
                if self.read_bar is not None:
                    self.read_bar.update()
                if isinstance(item, Reject):
                    self.input_rejects[item.kind] += 1
                    if sink is not None:
                        sink.write(json.dumps(item.as_dict()) + "\n")
                    continue
                self.documents += 1
                count += 1
                if keep:
                    if self.end_of_text:
                        for sentences in item.sentences.values():
                            sentences.append(self.end_of_text)
                    current.append(item)
                if count == self.shard_size:
                    plan, current = (ShardPlan(self.shards, current) if keep else None), []
                    self.shards += 1
                    count, keep = 0, self._keep(self.shards)
                    if plan is not None:
                        self.mine_documents += len(plan.docs)
                        yield plan
                        del plan  # the consumer holds it while it is encoded, not us
            if count:
                self.shards += 1
                if keep:
                    self.mine_documents += len(current)
                    plan, current = ShardPlan(self.shards - 1, current), []
                    self._end_of_input(sink, tmp, rejects_path)
                    sink = None
                    yield plan
                    return
            self._end_of_input(sink, tmp, rejects_path)
            sink = None
        finally:
            if sink is not None:  # an error or an abandoned pass: no partial input.jsonl
                sink.close()
                tmp.unlink(missing_ok=True)

    def pending(self) -> list[int]:
        """Row planning: the shards this rank reads and encodes in this run."""
        return [k for k in range(self.plan.n_shards) if self._keep(k)]

    def _iter_ranges(self) -> Iterator[ShardPlan]:
        """Row planning: read, validate and split only the rows of this rank's pending shards,
        one shard at a time; duplicate ids are found within the shard here, across shards at the
        end (:func:`_drop_duplicates_across_shards`)."""
        self.rows_read = self.documents = self.mine_documents = 0
        self.input_rejects = Counter()
        self.finished = False
        self.shards = self.plan.n_shards
        columns = [self.text_field, *self.target_fields, self.id_field, self.lang_field]
        columns = [c for c in columns if c]
        try:
            for k in self.pending():
                rows = self.plan.iter_rows(k, columns)
                items = iter_documents(
                    rows, self.splitter, self.text_field, self.target_fields, self.id_field,
                    self.lang_field, self.default_lang, self.langs, SeenIds(),
                )  # fmt: skip
                docs: list[Document] = []
                rejects: list[dict] = []
                n = 0
                for item in items:
                    n += 1
                    if self.read_bar is not None:
                        self.read_bar.update()
                    if isinstance(item, Reject):
                        self.input_rejects[item.kind] += 1
                        rejects.append(item.as_dict())
                        continue
                    if self.end_of_text:
                        for sentences in item.sentences.values():
                            sentences.append(self.end_of_text)
                    docs.append(item)
                if n != self.plan.shard_rows(k):
                    raise RuntimeError(
                        f"shard {k}: read {n} rows, planned {self.plan.shard_rows(k)} "
                        "(did an input change while it was read?)"
                    )
                self.rows_read += n
                self.documents += len(docs)
                self.mine_documents += len(docs)
                plan = ShardPlan(k, docs, n, rejects, _segments(self.plan, k))
                del docs, rejects
                yield plan
                del plan  # the consumer holds it while it is encoded, not us
            self._end_of_input()
        finally:
            release_row_group_cache()

    def _keep(self, index: int) -> bool:
        return index % self.world == self.rank and index not in self.done

    def _end_of_input(self, sink=None, tmp: Path | None = None, rejects_path: Path | None = None):
        """The whole input (or, with row planning, every pending shard) is read: publish the full
        pass's rejects file (``sink``, written to ``tmp``) and fix the progress totals. Both the
        full pass and the row-range pass end here."""
        if sink is not None:
            sink.close()
            os.replace(tmp, rejects_path)
        self.finished = True
        if self.read_bar is not None:
            self.read_bar.set_total(self.rows_read)
            self.read_bar.close()
        if self.encode_bar is not None:
            self.encode_bar.set_total(self.mine_documents)


class ShardEncoder(L.LightningModule):
    """Encodes one shard of documents per predict step with a frozen codec."""

    def __init__(
        self,
        codec: SentenceCodec,
        plans: ShardStream,
        fields: Sequence[str],
    ) -> None:
        super().__init__()
        self.codec = codec
        self.plans = plans
        self.fields = list(fields)

    def on_predict_start(self) -> None:
        self.codec.to(self.device)  # each rank encodes on its own device

    def predict_dataloader(self):
        # Ranks take disjoint shards (no padding, unlike DistributedSampler, so no shard is
        # encoded twice); the stream is read in this process, one shard ahead of the encoder.
        self.plans.rank, self.plans.world = self.trainer.global_rank, self.trainer.world_size
        return torch.utils.data.DataLoader(self.plans, batch_size=None, collate_fn=_same)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # a plan is text; the codec moves its own tensors

    def predict_step(self, plan: ShardPlan, batch_idx: int = 0) -> dict:
        start = time.perf_counter()
        truncated = 0
        vectors: dict[tuple[int, str], torch.Tensor] = {}
        # (doc, field) -> share of unknown tokens per sentence; None when the codec cannot tell
        unknown: dict[tuple[int, str], list[float]] | None = {}
        # One encode call per (field, language) over the whole shard: the codec sorts all its
        # sentences by length, so batches are full and padding is small.
        for name in self.fields:
            by_lang: dict[str, list[int]] = {}
            for d, doc in enumerate(plan.docs):
                by_lang.setdefault(doc.lang, []).append(d)
            for lang, members in by_lang.items():
                flat = [s for d in members for s in plan.docs[d].sentences[name]]
                truncated += self.codec.count_truncated(flat, lang)
                ratios = self.codec.unknown_ratio(flat, lang)
                if ratios is None:
                    unknown = None
                emb = self.codec.encode(flat, lang)  # (n_sentences, dim)
                offset = 0
                for d in members:
                    n = len(plan.docs[d].sentences[name])
                    vectors[(d, name)] = emb[offset : offset + n]
                    if unknown is not None:
                        unknown[(d, name)] = list(ratios[offset : offset + n])
                    offset += n
        return {
            "plan": plan,
            "vectors": vectors,
            "unknown": unknown,
            "truncated": truncated,
            "seconds": time.perf_counter() - start,
        }


class ShardWriter(BasePredictionWriter):
    """Writes each encoded shard to parquet (atomically) with its stats and rejects."""

    def __init__(
        self,
        output_dir: Path,
        text_field: str,
        target_fields: Sequence[str],
        dtype: str,
        max_unknown_ratio: float | None = None,
        progress: Progress | None = None,
    ):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.text_field = text_field
        self.target_fields = list(target_fields)
        self.dtype = np.float16 if dtype == "float16" else np.float32
        self.max_unknown_ratio = max_unknown_ratio
        self.progress = progress

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        plan: ShardPlan = prediction["plan"]
        vectors = prediction["vectors"]
        unknown = prediction["unknown"]
        n_unknown = None if unknown is None else 0
        fields = [self.text_field, *self.target_fields]
        columns: dict[str, list] = {"id": [], "lang": [], "source": []}
        for name in fields:
            columns[f"{name}_sentences"] = []
            columns[f"{name}_embeddings"] = []
        for name in self.target_fields:
            columns[name] = []
        rejects: list[dict] = []
        n_sentences = 0
        for d, doc in enumerate(plan.docs):
            bad = None
            if unknown is not None:
                for name in fields:
                    n_unknown += sum(r > MOSTLY_UNKNOWN for r in unknown[(d, name)])
            for name in fields:
                emb = vectors[(d, name)]
                if emb.shape[0] != len(doc.sentences[name]):  # never silently misalign
                    n = len(doc.sentences[name])
                    bad = ("length_mismatch", f"{name}: {n} sentences but {emb.shape[0]} vectors")
                elif not torch.isfinite(emb).all():
                    row = int((~torch.isfinite(emb)).any(dim=1).nonzero()[0])
                    bad = ("non_finite", f"NaN/inf embedding in field {name!r} sentence {row}")
                elif unknown is not None and self.max_unknown_ratio is not None:
                    over = [
                        (i, r)
                        for i, r in enumerate(unknown[(d, name)])
                        if r > self.max_unknown_ratio
                    ]
                    if over:
                        i, r = over[0]
                        bad = (
                            "unknown_tokens",
                            f"field {name!r} sentence {i} ({doc.lang}) is {r:.0%} unknown to "
                            f"the codec (share of characters in unknown tokens; max_unknown_ratio"
                            f"={self.max_unknown_ratio}; {len(over)} such sentences)",
                        )
                if bad:
                    break
            if bad:
                file, _, row = doc.source.rpartition(":")
                rejects.append(Reject(file, int(row), *bad, doc.id).as_dict())
                continue
            columns["id"].append(doc.id)
            columns["lang"].append(doc.lang)
            columns["source"].append(doc.source)
            for name in fields:
                columns[f"{name}_sentences"].append(doc.sentences[name])
                columns[f"{name}_embeddings"].append(vectors[(d, name)].numpy().astype(self.dtype))
            for name in self.target_fields:
                columns[name].append(doc.raw[name])
            n_sentences += len(doc.sentences[self.text_field])

        dim = pl_module.codec.dim
        value_type = pa.float16() if self.dtype == np.float16 else pa.float32()
        arrays = {}
        for key, values in columns.items():
            if key.endswith("_embeddings"):
                # list<fixed_size_list<float, dim>>: one row per document, one vector per sentence
                flat = (
                    np.concatenate(values).reshape(-1) if values else np.zeros(0, dtype=self.dtype)
                )
                vecs = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=value_type), dim)
                offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
                arrays[key] = pa.ListArray.from_arrays(pa.array(offsets), vecs)
            else:
                arrays[key] = pa.array(values)
        table = pa.table(arrays)

        name = shard_name(plan.index)
        stats = {
            "shard": plan.index,
            "documents": len(columns["id"]),
            "sentences": n_sentences,
            "truncated": prediction["truncated"],
            "unknown_sentences": n_unknown,
            "rejected": len(rejects),
            "encode_seconds": round(prediction["seconds"], 3),
        }
        out = self.output_dir
        if plan.rows is not None:  # row planning: the shard also accounts for its input rows
            stats["rows_read"] = plan.rows
            stats["segments"] = plan.segments  # checked against a new plan (_check_replan)
            stats["input_rejected"] = len(plan.read_rejects)
            # the ids' 64-bit hashes, in row order: rank 0 looks for duplicates across shards
            stats["id_hashes"] = [SeenIds._hash(i) for i in columns["id"]]
            stats["duplicate_rejects"] = []
            _atomic_write(
                out / "rejects" / "read" / f"{name}.jsonl",
                "".join(json.dumps(r) + "\n" for r in plan.read_rejects),
            )
        _atomic_write(
            out / "rejects" / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rejects)
        )
        tmp = out / "shards" / f".{name}.{os.getpid()}.tmp"
        pq.write_table(table, tmp)
        # rows, bytes, sha256 (what readers verify) and mtime_ns (what lets a rerun trust the
        # shard without reading it); os.replace keeps the file's modification time
        stats.update(shard_record(tmp))
        _atomic_write(out / "stats" / f"{name}.json", json.dumps(stats))
        os.replace(tmp, out / "shards" / f"{name}.parquet")  # the shard exists => it is complete
        if self.progress is not None:
            self.progress.update(len(plan.docs))


def _same(plan: ShardPlan) -> ShardPlan:
    return plan


def default_codec() -> SentenceCodec:
    """The default codec of ``lcm prepare``: the real SONAR when its weights load (checked now,
    in a second or two offline); otherwise an error that names the offline codec's flag."""
    from encoders.sonar import SonarCodec, SonarWeightsUnavailable

    try:
        return SonarCodec().load()
    except SonarWeightsUnavailable as ex:
        reason = str(ex).strip().splitlines()[0]
        raise SonarWeightsUnavailable(
            f"the default codec is SONAR, and its weights are not available ({reason}). "
            "Without them, use the offline codec: --codec encoders.minilm.MiniLMCodec "
            "(English; decodes by retrieval). To use SONAR offline, see the README "
            "(download the weights elsewhere and point an asset card at them)"
        ) from ex


def prepare(
    inputs: str | list[str],
    output_dir: str,
    codec: SentenceCodec | None = None,
    text_field: str = "text",
    target_fields: list[str] | None = None,
    id_field: str | None = "id",
    lang_field: str | None = "lang",
    default_lang: str = "eng_Latn",
    input_format: InputFormat = "auto",
    txt_sample_by: Literal["document", "paragraph", "line"] = "document",
    max_sentence_chars: int = 256,
    end_of_text: str | None = None,
    shard_size: int = 256,
    embedding_dtype: Literal["float16", "float32"] = "float32",
    normalizer_sample: int = 100_000,
    seed: int = 0,
    max_unknown_ratio: float | None = None,
    cache: bool = True,
    verify: VerifyLevel = "quick",
    accelerator: str = "cpu",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: bool = True,
) -> dict:
    """Turn documents into concept shards and fit the normalizer.

    Args:
        inputs: a document file or glob pattern, or a list of them (jsonl/json, parquet, csv,
            txt).
        output_dir: folder for shards, rejects, normalizer and summary; rerun to resume.
        codec: the frozen sentence codec. Default: the real SONAR
            (``encoders.sonar.SonarCodec``) when its weights load, else an immediate error that
            names the offline codec (``--codec encoders.minilm.MiniLMCodec``).
        text_field: the document text column.
        target_fields: extra text columns to split and encode too (e.g. ``[summary]``).
        id_field: document id column (missing ids become ``<file>:<row>``); ids must be unique.
        lang_field: FLORES-200 language column; files without it use ``default_lang``.
        default_lang: language of documents that have no language column.
        input_format: file format, or ``auto`` to go by suffix.
        txt_sample_by: for .txt inputs, one document per file, paragraph or line.
        max_sentence_chars: long-sentence cap; longer sentences are re-split (0 disables).
        end_of_text: a sentence appended to every field (the paper uses "End of text."), so
            models learn to emit it and generation can stop on it; None appends nothing.
        shard_size: input rows per shard (parquet and JSON lines: valid or not, so a shard may
            hold fewer documents) or valid documents per shard (csv, text: the full pass); the
            unit of resumption and of work per rank; memory holds at most about three shards'
            documents, whatever the corpus size.
        embedding_dtype: storage dtype of the vectors.
        normalizer_sample: most sentence vectors the normalizer is fitted on (seeded sample).
        seed: seed of the normalizer sample.
        max_unknown_ratio: reject documents with a sentence whose share of characters in tokens
            unknown to the codec (e.g. emoji for MiniLM) is above this, in [0, 1]; None only
            counts sentences that are mostly (> 50%) unknown (``unknown_token_sentences`` in
            the summary).
        cache: keep a persistent embedding cache in ``output_dir/cache.sqlite``, so a rerun
            reads back the vectors a killed run computed instead of encoding them again. It
            grows by a float32 vector per distinct sentence (70-80% of the shards' size): large
            runs should turn it off (``--cache false``; a deterministic codec still resumes to
            identical shards, as each shard is encoded whole, in the same batches). Local disk
            only: the ranks of one machine share the file safely (SQLite write-ahead log), but
            not over a network filesystem or across nodes.
        verify: how a rerun checks the shards a previous run finished. ``quick``: a shard whose
            size and modification time equal those recorded when it was written, and whose
            parquet footer reads with the recorded row count, is trusted without reading it
            (a truncated shard has no footer, a changed one a new size or time: both are
            hashed and rebuilt if their SHA-256 differs). ``full``: the SHA-256 of every
            finished shard is computed and compared, which is the only way to find an edit
            that keeps both the size and the modification time (e.g. restored with
            ``touch -d``); it reads every shard byte.
        accelerator: Lightning accelerator for encoding (``cpu``, ``gpu``, ``auto``).
        devices: devices per node for encoding.
        num_nodes: machines for encoding.
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        progress: show progress (documents/s and ETA) for reading, encoding and the
            normalizer: a bar in a terminal, plain lines at least every 30 s in a log file
            (``LCM_PROGRESS_INTERVAL`` sets the seconds).

    Returns:
        The summary that is also written to ``output_dir/summary.json``.
    """
    t0 = time.perf_counter()
    target_fields = list(target_fields or [])
    if max_unknown_ratio is not None and not 0.0 <= max_unknown_ratio <= 1.0:
        raise ValueError(f"max_unknown_ratio must be in [0, 1], got {max_unknown_ratio}")
    if verify not in ("quick", "full"):
        raise ValueError(f"verify must be 'quick' or 'full', got {verify!r}")
    out = Path(output_dir).resolve()
    # Everything that can fail at once fails before the output folder exists, so a corrected
    # rerun never meets a half-made folder "prepared with other settings".
    files = expand_inputs([inputs] if isinstance(inputs, str) else inputs)
    if codec is None:
        codec = default_codec()
    # rows are located cheaply in parquet and JSON lines: shards are ranges of input rows and
    # each rank reads only its own; otherwise every rank reads everything (see the docstring)
    planning = "documents"
    if all(locatable(f, input_format, txt_sample_by) for f in files):
        planning = "rows"
    for sub in ("shards", "stats", "rejects", "rejects/read"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    settings = {
        "version": MANIFEST_VERSION,
        "inputs": [str(f) for f in files],
        "codec": codec.codec_id,
        "text_field": text_field,
        "target_fields": target_fields,
        "id_field": id_field,
        "lang_field": lang_field,
        "default_lang": default_lang,
        "input_format": input_format,
        "txt_sample_by": txt_sample_by,
        "max_sentence_chars": max_sentence_chars,
        "end_of_text": end_of_text,
        "shard_size": shard_size,
        "embedding_dtype": embedding_dtype,
        "normalizer_sample": normalizer_sample,
        "seed": seed,
        "max_unknown_ratio": max_unknown_ratio,
        "planning": planning,
    }
    manifest = out / "manifest.json"
    row_plan = None
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("version") != MANIFEST_VERSION:
            old = _upgrade_v1(out, old, settings, files)
        if old.get("upgraded_from") == 1:  # its shards are cut by valid documents: keep that
            planning = settings["planning"] = "documents"
            settings["upgraded_from"] = 1
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        if changed:
            raise ValueError(
                f"{out} was prepared with other settings ({', '.join(changed)} differ); "
                "use a new output_dir or delete this one"
            )
        # the inputs are those the finished shards were made from: a cheap check per file
        settings["input_files"] = _check_inputs(out, old, files)
        settings["input_sha256"] = inputs_fingerprint(settings["input_files"])
        if settings["input_files"] != old.get("input_files"):  # new mtimes, same content
            old.update(input_files=settings["input_files"], input_sha256=settings["input_sha256"])
            _atomic_write(manifest, json.dumps(old, indent=2))
        if planning == "rows":
            row_plan = _row_plan(out, files, input_format, shard_size, settings["input_files"])
    else:
        # a new folder: the one full read of the inputs, which the row planning's byte scan
        # makes anyway (parquet: one extra read); a resume then checks each file cheaply
        stats_before = [os.stat(f) for f in files]  # before reading: an edit during it shows
        if planning == "rows":
            row_plan = plan_rows(files, input_format, shard_size)
            row_plan.save(out / "plan.npz")
            digests = row_plan.sha256
        else:
            digests = [file_sha256(f) for f in files]
        settings["input_files"] = [
            input_record(f, st, d) for f, st, d in zip(files, stats_before, digests)
        ]
        settings["input_sha256"] = inputs_fingerprint(settings["input_files"])
        _atomic_write(manifest, json.dumps(settings, indent=2))
    show = progress and rank_zero_only.rank == 0

    # 1+2) shards already on disk that verify against their record are done: the same size,
    # modification time and parquet footer (``verify="full"``: the same SHA-256); a truncated
    # or changed shard is rebuilt, never trusted because it exists; every rank
    # checks them all before any rank writes, so all ranks skip the same shards
    _remove_stale_tmp(out / "shards")
    _remove_stale_tmp(out / "rejects")
    done, rebuilt = set(), {}
    for path in sorted((out / "shards").glob("shard-*.parquet")):
        index = int(path.stem.split("-")[1])
        problem = _shard_problem(out, index, row_plan is not None, verify)
        if problem is None:
            done.add(index)
        else:
            rebuilt[shard_name(index)] = problem
    for name, problem in rebuilt.items():
        log.warning("rebuilding %s: %s", name, problem)

    # 3) read, split and encode in one stream under Lightning predict, with this output's cache
    # (the caller's codec is restored afterwards: a cache of another folder would make resumed
    # shards differ)
    own_cache = cache and codec.cache is None
    if own_cache:
        codec.cache = EmbeddingCache(out / "cache.sqlite")
    writer = ShardWriter(out, text_field, target_fields, embedding_dtype, max_unknown_ratio)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,  # lcm.progress reports documents/s instead
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[writer],
    )
    # Shards are written by ShardWriter from the prediction itself; batch indices are not needed.
    warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    splitter = SentenceSplitter(max_sentence_chars)
    world = trainer.world_size
    if row_plan is None:
        rows_estimate = count_rows(files, input_format)
        # the encode total is an estimate (rows not yet known to be valid) until reading ends
        estimate = max(rows_estimate - len(done) * shard_size, 0) // world
    else:  # exactly the rows of this rank's pending shards
        mine = [
            k for k in range(row_plan.n_shards)
            if k % world == trainer.global_rank and k not in done
        ]  # fmt: skip
        rows_estimate = estimate = sum(row_plan.shard_rows(k) for k in mine)
    stream = ShardStream(
        files, input_format, txt_sample_by, out, splitter, text_field, target_fields,
        id_field, lang_field, default_lang, codec.langs, end_of_text, shard_size, done,
        rank=trainer.global_rank, world=world, write_rejects=trainer.global_rank == 0,
        read_bar=Progress("read+split", rows_estimate, "rows", show),
        encode_bar=Progress("encode", estimate, "documents", show), plan=row_plan,
    )  # fmt: skip
    writer.progress = stream.encode_bar
    try:
        module = ShardEncoder(codec, stream, [text_field, *target_fields])
        trainer.predict(module, return_predictions=False)
        trainer.strategy.barrier()
    finally:
        stream.read_bar.close()
        stream.encode_bar.close()
        if own_cache:
            codec.cache.close()
            codec.cache = None
    if not trainer.is_global_zero:
        return {}
    if not stream.finished:
        raise RuntimeError(f"{out}: the input was not read to its end; rerun to resume")
    log.info(
        "%d shards, %d were already done; this run read %d rows (%d documents)",
        stream.shards, len(done & set(range(stream.shards))), stream.rows_read, stream.documents,
    )  # fmt: skip

    # 4) duplicate ids across shards (row planning), normalizer and summary (rank 0)
    if row_plan is None:
        input_rejects, rows_read = stream.input_rejects, stream.rows_read
    else:
        _missing_shards(out, stream.shards)
        fields = [text_field, *target_fields]
        _drop_duplicates_across_shards(out, stream.shards, codec, fields, row_plan.n_rows)
        input_rejects, rows_read = _merge_input_rejects(out, stream.shards, files)
    summary = _finalize(
        out, stream.shards, input_rejects, splitter, text_field, normalizer_sample, seed, show
    )  # fmt: skip
    summary["rows_read"] = rows_read
    summary["planning"] = planning
    # rows this process read in this run: with row planning only its pending shards' rows
    summary["rows_read_this_run"] = stream.rows_read
    summary["rebuilt_shards"] = sorted(rebuilt)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    settings["shards"] = {}
    for i in range(stream.shards):
        s = json.loads((out / "stats" / f"{shard_name(i)}.json").read_text())
        settings["shards"][f"{shard_name(i)}.parquet"] = {
            k: s[k] for k in ("rows", "bytes", "sha256")
        }
    _atomic_write(manifest, json.dumps(settings, indent=2))
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2))
    # The Arrow copy of the inputs that `datasets` made for reading serves only a resume: a
    # finished folder does not keep a second copy of the corpus.
    shutil.rmtree(out / ".hf_cache", ignore_errors=True)
    return summary


#: the cheap check of an input on resume reads this many blocks of this many bytes
_SAMPLE_BLOCKS, _SAMPLE_BYTES = 16, 1 << 16


def _sampled_sha256(path: Path, size: int) -> str:
    """SHA-256 of ``_SAMPLE_BLOCKS`` blocks spread evenly over ``path`` (first and last
    included): 1 MiB read, whatever the file's size."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for k in range(_SAMPLE_BLOCKS):
            fh.seek(max(size - _SAMPLE_BYTES, 0) * k // (_SAMPLE_BLOCKS - 1))
            h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()


def input_record(path: Path, st: os.stat_result, sha256: str) -> dict:
    """What the manifest records of one input (``input_files``): its size and modification
    time as ``st`` (taken before it was read), its SHA-256 and that of its sampled blocks."""
    return {
        "file": str(path),
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha256": sha256,
        "sampled_sha256": _sampled_sha256(path, st.st_size),
    }


def inputs_fingerprint(records: Sequence[dict]) -> str:
    """One content hash of all inputs (``input_sha256``), from their per-file checksums."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r['file']}\0{r['sha256']}\0".encode())
    return h.hexdigest()


def _check_inputs(out: Path, old: dict, files: list[Path]) -> list[dict]:
    """Refuse a resume over an input that changed since the folder was prepared, naming the
    file; return the inputs' records (new modification times where the content is unchanged).

    The check is cheap where nothing changed: per file a ``stat`` and 1 MiB of sampled blocks.
    A file whose modification time moved (touched, copied, edited) is read whole once and
    compared with its recorded SHA-256; an edit that keeps both the size and the modification
    time is found only if it touches a sampled block. A folder from before per-file records
    (one hash of all inputs) is checked once against that hash, in one full read."""
    if "input_files" not in old:
        if fingerprint(files) != old.get("input_sha256"):
            raise ValueError(
                f"{out}: the inputs changed since this folder was prepared (their SHA-256 "
                "differs); restore them, or use a new output_dir (or delete this one)"
            )
        return [input_record(f, os.stat(f), file_sha256(f)) for f in files]
    records = []
    for rec in old["input_files"]:
        path = Path(rec["file"])
        why = None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st, why = None, "it is missing"
        if why is None and st.st_size != rec["bytes"]:
            why = f"its size is {st.st_size} bytes, was {rec['bytes']}"
        elif why is None and st.st_mtime_ns == rec["mtime_ns"]:
            if _sampled_sha256(path, st.st_size) != rec["sampled_sha256"]:
                why = "its content differs although its modification time does not"
        elif why is None:
            if file_sha256(path) != rec["sha256"]:
                why = "its content differs (SHA-256); it was modified"
            rec = {**rec, "mtime_ns": st.st_mtime_ns}
        if why is not None:
            raise ValueError(
                f"{out}: input {path} changed since this folder was prepared ({why}); its "
                "finished shards hold the old content. Restore the file, or prepare the new "
                "content into a new output_dir (or delete this one)"
            )
        records.append(rec)
    return records


def _upgrade_v1(out: Path, old: dict, settings: dict, files: list[Path]) -> dict:
    """Upgrade the manifest of a finished folder of manifest version 1 in place, without
    encoding anything, when it was prepared from these very inputs (their SHA-256, one full
    read) with the same settings; refuse any other folder of an older version, saying what to
    do. Version 1 cut every input by valid documents, which is this version's full pass
    (``planning: documents``), so the folder keeps that planning (``upgraded_from: 1``); the
    run that follows verifies every shard against its stats and rewrites the summary."""
    version = old.get("version")
    redo = (
        f"delete {out} (or choose a new output_dir) and rerun the same command to prepare it again"
    )
    if version != 1:
        raise ValueError(f"{out}: manifest version {version} is unknown to this `lcm prepare`")
    if "shards" not in old:
        raise ValueError(
            f"{out} was prepared by an older `lcm prepare` (manifest version 1) that did not "
            f"finish: only a finished folder can be upgraded; {redo}"
        )
    changed = sorted(k for k in settings if k != "planning" and old.get(k, None) != settings[k])
    changed = [k for k in changed if k != "version"]
    if changed:
        raise ValueError(
            f"{out} was prepared by an older `lcm prepare` (manifest version 1) with other "
            f"settings ({', '.join(changed)} differ); rerun with its settings to upgrade it in "
            f"place, or {redo}"
        )
    if fingerprint(files) != old.get("input_sha256"):
        raise ValueError(
            f"{out} was prepared by an older `lcm prepare` (manifest version 1) from inputs "
            f"that have changed since (their SHA-256 differs); restore them to upgrade it in "
            f"place, or {redo}"
        )
    records = [input_record(f, os.stat(f), file_sha256(f)) for f in files]
    new = {
        **old,
        **settings,
        "version": MANIFEST_VERSION,
        "planning": "documents",
        "upgraded_from": 1,
        "input_files": records,
        "input_sha256": inputs_fingerprint(records),
        "shards": old["shards"],
    }
    _atomic_write(out / "manifest.json", json.dumps(new, indent=2))
    log.warning("%s: upgraded from manifest version 1 (planning: documents)", out)
    return new


def _remove_stale_tmp(folder: Path) -> None:
    """Delete temporary files of processes that no longer run (a killed run's leftovers)."""
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.split(".")[-2]
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, ValueError):
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # a live process of another user


def shard_record(path: Path) -> dict:
    """What a shard's stats record of its file when it is written: ``rows`` (parquet footer),
    ``bytes``, ``sha256`` and ``mtime_ns`` (a rerun trusts a shard whose size, modification
    time and footer match this record without reading it)."""
    record = file_record(path)
    record["mtime_ns"] = os.stat(path).st_mtime_ns
    return record


def _shard_problem(
    out: Path, index: int, rows: bool = False, verify: VerifyLevel = "quick"
) -> str | None:
    """Why shard ``index`` must be (re)built, or None if it verifies against its stats
    (``rows``: row planning, whose shards also account for their input rows).

    ``verify="quick"``: a shard whose size and modification time equal its record and whose
    parquet footer reads with the recorded row count is trusted without reading it (a
    truncated file has no footer); any difference, or ``verify="full"``, computes its SHA-256.
    A shard whose content is unchanged but whose record lacks ``mtime_ns`` (an older folder) or
    whose modification time moved (copied, touched) is checked in full once and its record
    updated, so the next rerun is cheap again."""
    import pyarrow.parquet as pq

    name = shard_name(index)
    path = out / "shards" / f"{name}.parquet"
    if not path.exists():
        return "missing"
    stats_path = out / "stats" / f"{name}.json"
    if not stats_path.exists():
        return "no stats file"
    stats = json.loads(stats_path.read_text())
    if rows and ("rows_read" not in stats or "id_hashes" not in stats):
        return "its stats lack the input rows and id hashes of row planning"
    if rows and not (out / "rejects" / "read" / f"{name}.jsonl").exists():
        return "its rejected input rows (rejects/read/) are missing"
    if not stats.get("sha256"):  # a folder from before checksums: decode and check the values
        check = check_shard(path, {}, "full")
        if check.problems:
            return "; ".join(check.problems)
        stats.update(shard_record(path))
        _atomic_write(stats_path, json.dumps(stats))
        return None
    try:
        st = os.stat(path)
        footer_rows = pq.read_metadata(path).num_rows
    except Exception as ex:  # noqa: BLE001 - an unreadable footer (truncated file)
        return f"not a readable parquet file ({type(ex).__name__}: {ex})"
    same = (st.st_size, st.st_mtime_ns, footer_rows) == (
        stats.get("bytes"), stats.get("mtime_ns"), stats.get("rows")
    )  # fmt: skip
    if same and verify == "quick":
        return None
    try:
        now = file_record(path)
    except Exception as ex:  # noqa: BLE001 - an unreadable footer (truncated file)
        return f"not a readable parquet file ({type(ex).__name__}: {ex})"
    wrong = [k for k in ("rows", "bytes", "sha256") if stats.get(k) != now[k]]
    if wrong:
        return f"{', '.join(wrong)} differ from the recorded ones (truncated or changed)"
    if stats.get("mtime_ns") != st.st_mtime_ns:  # same content: record the new time
        stats["mtime_ns"] = st.st_mtime_ns
        _atomic_write(stats_path, json.dumps(stats))
    return None


def _row_plan(
    out: Path, files: list[Path], input_format: str, shard_size: int, records: list[dict]
) -> RowPlan:
    """The row plan of ``files``: ``plan.npz`` of this folder when it was made for them (the
    manifest has already checked their records), else a new byte scan, saved there once it is
    checked against what the finished shards were made from (:func:`_check_replan`)."""
    path = out / "plan.npz"
    why = "it is missing"
    if path.exists():
        try:
            plan = RowPlan.load(path)
        except Exception as ex:  # noqa: BLE001 - a damaged plan is made again, then checked
            why = f"it cannot be read ({type(ex).__name__}: {ex})"
        else:
            if plan.files == list(files) and plan.shard_size == shard_size:
                return plan
            why = "it was made for other inputs or another shard size"
        log.warning("planning again: %s: %s", path, why)
    plan = plan_rows(files, input_format, shard_size)
    _check_replan(out, plan, records, why)
    plan.save(path)
    return plan


def _check_replan(out: Path, plan: RowPlan, records: list[dict], why: str) -> None:
    """Refuse a new plan that the finished shards do not match: an input whose SHA-256 (from
    the new plan's full byte scan) differs from the one recorded when the folder was planned
    (an edit the cheap resume check missed), or a finished shard whose recorded input rows
    (count and file pieces) are not the new plan's. Either error names the file."""
    target = out / "plan.npz"
    for f, digest, rec in zip(plan.files, plan.sha256 or [], records):
        if digest != rec.get("sha256"):
            raise ValueError(
                f"{target} was planned again ({why}), and input {f} no longer has the SHA-256 "
                "recorded when this folder was prepared: the finished shards hold its old "
                "content. Restore the file, or prepare the new content into a new output_dir "
                "(or delete this one)"
            )
    for stats_path in sorted((out / "stats").glob("shard-*.json")):
        stats = json.loads(stats_path.read_text())
        k = int(stats_path.stem.split("-")[1])
        shard = out / "shards" / f"{shard_name(k)}.parquet"
        if "rows_read" not in stats or not shard.exists():
            continue  # not a finished shard of row planning: it is rebuilt anyway
        if k >= plan.n_shards:
            wrong = f"the new plan has {plan.n_shards} shards"
        elif plan.shard_rows(k) != stats["rows_read"]:
            wrong = f"it holds {stats['rows_read']} input rows, the new plan {plan.shard_rows(k)}"
        elif "segments" in stats and stats["segments"] != _segments(plan, k):
            wrong = (
                f"its input rows were {stats['segments']} (file, first row, end row, byte "
                f"offset, line), the new plan's are {_segments(plan, k)}"
            )
        else:
            continue
        raise ValueError(
            f"{target} was planned again ({why}), and the finished shard {shard} no longer "
            f"matches it ({wrong}). Its inputs or the planning changed since it was written: "
            "restore them, or use a new output_dir (or delete this one)"
        )


def _segments(plan: RowPlan, k: int) -> list[list[int]]:
    """The file pieces of shard ``k`` (:meth:`RowPlan.segments`) as a shard's stats record
    them."""
    return [[int(v) for v in seg] for seg in plan.segments(k)]


def _missing_shards(out: Path, n_shards: int) -> None:
    names = [shard_name(i) for i in range(n_shards)]
    missing = [n for n in names if not (out / "shards" / f"{n}.parquet").exists()]
    if missing:
        raise RuntimeError(f"shards {missing[:5]}... were not written; rerun to resume")


#: most id hashes one bucket of the cross-shard duplicate check holds in memory (16 bytes each,
#: 24 while it is sorted): the check's memory is bounded by this, not by the corpus
DUPLICATE_BUCKET_ROWS = 1 << 22


def _drop_duplicates_across_shards(
    out: Path, n_shards: int, codec: SentenceCodec, fields: Sequence[str], n_rows: int
) -> int:
    """Row planning reads each shard's rows alone, so an id may repeat in two shards. Find such
    ids from the hashes every shard recorded in ``stats/``, confirm them on the ids themselves (a
    hash collision keeps both), and drop every occurrence after the first (in input order) from
    its shard: the shard is rewritten without those rows, and each dropped row is recorded in
    the shard's stats (``duplicate_rejects``, listed in ``rejects/input.jsonl``). The rewrite is
    safe to kill: the new shard is written aside, its stats (new checksum) replace the old, then
    the shard is renamed into place; a shard that does not match its stats is rebuilt from its
    rows on the next run and checked again. Every count of the shard's stats loses the dropped
    rows' share (documents, sentences, truncated and mostly-unknown sentences, counted again by
    ``codec`` on the dropped rows' sentences of every field in ``fields``).

    Memory is bounded whatever the corpus size: the (hash, shard and row) pairs are spread by
    hash over on-disk buckets of at most about :data:`DUPLICATE_BUCKET_ROWS` documents
    (``n_rows``, the input rows, bounds the documents), each sorted alone (equal hashes meet
    in one bucket); only the rows whose hash repeats are kept, and their ids are read one shard
    at a time. Returns the number of rows dropped."""
    import pyarrow.parquet as pq

    n_buckets = max(1, -(-n_rows // DUPLICATE_BUCKET_ROWS))
    tmp = out / ".duplicates"
    shutil.rmtree(tmp, ignore_errors=True)  # a killed run's buckets
    tmp.mkdir()
    try:
        sinks = [open(tmp / f"{b}.bin", "wb") for b in range(n_buckets)]  # noqa: SIM115
        try:
            for i in range(n_shards):
                st = json.loads((out / "stats" / f"{shard_name(i)}.json").read_text())
                h = np.array(st["id_hashes"], dtype=np.uint64)
                pair = np.empty((len(h), 2), dtype=np.uint64)  # (hash, shard << 32 | row)
                pair[:, 0] = h
                pair[:, 1] = (np.uint64(i) << np.uint64(32)) | np.arange(len(h), dtype=np.uint64)
                bucket = h % np.uint64(n_buckets)
                for b in np.unique(bucket).tolist():
                    pair[bucket == b].tofile(sinks[b])  # in input order within a bucket
        finally:
            for sink in sinks:
                sink.close()
        groups: list[list[int]] = []  # the (shard << 32 | row) of each hash that occurs again
        for b in range(n_buckets):
            groups += _repeated_hashes(_load_bucket(tmp / f"{b}.bin"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not groups:
        return 0
    # the ids and sources of the rows whose hash repeats only, one shard at a time
    wanted: dict[int, list[int]] = {}
    for members in groups:
        for code in members:
            wanted.setdefault(code >> 32, []).append(code & 0xFFFFFFFF)
    found: dict[int, tuple[str, str]] = {}
    for shard, rows in sorted(wanted.items()):
        path = out / "shards" / f"{shard_name(shard)}.parquet"
        table = pq.read_table(path, columns=["id", "source"]).take(sorted(set(rows))).to_pydict()
        for r, doc_id, source in zip(sorted(set(rows)), table["id"], table["source"]):
            found[(shard << 32) | r] = (doc_id, source)
        del table
    del wanted

    drops: dict[int, dict[int, dict]] = {}
    for members in groups:
        first: dict[str, str] = {}  # id -> source of its first occurrence
        for code in members:
            doc_id, source = found[code]
            if doc_id not in first:
                first[doc_id] = source
                continue
            file, _, r = source.rpartition(":")
            f0, _, r0 = first[doc_id].rpartition(":")
            message = f"duplicate id {doc_id!r} (first at {Path(f0).name}:{r0})"
            reject = Reject(file, int(r), "duplicate_id", message, doc_id).as_dict()
            drops.setdefault(code >> 32, {})[code & 0xFFFFFFFF] = reject
    for shard, rows in sorted(drops.items()):
        _rewrite_without(out, shard, rows, codec, fields)
    return sum(len(r) for r in drops.values())


def _load_bucket(path: Path) -> np.ndarray:
    """The (hash, code) pairs of one bucket, shape ``(n, 2)``."""
    return np.fromfile(path, dtype=np.uint64).reshape(-1, 2)


def _repeated_hashes(pairs: np.ndarray) -> list[list[int]]:
    """The codes (``shard << 32 | row``) of each hash in ``pairs`` that occurs more than once,
    in input order."""
    if not len(pairs):
        return []
    order = np.argsort(pairs[:, 0], kind="stable")  # stable: equal hashes stay in input order
    key, at = pairs[order, 0], pairs[order, 1]
    del order
    same = np.flatnonzero(key[1:] == key[:-1])  # a later occurrence of the previous hash
    groups: list[list[int]] = []
    for j in same.tolist():
        if not groups or groups[-1][-1] != int(at[j]):
            groups.append([int(at[j])])
        groups[-1].append(int(at[j + 1]))
    return groups


def _rewrite_without(
    out: Path, index: int, drop: dict[int, dict], codec: SentenceCodec, fields: Sequence[str]
) -> None:
    """Rewrite shard ``index`` without the rows in ``drop`` (row -> its reject), taking the
    dropped rows out of every count in its stats (as :class:`ShardEncoder` counted them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = shard_name(index)
    path = out / "shards" / f"{name}.parquet"
    stats_path = out / "stats" / f"{name}.json"
    stats = json.loads(stats_path.read_text())
    table = pq.read_table(path)
    keep = np.ones(table.num_rows, dtype=bool)
    keep[list(drop)] = False
    lost = (
        table.filter(pa.array(~keep))
        .select(["lang", *(f"{column}_sentences" for column in fields)])
        .to_pylist()
    )
    table = table.filter(pa.array(keep))
    tmp = out / "shards" / f".{name}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    stats["documents"] = table.num_rows
    stats["sentences"] -= sum(len(row[f"{fields[0]}_sentences"]) for row in lost)
    for row in lost:
        for column in fields:
            sentences = row[f"{column}_sentences"]
            stats["truncated"] -= codec.count_truncated(sentences, row["lang"])
            ratios = codec.unknown_ratio(sentences, row["lang"])
            if ratios is not None and stats.get("unknown_sentences") is not None:
                stats["unknown_sentences"] -= sum(r > MOSTLY_UNKNOWN for r in ratios)
    stats["id_hashes"] = [h for h, k in zip(stats["id_hashes"], keep) if k]
    stats["duplicate_rejects"] = stats["duplicate_rejects"] + [drop[r] for r in sorted(drop)]
    stats.update(shard_record(tmp))
    _atomic_write(stats_path, json.dumps(stats))
    os.replace(tmp, path)
    log.warning("%s: dropped %d rows whose ids occur in earlier shards", name, len(drop))


def _merge_input_rejects(out: Path, n_shards: int, inputs: list[Path]) -> tuple[Counter, int]:
    """Row planning: ``rejects/input.jsonl`` from each shard's rejected input rows and dropped
    duplicates, in input order (one shard at a time); returns the reject counts by kind and the
    input rows of all shards."""
    reasons: Counter = Counter()
    rows_read = 0
    order = {str(f): n for n, f in enumerate(inputs)}
    path = out / "rejects" / "input.jsonl"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as sink:
        for i in range(n_shards):
            name = shard_name(i)
            st = json.loads((out / "stats" / f"{name}.json").read_text())
            rows_read += st["rows_read"]
            with open(out / "rejects" / "read" / f"{name}.jsonl") as fh:
                rejects = [json.loads(line) for line in fh]
            rejects += st["duplicate_rejects"]
            for r in sorted(rejects, key=lambda r: (order.get(r["file"], -1), r["row"])):
                reasons[r["kind"]] += 1
                sink.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
    return reasons, rows_read


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reusable_normalizer(out: Path, shards_sha256: str) -> int | None:
    """The sentence count ``normalizer.pt`` was fitted on when ``normalizer.json`` says it was
    fitted on exactly these shards, sample size and seed and the file is unchanged since; else
    ``None`` (refit)."""
    try:
        record = json.loads((out / "normalizer.json").read_text())
        ok = record["shards_sha256"] == shards_sha256
        ok = ok and record["normalizer_sha256"] == _file_sha256(out / "normalizer.pt")
        return int(record["fitted_on"]) if ok else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finalize(
    out: Path,
    n_shards: int,
    input_rejects: Counter,
    splitter: SentenceSplitter,
    text_field: str,
    normalizer_sample: int,
    seed: int,
    show: bool = False,
) -> dict:
    """Fit the normalizer and total the per-shard stats and rejects (read one file at a time)."""
    import pyarrow.parquet as pq

    names = [shard_name(i) for i in range(n_shards)]
    missing = [n for n in names if not (out / "shards" / f"{n}.parquet").exists()]
    if missing:
        raise RuntimeError(f"shards {missing[:5]}... were not written; rerun to resume")
    # per shard: (documents, sentences); stats summed as they are read
    counts: list[tuple[int, int]] = []
    totals = Counter()
    unknown_known = True
    reasons = Counter(input_rejects)
    fitted_on = hashlib.sha256(f"{text_field}\0{normalizer_sample}\0{seed}\0".encode())
    for n in names:
        st = json.loads((out / "stats" / f"{n}.json").read_text())
        counts.append((st["documents"], st["sentences"]))
        fitted_on.update(f"{n}\0{st.get('sha256')}\0".encode())
        for key in ("documents", "sentences", "truncated", "encode_seconds"):
            totals[key] += st[key]
        if st.get("unknown_sentences") is None:
            unknown_known = False
        else:
            totals["unknown_sentences"] += st["unknown_sentences"]
        with open(out / "rejects" / f"{n}.jsonl") as fh:
            for line in fh:
                reasons[json.loads(line)["kind"]] += 1

    n_sentences = totals["sentences"]
    normalizer_fitted_on = 0
    record_path = out / "normalizer.json"
    reused = _reusable_normalizer(out, fitted_on.hexdigest()) if n_sentences >= 2 else None
    if reused is not None:
        # the same shards, sample and seed give the same normalizer: a rerun over a finished
        # (or resumed but unchanged) folder does not read the shards again to refit it
        normalizer_fitted_on = reused
        log.info("%s: normalizer.pt was fitted on these shards; reused", out)
    elif n_sentences >= 2:
        # Seeded sample over the global sentence index: the same shards give the same normalizer.
        # Only shards holding a sampled sentence are read, one at a time, and only the sampled
        # rows are kept (in one preallocated array).
        rng = np.random.default_rng(seed)
        k = min(normalizer_sample, n_sentences)
        chosen = np.sort(rng.choice(n_sentences, size=k, replace=False))
        sample: np.ndarray | None = None
        filled, offset = 0, 0
        with Progress("normalizer", totals["documents"], "documents", show) as bar:
            for n, (n_docs, n_sent) in zip(names, counts):
                lo, hi = np.searchsorted(chosen, [offset, offset + n_sent])
                if hi > lo:
                    path = out / "shards" / f"{n}.parquet"
                    table = pq.read_table(path, columns=[f"{text_field}_embeddings"])
                    # a NaN here would make the fit fail without saying where: name it (the ids
                    # are read only then)
                    problems = table_problems(table, path.name, [text_field], alignment=False)
                    if problems:
                        columns = ["id", f"{text_field}_embeddings"]
                        table = pq.read_table(path, columns=columns)
                        problems = table_problems(table, path.name, [text_field], alignment=False)
                        raise ShardError(
                            f"{out}: cannot fit the normalizer: "
                            + "; ".join(problems)
                            + f". Delete {path} and rerun `lcm prepare` to rebuild it"
                        )
                    col = table.column(f"{text_field}_embeddings")
                    flat = col.combine_chunks().flatten().flatten().to_numpy(zero_copy_only=False)
                    mat = flat.reshape(n_sent, -1)
                    if sample is None:
                        sample = np.empty((k, mat.shape[1]), dtype=np.float32)
                    sample[filled : filled + hi - lo] = mat[chosen[lo:hi] - offset]
                    filled += hi - lo
                    del table, col, flat, mat
                offset += n_sent
                bar.update(n_docs)
            record_path.unlink(missing_ok=True)  # never a record beside another fit's file
            RobustNormalizer.fit(torch.from_numpy(sample)).save(out / "normalizer.pt")
        normalizer_fitted_on = int(sample.shape[0])
        record = {
            "shards_sha256": fitted_on.hexdigest(),
            "fitted_on": normalizer_fitted_on,
            "normalizer_sha256": _file_sha256(out / "normalizer.pt"),
        }
        _atomic_write(record_path, json.dumps(record, indent=2))

    return {
        "documents": totals["documents"],
        "sentences": n_sentences,
        "shards": n_shards,
        "rejected": sum(reasons.values()),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "truncated_sentences": totals["truncated"],
        # sentences (every field, end-of-text included) whose tokens are mostly unknown to the
        # codec; None when the codec cannot tell
        "unknown_token_sentences": totals["unknown_sentences"] if unknown_known else None,
        "long_sentences_resplit": splitter.stats.long_resplit,
        "normalizer_fitted_on": normalizer_fitted_on,
        "encode_seconds": round(totals["encode_seconds"], 2),
    }
