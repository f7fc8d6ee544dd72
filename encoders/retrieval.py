"""Decoding by nearest-neighbour retrieval over a sentence bank (faiss).

Encoders that ship without a decoder (the offline default codec) render a vector as the bank
sentence whose embedding is closest in cosine similarity. The bank is usually every sentence of
the prepared training shards, so generated concepts read as real sentences of the corpus.

A bank can be saved to a folder (:meth:`RetrievalBank.save`) and opened again without reading
it into memory (:meth:`RetrievalBank.open`): each language's faiss index is memory-mapped, and its
sentences are an Arrow IPC file, also memory-mapped, read one string at a time when decoded.

    bank.save("bank/")                    # <i>.faiss + <i>.arrow per language, bank.json
    bank = RetrievalBank.open("bank/")    # O(1) in the bank size; pages load on first use
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np
import torch

#: Version of the folder layout written by :meth:`RetrievalBank.save`.
BANK_FORMAT = 1
#: Sentences per Arrow record batch in a saved bank.
_BATCH = 1 << 16


class ArrowTexts(Sequence):
    """The sentences of one language, read lazily from a memory-mapped Arrow IPC file.

    Holds only the record-batch start offsets in Python; ``texts[j]`` decodes one string.
    """

    def __init__(self, path: str | Path) -> None:
        import pyarrow as pa

        self.path = Path(path)
        reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
        self._batches = [reader.get_batch(i).column(0) for i in range(reader.num_record_batches)]
        sizes = [len(b) for b in self._batches]
        self._starts = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64))).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(len(self)))]
        n = len(self)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"sentence {j} of a bank of {n}")
        b = bisect.bisect_right(self._starts, j) - 1
        return self._batches[b][j - self._starts[b]].as_py()

    def __iter__(self) -> Iterator[str]:
        for batch in self._batches:
            yield from batch.to_pylist()


class RetrievalBank:
    """Sentences and their unit-normalised vectors in a faiss inner-product index, per language."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index: dict[str, faiss.Index] = {}
        self._sentences: dict[str, list[str] | ArrowTexts] = {}
        # Per language, for linear-time de-duplication; built lazily for an opened bank.
        self._known: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self._sentences.values())

    def langs(self) -> list[str]:
        """The languages the bank holds sentences in."""
        return sorted(self._sentences)

    def count(self, lang: str) -> int:
        """Sentences held in ``lang``."""
        return len(self._sentences.get(lang, ()))

    def sentences(self, lang: str) -> Sequence[str]:
        """The sentences held in ``lang``, in index order (empty if none). A read-only view:
        a copy for an in-memory language, the memory-mapped texts for an opened one; change
        the bank with :meth:`add` and :meth:`remove`."""
        texts = self._sentences.get(lang, ())
        return texts if isinstance(texts, ArrowTexts) else tuple(texts)

    def vectors(self, lang: str) -> torch.Tensor:
        """The unit vectors held in ``lang``, in index order: ``(count(lang), dim)`` float32."""
        if lang not in self._index:
            return torch.empty(0, self.dim)
        index = self._index[lang]
        return torch.from_numpy(index.reconstruct_n(0, index.ntotal).copy())

    def remove(self, sentences: Iterable[str], lang: str) -> int:
        """Take every sentence of ``lang`` equal to one of ``sentences`` out of the bank, with
        its vector (e.g. the references of an evaluation, so retrieval cannot return them).
        Returns how many were removed; a language left empty is dropped. An opened bank is
        read into memory first (only when something is removed); its files are not changed."""
        drop = set(sentences)
        texts = self._sentences.get(lang)
        if texts is None or not drop:
            return 0
        ids = [i for i, s in enumerate(texts) if s in drop]
        if not ids:
            return 0
        self._writable(lang)
        gone = set(ids)
        kept = [s for i, s in enumerate(self._sentences[lang]) if i not in gone]
        if not kept:
            for table in (self._index, self._sentences, self._known):
                table.pop(lang, None)
            return len(ids)
        self._index[lang].remove_ids(np.asarray(ids, dtype=np.int64))  # keeps the order
        self._sentences[lang] = kept
        self._known[lang] = set(kept)
        return len(ids)

    def add(self, sentences: Sequence[str], vectors: torch.Tensor, lang: str) -> None:
        """Add ``sentences`` with their ``(N, dim)`` vectors; repeated sentences are kept once."""
        if len(sentences) != vectors.shape[0]:
            raise ValueError(f"{len(sentences)} sentences but {vectors.shape[0]} vectors")
        self._writable(lang)
        known = self._known.setdefault(lang, set())
        keep = [i for i, s in enumerate(sentences) if s not in known and not known.add(s)]
        if not keep:
            return
        x = _unit(vectors[keep])
        index = self._index.setdefault(lang, faiss.IndexFlatIP(self.dim))
        index.add(x)
        self._sentences.setdefault(lang, []).extend(sentences[i] for i in keep)

    def _writable(self, lang: str) -> None:
        """An opened (memory-mapped) language becomes an in-memory one before it grows."""
        texts = self._sentences.get(lang)
        if isinstance(texts, ArrowTexts):
            mapped = self._index[lang]
            index = faiss.IndexFlatIP(self.dim)
            if mapped.ntotal:
                index.add(mapped.reconstruct_n(0, mapped.ntotal))
            self._index[lang] = index
            self._sentences[lang] = list(texts)
        if lang in self._sentences and lang not in self._known:
            self._known[lang] = set(self._sentences[lang])

    def search(
        self, vectors: torch.Tensor, lang: str, k: int = 1
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Cosine scores ``(N, k)`` and the ``k`` nearest bank sentences for each vector."""
        if lang not in self._index:
            have = ", ".join(sorted(self._index)) or "none"
            raise ValueError(
                f"the retrieval bank has no sentences in {lang!r} (it has: {have}); add some "
                "with add_to_bank(), or prepare shards in that language"
            )
        scores, ids = self._index[lang].search(_unit(vectors), k)
        bank = self._sentences[lang]
        return scores, [[bank[j] for j in row if j >= 0] for row in ids]

    # ------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> dict:
        """Write the bank into ``folder`` (created): per language ``<i>.faiss`` (the index) and
        ``<i>.arrow`` (its sentences, in index order), then ``bank.json`` naming them. Returns
        what ``bank.json`` holds. Not atomic by itself: write into a fresh folder and rename."""
        import pyarrow as pa

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        langs = {}
        schema = pa.schema([("sentence", pa.large_string())])
        for i, lang in enumerate(self.langs()):
            index, texts = self._index[lang], self._sentences[lang]
            if index.ntotal != len(texts):
                raise RuntimeError(f"bank {lang}: {index.ntotal} vectors but {len(texts)} texts")
            faiss.write_index(index, str(folder / f"{i}.faiss"))
            with pa.OSFile(str(folder / f"{i}.arrow"), "wb") as sink:
                with pa.ipc.new_file(sink, schema) as writer:
                    for start in range(0, len(texts), _BATCH):
                        chunk = pa.array(texts[start : start + _BATCH], pa.large_string())
                        writer.write_batch(pa.record_batch([chunk], schema=schema))
            langs[lang] = {"index": f"{i}.faiss", "texts": f"{i}.arrow", "sentences": len(texts)}
        info = {"format": BANK_FORMAT, "dim": self.dim, "languages": langs}
        (folder / "bank.json").write_text(json.dumps(info, indent=1))
        return info

    @classmethod
    def open(cls, folder: str | Path, mmap: bool = True) -> RetrievalBank:
        """A bank saved by :meth:`save`; with ``mmap`` its vectors and sentences stay on disk
        (memory-mapped) and are paged in as searches touch them."""
        folder = Path(folder)
        info = json.loads((folder / "bank.json").read_text())
        if info.get("format") != BANK_FORMAT:
            raise ValueError(f"{folder}: bank format {info.get('format')}, expected {BANK_FORMAT}")
        bank = cls(int(info["dim"]))
        flag = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) if mmap else 0
        for lang, entry in info["languages"].items():
            index = faiss.read_index(str(folder / entry["index"]), flag)
            texts = ArrowTexts(folder / entry["texts"])
            if index.d != bank.dim or len({index.ntotal, len(texts), entry["sentences"]}) != 1:
                raise ValueError(
                    f"{folder}: bank {lang} holds {index.ntotal} {index.d}-d vectors and "
                    f"{len(texts)} sentences; bank.json records {entry['sentences']} {bank.dim}-d"
                )
            bank._index[lang] = index
            bank._sentences[lang] = texts
        return bank


def _unit(vectors: torch.Tensor) -> np.ndarray:
    x = vectors.detach().to("cpu", torch.float32).numpy().copy()
    faiss.normalize_L2(x)
    return x
