"""Decoding by nearest-neighbour retrieval over a sentence bank (faiss).

Encoders that ship without a decoder (the offline default codec) render a vector as the bank
sentence whose embedding is closest in cosine similarity. The bank is usually every sentence of
the prepared training shards, so generated concepts read as real sentences of the corpus.

A bank can be saved to a folder (:meth:`RetrievalBank.save`) and opened again without reading
it into memory (:meth:`RetrievalBank.open`): each language's faiss index is memory-mapped, and its
sentences are an Arrow IPC file, also memory-mapped, read one string at a time when decoded.

    bank.save("bank/")                    # <i>.faiss + <i>.arrow per language, bank.json
    bank = RetrievalBank.open("bank/")    # O(1) in the bank size; pages load on first use

:meth:`RetrievalBank.decode` renders each vector as one sentence under a
:class:`RetrievalDecoding`: the nearest sentence (the default), or a minimum-Bayes-risk choice
among the ``k`` nearest (the candidate the others, weighted by their closeness to the query,
agree with most).
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
import torch

#: Version of the folder layout written by :meth:`RetrievalBank.save`.
BANK_FORMAT = 1
#: Sentences per Arrow record batch in a saved bank.
_BATCH = 1 << 16


#: The rules of :class:`RetrievalDecoding`.
DECODING_RULES = ("nearest", "mbr_rouge", "mbr_cosine")


@dataclass(frozen=True)
class RetrievalDecoding:
    """How a retrieval decoder turns a vector into one bank sentence.

    Attributes:
        rule: ``nearest``: the bank sentence with the highest cosine to the vector (``k`` must be
            1). ``mbr_rouge`` and ``mbr_cosine``: a minimum-Bayes-risk choice among the ``k``
            nearest sentences (the candidates). Each candidate j gets the weight
            ``softmax(cos(query, j) / temperature)``; the chosen candidate i has the highest
            expected utility ``sum_j w_j u(i, j)`` over all candidates, itself included
            (``u(i, i) = 1``). ``mbr_rouge``: u is the ROUGE-L F1 between the two sentences
            (lexical consensus, no stemming, as the main job scores); ``mbr_cosine``: u is the
            cosine between their bank vectors, so the choice is the candidate nearest to the
            weighted centroid of the candidates. Ties go to the candidate nearer the query.
            ``k=1`` is the nearest sentence whatever the rule; a small temperature tends to it.
        k: candidates retrieved per vector (>= 1; fewer when the bank holds fewer sentences).
        temperature: of the softmax over the candidates' cosines to the query (> 0, finite).
            Cosines of a sentence encoder's near neighbours differ by a few hundredths, so
            values of about 0.01-0.1 matter; large values weight all candidates equally.

    Raises:
        ValueError: an unknown rule, ``k < 1`` (or not an integer), ``k != 1`` with
            ``nearest``, or a temperature that is not a positive finite number.
    """

    rule: Literal["nearest", "mbr_rouge", "mbr_cosine"] = "nearest"
    k: int = 1
    temperature: float = 0.05

    def __post_init__(self) -> None:
        if self.rule not in DECODING_RULES:
            raise ValueError(
                f"unknown retrieval decoding rule {self.rule!r}; use one of "
                + ", ".join(DECODING_RULES)
            )
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k (candidates per vector) must be an integer >= 1, got {self.k!r}")
        if self.rule == "nearest" and self.k != 1:
            raise ValueError(
                f"rule 'nearest' retrieves one sentence (k=1), got k={self.k}; for a choice "
                "among the k nearest use rule 'mbr_rouge' or 'mbr_cosine'"
            )
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")

    def as_dict(self) -> dict:
        """The fields, for a report (``{"rule": ..., "k": ..., "temperature": ...}``)."""
        return asdict(self)

    def choose(self, scores: np.ndarray, texts: Sequence[str], vectors: np.ndarray) -> int:
        """The index of the chosen candidate among one vector's candidates.

        Args:
            scores: ``(n,)`` cosines of the candidates to the query, best first.
            texts: the ``n`` candidate sentences.
            vectors: ``(n, dim)`` their unit bank vectors (read by ``mbr_cosine`` only).
        """
        n = len(texts)
        if self.rule == "nearest" or n == 1:
            return 0
        z = np.asarray(scores, dtype=np.float64) / self.temperature
        w = np.exp(z - z.max())
        w /= w.sum()
        if self.rule == "mbr_cosine":
            v = np.asarray(vectors, dtype=np.float64)
            utility = v @ v.T
        else:
            utility = rouge_l_matrix(texts)
        return int(np.argmax(utility @ w))  # argmax: the first of equals, nearest the query


def rouge_l_matrix(texts: Sequence[str]) -> np.ndarray:
    """``(n, n)`` ROUGE-L F1 between every two of ``texts``, tokenized as ``rouge_score`` does
    without stemming (lower case, alphanumeric words); 1 on the diagonal, also for an empty
    text, and 0 between an empty text and any other."""
    from rouge_score.tokenizers import DefaultTokenizer

    tokenizer = DefaultTokenizer(use_stemmer=False)
    tokens = [tokenizer.tokenize(t) for t in texts]
    n = len(texts)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = tokens[i], tokens[j]
            lcs = _lcs(a, b)
            f1 = 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))
            out[i, j] = out[j, i] = f1
    return out


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if not a or not b:
        return 0
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


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

    def _require(self, lang: str) -> None:
        if lang not in self._index:
            have = ", ".join(sorted(self._index)) or "none"
            raise ValueError(
                f"the retrieval bank has no sentences in {lang!r} (it has: {have}); add some "
                "with add_to_bank(), or prepare shards in that language"
            )

    def search(
        self, vectors: torch.Tensor, lang: str, k: int = 1
    ) -> tuple[np.ndarray, list[list[str]]]:
        """Cosine scores ``(N, k)`` and the ``k`` nearest bank sentences for each vector."""
        self._require(lang)
        scores, ids = self._index[lang].search(_unit(vectors), k)
        bank = self._sentences[lang]
        return scores, [[bank[j] for j in row if j >= 0] for row in ids]

    def decode(
        self, vectors: torch.Tensor, lang: str, decoding: RetrievalDecoding | None = None
    ) -> list[str]:
        """One bank sentence per vector under ``decoding`` (default: the nearest sentence, which
        is exactly ``search(vectors, lang, k=1)``'s first sentence)."""
        decoding = decoding or RetrievalDecoding()
        if decoding.k == 1:
            _, found = self.search(vectors, lang, k=1)
            return [f[0] for f in found]
        self._require(lang)
        bank = self._sentences[lang]
        scores, ids, recon = self._index[lang].search_and_reconstruct(_unit(vectors), decoding.k)
        out = []
        for row_scores, row_ids, row_vectors in zip(scores, ids, recon):
            keep = row_ids >= 0  # faiss pads with -1 when the bank holds fewer than k
            texts = [bank[j] for j in row_ids[keep]]
            out.append(texts[decoding.choose(row_scores[keep], texts, row_vectors[keep])])
        return out

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
