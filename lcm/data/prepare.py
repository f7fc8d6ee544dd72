"""``lcm prepare``: documents -> sentences -> concepts -> parquet shards (+ normalizer).

Steps:
1. read every input row with ``datasets``; validate; split fields into sentences
   (:mod:`lcm.data.documents`). A file the engine cannot read is re-read row by row, so only its
   bad rows are lost. Bad rows go to ``rejects/input.jsonl`` with file, row, line and reason.
2. cut the valid documents, in input order, into shards of ``shard_size`` documents. A shard
   already on disk counts as done only if it matches its recorded rows, bytes and SHA-256;
   otherwise (truncated, changed) it is rebuilt.
3. encode the shards under Lightning ``Trainer.predict``: each rank takes every
   ``world_size``-th pending shard, so ``--devices``/``--num_nodes`` spread the work over GPUs and
   machines. A shard is written to a temporary file, recorded in ``stats/``, then renamed, so a
   shard file on disk is always complete. Documents whose vectors are NaN/inf, or (with
   ``max_unknown_ratio``) with a sentence of mostly unknown tokens, go to
   ``rejects/shard-XXXXX.jsonl``.
4. rank 0 fits the robust normalizer on a seeded sample of sentence vectors (a NaN there is an
   error naming shard and document), records every shard in ``manifest.json`` and writes
   ``summary.json``.

Progress (rows or documents per second, ETA) of reading, encoding and the normalizer goes to a
bar in a terminal, or to plain lines at least every 30 s in a log file (:mod:`lcm.progress`).

A rerun with the same settings skips finished shards, so a run killed at any point (even
``kill -9``) resumes to the same shards: the persistent embedding cache (``cache.sqlite``) returns
the very vectors the killed run computed.

Output folder::

    manifest.json            settings, input fingerprint (a rerun must match them) and, once
                             finished, {"shards": {name: {rows, bytes, sha256}}}
    shards/shard-00000.parquet
    stats/shard-00000.json   per-shard counts (documents, sentences, truncations, unknown-token
                             sentences, rejects) and the shard's rows, bytes and sha256
    rejects/input.jsonl      rows rejected while reading
    rejects/shard-00000.jsonl  documents rejected for non-finite vectors or unknown tokens
    normalizer.pt            RobustNormalizer statistics (load with weights_only=True)
    summary.json             totals (rows_read == documents + rejected)
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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
    count_rows,
    expand_inputs,
    fingerprint,
    iter_rows,
    to_documents,
)
from lcm.data.shards import ShardError, check_shard, file_record, table_problems
from lcm.normalizer import RobustNormalizer
from lcm.progress import Progress
from lcm.splitting import SentenceSplitter

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
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


class ShardEncoder(L.LightningModule):
    """Encodes one shard of documents per predict step with a frozen codec."""

    def __init__(
        self,
        codec: SentenceCodec,
        plans: list[ShardPlan],
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
        # encoded twice).
        rank, world = self.trainer.global_rank, self.trainer.world_size
        mine = self.plans[rank::world]
        return torch.utils.data.DataLoader(mine, batch_size=None, collate_fn=lambda p: p)

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
                            f"field {name!r} sentence {i} is {r:.0%} tokens unknown to the codec "
                            f"(max_unknown_ratio={self.max_unknown_ratio}; {len(over)} such "
                            "sentences)",
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
        _atomic_write(
            out / "rejects" / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rejects)
        )
        tmp = out / "shards" / f".{name}.{os.getpid()}.tmp"
        pq.write_table(table, tmp)
        stats.update(file_record(tmp))  # rows, bytes, sha256: what a rerun and readers verify
        _atomic_write(out / "stats" / f"{name}.json", json.dumps(stats))
        os.replace(tmp, out / "shards" / f"{name}.parquet")  # the shard exists => it is complete
        if self.progress is not None:
            self.progress.update(len(plan.docs))


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
        shard_size: documents per shard (the unit of resumption and of work per rank).
        embedding_dtype: storage dtype of the vectors.
        normalizer_sample: most sentence vectors the normalizer is fitted on (seeded sample).
        seed: seed of the normalizer sample.
        max_unknown_ratio: reject documents with a sentence whose share of tokens unknown to the
            codec (e.g. emoji for MiniLM) is above this, in [0, 1]; None only counts sentences
            that are mostly (> 50%) unknown (``unknown_token_sentences`` in the summary).
        cache: keep a persistent embedding cache in ``output_dir/cache.sqlite``.
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
    out = Path(output_dir).resolve()
    # Everything that can fail at once fails before the output folder exists, so a corrected
    # rerun never meets a half-made folder "prepared with other settings".
    files = expand_inputs([inputs] if isinstance(inputs, str) else inputs)
    if codec is None:
        codec = default_codec()
    for sub in ("shards", "stats", "rejects"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    settings = {
        "version": MANIFEST_VERSION,
        "inputs": [str(f) for f in files],
        "input_sha256": fingerprint(files),
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
    }
    manifest = out / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        if changed:
            raise ValueError(
                f"{out} was prepared with other settings ({', '.join(changed)} differ); "
                "use a new output_dir or delete this one"
            )
    else:
        _atomic_write(manifest, json.dumps(settings, indent=2))
    show = progress and rank_zero_only.rank == 0

    # 1) read, validate, split (deterministic: every rank computes the same plan)
    splitter = SentenceSplitter(max_sentence_chars)
    rows = iter_rows(files, input_format, txt_sample_by, out / ".inputs", str(out / ".hf_cache"))
    with Progress("read+split", count_rows(files, input_format), "rows", show) as bar:
        docs, rejects = to_documents(
            _counted(rows, bar),
            splitter,
            text_field,
            target_fields,
            id_field,
            lang_field,
            default_lang,
            codec.langs,
        )
    rows_read = len(docs) + len(rejects)
    if end_of_text:
        for doc in docs:
            for sentences in doc.sentences.values():
                sentences.append(end_of_text)
    _atomic_write(
        out / "rejects" / "input.jsonl", "".join(json.dumps(r.as_dict()) + "\n" for r in rejects)
    )

    # 2) shard plan; skip shards already on disk that verify against their recorded size and
    # checksum (a truncated or changed shard is rebuilt, never trusted because it exists)
    plans = [
        ShardPlan(i, docs[start : start + shard_size])
        for i, start in enumerate(range(0, len(docs), shard_size))
    ]
    _remove_stale_tmp(out / "shards")
    done, rebuilt = set(), {}
    for p in plans:
        problem = _shard_problem(out, p.index)
        if problem is None:
            done.add(p.index)
        elif problem != "missing":
            rebuilt[shard_name(p.index)] = problem
    for name, problem in rebuilt.items():
        log.warning("rebuilding %s: %s", name, problem)
    pending = [p for p in plans if p.index not in done]
    log.info("%d documents in %d shards, %d already done", len(docs), len(plans), len(done))

    # 3) encode under Lightning predict, with this output's cache (the caller's codec is
    # restored afterwards: a cache of another folder would make resumed shards differ)
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
    mine = sum(len(p.docs) for p in pending[trainer.global_rank :: trainer.world_size])
    writer.progress = Progress("encode", mine, "documents", show and bool(pending))
    try:
        if pending:
            module = ShardEncoder(codec, pending, [text_field, *target_fields])
            trainer.predict(module, return_predictions=False)
            trainer.strategy.barrier()
    finally:
        writer.progress.close()
        if own_cache:
            codec.cache.close()
            codec.cache = None
    if not trainer.is_global_zero:
        return {}

    # 4) normalizer and summary (rank 0)
    summary = _finalize(out, plans, rejects, splitter, text_field, normalizer_sample, seed, show)
    summary["rows_read"] = rows_read
    summary["rebuilt_shards"] = sorted(rebuilt)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    stats = [json.loads((out / "stats" / f"{shard_name(p.index)}.json").read_text()) for p in plans]
    settings["shards"] = {
        f"{shard_name(p.index)}.parquet": {k: s[k] for k in ("rows", "bytes", "sha256")}
        for p, s in zip(plans, stats)
    }
    _atomic_write(manifest, json.dumps(settings, indent=2))
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _counted(rows, bar: Progress):
    for row in rows:
        yield row
        bar.update()


def _remove_stale_tmp(folder: Path) -> None:
    """Delete temporary shard files of processes that no longer run (a killed run's leftovers)."""
    for tmp in folder.glob(".shard-*.tmp"):
        pid = tmp.name.split(".")[-2]
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, ValueError):
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # a live process of another user


def _shard_problem(out: Path, index: int) -> str | None:
    """Why shard ``index`` must be (re)built, or None if it verifies against its stats."""
    name = shard_name(index)
    path = out / "shards" / f"{name}.parquet"
    if not path.exists():
        return "missing"
    stats_path = out / "stats" / f"{name}.json"
    if not stats_path.exists():
        return "no stats file"
    stats = json.loads(stats_path.read_text())
    if not stats.get("sha256"):  # a folder from before checksums: decode and check the values
        check = check_shard(path, {}, "full")
        if check.problems:
            return "; ".join(check.problems)
        stats.update(file_record(path))
        _atomic_write(stats_path, json.dumps(stats))
        return None
    try:
        now = file_record(path)
    except Exception as ex:  # noqa: BLE001 - an unreadable footer (truncated file)
        return f"not a readable parquet file ({type(ex).__name__}: {ex})"
    wrong = [k for k in ("rows", "bytes", "sha256") if stats.get(k) != now[k]]
    if wrong:
        return f"{', '.join(wrong)} differ from the recorded ones (truncated or changed)"
    return None


def _finalize(
    out, plans, input_rejects, splitter, text_field, normalizer_sample, seed, show=False
) -> dict:
    import pyarrow.parquet as pq

    missing = [
        p.index for p in plans if not (out / "shards" / f"{shard_name(p.index)}.parquet").exists()
    ]
    if missing:
        raise RuntimeError(f"shards {missing[:5]}... were not written; rerun to resume")
    stats = [json.loads((out / "stats" / f"{shard_name(p.index)}.json").read_text()) for p in plans]
    shard_rejects = []
    for p in plans:
        text = (out / "rejects" / f"{shard_name(p.index)}.jsonl").read_text()
        shard_rejects += [json.loads(line) for line in text.splitlines()]

    n_sentences = sum(s["sentences"] for s in stats)
    normalizer_fitted_on = 0
    if n_sentences >= 2:
        # Seeded sample over the global sentence index: the same shards give the same normalizer.
        rng = np.random.default_rng(seed)
        k = min(normalizer_sample, n_sentences)
        chosen = np.sort(rng.choice(n_sentences, size=k, replace=False))
        picked, offset = [], 0
        total_docs = sum(s["documents"] for s in stats)
        with Progress("normalizer", total_docs, "documents", show) as bar:
            for p, s in zip(plans, stats):
                lo, hi = np.searchsorted(chosen, [offset, offset + s["sentences"]])
                if hi > lo:
                    path = out / "shards" / f"{shard_name(p.index)}.parquet"
                    columns = ["id", f"{text_field}_embeddings"]
                    table = pq.read_table(path, columns=columns)
                    # a NaN here would make the fit fail without saying where: name it
                    problems = table_problems(table, path.name, [text_field], alignment=False)
                    if problems:
                        raise ShardError(
                            f"{out}: cannot fit the normalizer: "
                            + "; ".join(problems)
                            + f". Delete {path} and rerun `lcm prepare` to rebuild it"
                        )
                    col = table.column(1)
                    flat = col.combine_chunks().flatten().flatten().to_numpy(zero_copy_only=False)
                    mat = flat.reshape(s["sentences"], -1)
                    picked.append(mat[chosen[lo:hi] - offset])
                offset += s["sentences"]
                bar.update(s["documents"])
            sample = torch.from_numpy(np.concatenate(picked).astype(np.float32))
            RobustNormalizer.fit(sample).save(out / "normalizer.pt")
        normalizer_fitted_on = int(sample.shape[0])

    all_rejects = [*(r.as_dict() for r in input_rejects), *shard_rejects]
    reasons = Counter(r["kind"] for r in all_rejects)
    unknown = [s.get("unknown_sentences") for s in stats]
    return {
        "documents": sum(s["documents"] for s in stats),
        "sentences": n_sentences,
        "shards": len(plans),
        "rejected": len(input_rejects) + len(shard_rejects),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "truncated_sentences": sum(s["truncated"] for s in stats),
        # sentences (every field, end-of-text included) whose tokens are mostly unknown to the
        # codec; None when the codec cannot tell
        "unknown_token_sentences": None if None in unknown else sum(unknown),
        "long_sentences_resplit": splitter.stats.long_resplit,
        "normalizer_fitted_on": normalizer_fitted_on,
        "encode_seconds": round(sum(s["encode_seconds"] for s in stats), 2),
    }
