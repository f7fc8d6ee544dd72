"""An English pretraining corpus from documentation that Debian ships (``lcm fetch-corpus``).

Sources (provenance and licences in ``lcm/corpora/README.md``), each fetched with
``apt-get download`` under a private apt configuration (the system's apt state is never read for
files and never changed) and unpacked with ``dpkg-deb -x`` into ``out_dir/sources/<name>``:

- ``linux-doc``: the Linux kernel documentation (reStructuredText sources, ``linux-doc-6.1``);
- ``python-doc``: the Python 3.11 documentation (reStructuredText sources, ``python3.11-doc``);
- ``libreoffice-help``: LibreOffice's English help pages (HTML, ``libreoffice-help-en-us``);
- ``foldoc``: the Free On-line Dictionary of Computing (dictd format, ``dict-foldoc``);
- ``debian``: the long English package descriptions (:mod:`lcm.corpora.debian`).

Every source becomes documents (a file, a page, an entry, a package) of prose paragraphs: code
blocks, tables, headings, directives and markup are removed. Paragraphs are deduplicated by
their text over the whole corpus (first occurrence kept, in source order then id order; the
counts removed are in the manifest), documents shorter than ``min_sentences`` are dropped (and
counted), and documents are split train/valid/test by a hash of the *source document* (a file,
page, entry or source package), before long documents are cut into parts of at most
``max_paragraphs`` paragraphs, so parts of one document never straddle splits. One whole source
(``holdout``) is kept out of all three splits as the out-of-domain test set.

Output in ``out_dir``::

    docs/<source>.jsonl          parsed documents of one source (a finished source is reused)
    corpus.{train,valid,test}.jsonl, corpus.ood.jsonl     rows id, text, lang, source, n_sentences
    corpus.manifest.json         settings, per-source counts, deduplication, split sizes

Rows of every output file are in a fixed pseudo-random order (a hash of the id), so the first
``n`` lines are a random sample (``head -n``); ``sample_sentences`` also writes
``corpus.train.sample.jsonl``, the first rows that reach that many sentences.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

__all__ = [
    "SOURCES",
    "Source",
    "dedup_paragraphs",
    "fetch_corpus",
    "foldoc_documents",
    "html_help_paragraphs",
    "rst_paragraphs",
    "split_of_document",
]

LANG = "eng_Latn"
SPLITS = ("train", "valid", "test")
MANIFEST = "corpus.manifest.json"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Source:
    """One corpus source: the Debian package that carries it and how to read it."""

    name: str
    package: str | None  # None: fetched by lcm.corpora.debian
    licence: str
    what: str


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("linux-doc", "linux-doc-6.1", "GPL-2.0 (per-file SPDX tags)", "Linux kernel docs"),
        Source("python-doc", "python3.11-doc", "PSF-2.0", "Python 3.11 documentation"),
        Source("libreoffice-help", "libreoffice-help-en-us", "MPL-2.0", "LibreOffice help"),
        Source("foldoc", "dict-foldoc", "GFDL-1.1-or-later", "FOLDOC dictionary"),
        Source("debian", None, "per package (DFSG)", "Debian package descriptions (en)"),
    )
}

# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:.<>_])\1{2,}\s*$")
_TABLE_LINE = re.compile(r"^\s*(\+[-=+]+\+?|\|.*\||=+(\s+=+)+)\s*$")
_BULLET = re.compile(r"^(?:[*\-+•]|#\.|\d{1,3}[.)]|\(\w\))\s+")
_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_REF_TARGET = re.compile(r"^(.*?)\s*<[^<>]*>$", re.S)
_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`_{1,2}")
_INLINE = re.compile(r"``([^`]+)``|`([^`]+)`_{0,2}|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|\|([^|\s]+)\|")
_FIELD_LIST = re.compile(r"^:[^:]+:(\s|$)")
_WS = re.compile(r"\s+")


def _role_text(m: re.Match) -> str:
    inner = m.group(1)
    t = _REF_TARGET.match(inner)
    text = t.group(1) if t and t.group(1) else inner
    return text.lstrip("~!")


def clean_rst_inline(text: str) -> str:
    """Inline reStructuredText markup to plain text (roles, links, literals, emphasis)."""
    text = _ROLE.sub(_role_text, text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _INLINE.sub(lambda m: next(g for g in m.groups() if g is not None), text)
    text = re.sub(r"(?<=\w)_(?=[\s,.;:)]|$)", "", text)  # reference_ -> reference
    text = text.replace("\\", "")
    return _WS.sub(" ", text).strip()


def is_prose(text: str, min_words: int = 4, min_letter_share: float = 0.6) -> bool:
    """Whether a paragraph reads as English-like prose: enough words, mostly letters and spaces,
    and at least 90% of its letters ASCII (drops translations and non-Latin scripts)."""
    if len(text.split()) < min_words:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in text)
    latin = sum(c.isascii() for c in text if c.isalpha())
    alpha = sum(c.isalpha() for c in text)
    return letters >= min_letter_share * len(text) and latin >= 0.9 * alpha


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def rst_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a reStructuredText document.

    Dropped: literal blocks (after ``::``) and every directive or comment with its indented body
    (``.. code-block::``, ``.. note::``, ``.. toctree::``, ...), section titles, tables, field
    lists, and paragraphs that fail :func:`is_prose`. List items become separate paragraphs.
    """
    lines = text.expandtabs(8).splitlines()
    blocks: list[list[str]] = []
    cur: list[str] = []
    for line in lines:
        if line.strip():
            cur.append(line.rstrip())
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    out: list[str] = []
    skip_deeper_than: int | None = None  # inside a literal block or a directive body
    for block in blocks:
        indent = _indent(block[0])
        if skip_deeper_than is not None:
            if indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        first = block[0].strip()
        if first.startswith(".."):
            skip_deeper_than = indent
            continue
        if any(_TABLE_LINE.match(x) for x in block) or _FIELD_LIST.match(first):
            if block[-1].rstrip().endswith("::"):
                skip_deeper_than = indent
            continue
        # drop titles: a text line with an underline (and maybe an overline)
        kept = []
        for i, line in enumerate(block):
            if _UNDERLINE.match(line.strip()):
                if kept and i > 0 and kept[-1] == block[i - 1]:
                    kept.pop()
                continue
            kept.append(line)
        if not kept:
            continue
        literal_follows = kept[-1].rstrip().endswith("::")
        if literal_follows:
            last = kept[-1].rstrip()[:-2].rstrip()
            kept[-1] = last + ":" if last and not last.endswith(" ") else last
            skip_deeper_than = indent
        # list items: a new item starts at a bullet on the block's own indentation
        items: list[list[str]] = []
        for line in kept:
            stripped = line.strip()
            if _BULLET.match(stripped) and _indent(line) <= indent + 1:
                items.append([_BULLET.sub("", stripped, count=1)])
            elif items:
                items[-1].append(stripped)
            else:
                items.append([stripped])
        for item in items:
            para = clean_rst_inline(" ".join(item))
            if is_prose(para):
                out.append(para)
    return out


class _HelpPageParser(HTMLParser):
    """Collects the prose paragraphs of a LibreOffice help page."""

    KEEP = {"paragraph", "listitem", "paragraphintable", "ol_item", "ul_item"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.title = ""
        self._stack: list[tuple[str, bool]] = []  # (tag, hidden)
        self._in_title = False
        self._collect: list[str] | None = None
        self._collect_depth = 0

    def _hidden(self) -> bool:
        return any(h for _, h in self._stack)

    def handle_starttag(self, tag, attrs):  # noqa: D102
        a = dict(attrs)
        void = tag in ("br", "img", "input", "meta", "link", "base", "hr")
        if tag == "title":
            self._in_title = True
        if void:
            return
        hidden = "hidden" in a or tag in ("script", "style", "footer", "header", "aside")
        self._stack.append((tag, hidden))
        if tag == "p" and self._collect is None and (a.get("class") or "") in self.KEEP:
            self._collect = []
            self._collect_depth = len(self._stack)

    def handle_endtag(self, tag):  # noqa: D102
        if tag == "title":
            self._in_title = False
        if not self._stack or tag in ("br", "img", "input", "meta", "link", "base", "hr"):
            return
        # pop up to the matching tag (HTML in the wild is not always balanced)
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break
        if self._collect is not None and len(self._stack) < self._collect_depth:
            para = _WS.sub(" ", "".join(self._collect)).strip()
            if para:
                self.paragraphs.append(para)
            self._collect = None

    def handle_data(self, data):  # noqa: D102
        if self._in_title:
            self.title += data
        if self._collect is not None and not self._hidden():
            self._collect.append(data)


def html_help_paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a LibreOffice help page (hidden platform variants are skipped)."""
    parser = _HelpPageParser()
    parser.feed(text)
    parser.close()
    return [p for p in parser.paragraphs if is_prose(p)]


_FOLDOC_CATEGORY = re.compile(r"^<[^<>]+>\s*")
_FOLDOC_DATE = re.compile(r"^\(\d{4}-\d{2}-\d{2}\)$")


def foldoc_documents(lines: Iterable[str]) -> Iterator[tuple[str, list[str]]]:
    """``(headword, paragraphs)`` of FOLDOC's dictd text: a headword at column 0, then its body
    indented. Cross-reference braces and ``<category>`` tags are removed; dates are dropped."""
    head: str | None = None
    body: list[str] = []

    def finish() -> tuple[str, list[str]] | None:
        paras, cur = [], []
        for line in [*body, ""]:
            if line.strip():
                cur.append(line.strip())
            elif cur:
                para = " ".join(cur)
                cur = []
                para = _FOLDOC_CATEGORY.sub("", para)
                para = re.sub(r"\{+([^{}]*)\}+", r"\1", para)
                para = para.replace("{", "").replace("}", "")  # braces split over paragraphs
                para = _WS.sub(" ", para).strip()
                if not _FOLDOC_DATE.match(para) and is_prose(para):
                    paras.append(para)
        return (head, paras) if head is not None else None

    for raw in lines:
        line = raw.rstrip("\n").expandtabs(8)
        if line and not line[0].isspace():
            done = finish()
            if done:
                yield done
            head, body = line.strip(), []
        else:
            body.append(line)
    done = finish()
    if done:
        yield done


# ---------------------------------------------------------------------------------------------
# Deduplication and splitting
# ---------------------------------------------------------------------------------------------


def _key(paragraph: str) -> str:
    return _WS.sub(" ", paragraph).strip().casefold()


def dedup_paragraphs(docs: Iterable[dict]) -> tuple[list[dict], dict[str, int]]:
    """Drop every paragraph whose text (whitespace- and case-folded) was seen before.

    ``docs`` have ``paragraphs`` (a list) and ``source``; the first occurrence, in input order,
    is kept. Returns the documents that keep at least one paragraph, and the number of
    paragraphs removed per source (``{source: n}``, every source present).
    """
    seen: set[str] = set()
    removed: dict[str, int] = {}
    out = []
    for doc in docs:
        removed.setdefault(doc["source"], 0)
        kept = []
        for p in doc["paragraphs"]:
            k = _key(p)
            if k in seen:
                removed[doc["source"]] += 1
                continue
            seen.add(k)
            kept.append(p)
        if kept:
            out.append({**doc, "paragraphs": kept})
    return out, removed


def split_of_document(key: str, valid_fraction: float, test_fraction: float) -> str:
    """``train``/``valid``/``test`` from a hash of the source document's key (stable)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + valid_fraction:
        return "valid"
    return "train"


def _order(row_id: str) -> bytes:
    return hashlib.sha256(b"order:" + row_id.encode()).digest()


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------


def _apt_download(package: str, apt_root: Path, dest: Path, timeout: float) -> Path:
    """``apt-get download package`` into ``dest`` under the private config; returns the .deb."""
    from lcm.corpora.debian import (
        _PROXY_KEYS,
        _apt_config_values,
        _run_apt_update,
        write_apt_config,
    )

    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("fetch_corpus needs apt-get and dpkg-deb (a Debian/Ubuntu system)")
    conf = apt_root / "apt.conf"
    if not any((apt_root / "state/lists").glob("*_Packages")):
        conf = write_apt_config(apt_root, ["en"])
        _run_apt_update(conf, timeout)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "-q", "download", package]
    for key, value in _apt_config_values(_PROXY_KEYS).items():
        cmd += ["-o", f"{key}={value}"]
    env = dict(os.environ, APT_CONFIG=str(conf), LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=dest
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"apt-get download {package} took over {timeout:.0f} s") from e
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not debs:
        raise RuntimeError(
            f"apt-get download {package} failed (exit {proc.returncode}; is a Debian mirror "
            f"reachable?): {(proc.stderr or proc.stdout).strip()[-800:]}"
        )
    return debs[-1]


def _extract(deb: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, capture_output=True)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def iter_source_documents(name: str, root: Path) -> Iterator[tuple[str, list[str]]]:
    """``(document key, paragraphs)`` of one unpacked source (``root`` = its extracted tree)."""
    if name in ("linux-doc", "python-doc"):
        doc = "linux-doc-6.1" if name == "linux-doc" else "python3.11"
        base = root / "usr/share/doc" / doc / "html/_sources"
        if not base.is_dir():
            raise FileNotFoundError(f"{name}: no reStructuredText sources under {base}")
        for path in sorted(base.rglob("*.rst.txt")):
            if path.relative_to(base).parts[0] == "translations":  # zh_CN, ja_JP, it_IT, ...
                continue
            yield str(path.relative_to(base)), rst_paragraphs(_read_text(path))
    elif name == "libreoffice-help":
        base = root / "usr/share/libreoffice/help/en-US"
        if not base.is_dir():
            raise FileNotFoundError(f"{name}: no help pages under {base}")
        for path in sorted(base.rglob("*.html")):
            yield str(path.relative_to(base)), html_help_paragraphs(_read_text(path))
    elif name == "foldoc":
        path = root / "usr/share/dictd/foldoc.dict.dz"  # dictzip is gzip-compatible
        if not path.is_file():
            raise FileNotFoundError(f"{name}: missing {path}")
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            seen: dict[str, int] = {}
            for head, paras in foldoc_documents(f):
                n = seen.get(head, 0)
                seen[head] = n + 1
                yield (head if n == 0 else f"{head}#{n}"), paras
    else:
        raise ValueError(f"unknown source {name!r}; known: {sorted(SOURCES)}")


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _source_docs(name: str, out: Path, timeout: float, progress: bool) -> Path:
    """Parse one source into ``docs/<name>.jsonl`` (reused when it exists)."""
    target = out / "docs" / f"{name}.jsonl"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if name == "debian":
        from lcm.corpora.debian import fetch_debian_descriptions

        fetch_debian_descriptions(str(out / "debian"), langs=["en"], min_sentences=0)
        rows = _read_jsonl(out / "debian" / "debian_descriptions.en.jsonl")
        docs = (
            {
                "id": f"debian/{r['id']}",
                "source": "debian",
                "key": f"debian/{r['source']}",  # binary packages of one source split together
                "paragraphs": [p for p in r["text"].split("\n\n") if p.strip()],
            }
            for r in rows
        )
        _write_jsonl(target, docs)
        return target
    src = SOURCES[name]
    tree = out / "sources" / name
    if not (tree / ".complete").exists():
        deb = _apt_download(src.package, out / "apt", out / "debs", timeout)
        _extract(deb, tree)
        (tree / ".complete").write_text(deb.name + "\n")
    items = iter_source_documents(name, tree)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"parse {name}", unit="doc", leave=False)
    docs = (
        {"id": f"{name}/{key}", "source": name, "key": f"{name}/{key}", "paragraphs": paras}
        for key, paras in items
        if paras
    )
    _write_jsonl(target, docs)
    return target


def fetch_corpus(
    out_dir: str,
    sources: Sequence[str] = ("linux-doc", "python-doc", "libreoffice-help", "foldoc", "debian"),
    holdout: str | None = "python-doc",
    min_sentences: int = 2,
    max_paragraphs: int = 24,
    valid_fraction: float = 0.02,
    test_fraction: float = 0.03,
    sample_sentences: int | None = None,
    refresh: bool = False,
    timeout: float = 300.0,
    progress: bool = True,
) -> dict:
    """Build English document jsonl for pretraining from documentation Debian ships.

    Each source package is fetched with ``apt-get download`` (private apt configuration under
    ``out_dir/apt``) and unpacked with ``dpkg-deb -x``; sources already parsed into
    ``out_dir/docs/<source>.jsonl`` are reused, so an interrupted run resumes. Paragraphs are
    deduplicated over the whole corpus, and documents are split by a hash of their source
    document, with ``holdout`` kept whole as ``corpus.ood.jsonl``.

    Args:
        out_dir: output folder (created).
        sources: which sources to include (``linux-doc``, ``python-doc``, ``libreoffice-help``,
            ``foldoc``, ``debian``).
        holdout: the source kept out of train/valid/test as the out-of-domain test set (None:
            none).
        min_sentences: drop documents (after deduplication) with fewer sentences than this.
        max_paragraphs: cut longer documents into parts of at most this many paragraphs (parts
            stay in their document's split); 0 keeps documents whole.
        valid_fraction: share of source documents in the validation split.
        test_fraction: share of source documents in the in-domain test split.
        sample_sentences: also write ``corpus.train.sample.jsonl``, the first training rows (in
            the files' random order) whose sentences add up to at least this many.
        refresh: re-parse every source (downloads and unpacked trees are still reused).
        timeout: seconds before one apt command is abandoned with an error.
        progress: show progress bars.

    Returns:
        Per-source counts (documents, paragraphs, duplicates removed, short documents dropped,
        sentences per split), the file paths and the settings; also written to
        ``out_dir/corpus.manifest.json``.
    """
    sources = list(sources)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; known: {sorted(SOURCES)}")
    if holdout is not None and holdout not in sources:
        raise ValueError(f"holdout {holdout!r} is not one of the sources {sources}")
    if not 0 <= valid_fraction + test_fraction < 1 or min_sentences < 0 or max_paragraphs < 0:
        raise ValueError("need 0 <= valid+test < 1, min_sentences >= 0 and max_paragraphs >= 0")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if refresh:
        shutil.rmtree(out / "docs", ignore_errors=True)
    per_source: dict[str, dict] = {}
    all_docs: list[dict] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sources), desc="sources", unit="source")
    for name in sources:
        reused = (out / "docs" / f"{name}.jsonl").exists()
        docs = _read_jsonl(_source_docs(name, out, timeout, progress))
        per_source[name] = {
            "package": SOURCES[name].package or "Translation-en (apt lists)",
            "licence": SOURCES[name].licence,
            "documents_parsed": len(docs),
            "paragraphs_parsed": sum(len(d["paragraphs"]) for d in docs),
            "reused": reused,
        }
        docs.sort(key=lambda d: d["id"])
        all_docs += docs
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    docs, removed = dedup_paragraphs(all_docs)
    from lcm.splitting import SentenceSplitter

    splitter = SentenceSplitter(max_chars=0)
    rows: dict[str, list[dict]] = {s: [] for s in (*SPLITS, "ood")}
    for name in sources:
        per_source[name].update(
            duplicate_paragraphs_removed=removed.get(name, 0),
            short_documents_dropped=0,
            parts=0,
            sentences={},
        )
    for doc in docs:
        stats = per_source[doc["source"]]
        paras = doc["paragraphs"]
        n_sents = [len(splitter.split(p, LANG)) for p in paras]
        if sum(n_sents) < min_sentences:
            stats["short_documents_dropped"] += 1
            continue
        split = (
            "ood"
            if doc["source"] == holdout
            else split_of_document(doc["key"], valid_fraction, test_fraction)
        )
        step = max_paragraphs or len(paras)
        chunks = [(paras[i : i + step], n_sents[i : i + step]) for i in range(0, len(paras), step)]
        for k, (part, ns) in enumerate(chunks):
            row_id = doc["id"] if len(chunks) == 1 else f"{doc['id']}#part{k}"
            rows[split].append(
                {
                    "id": row_id,
                    "text": "\n\n".join(part),
                    "lang": LANG,
                    "source": doc["source"],
                    "n_sentences": sum(ns),
                }
            )
            stats["parts"] += 1
            stats["sentences"][split] = stats["sentences"].get(split, 0) + sum(ns)
    files = {}
    for split, part in rows.items():
        part.sort(key=lambda r: _order(r["id"]))
        path = out / f"corpus.{split}.jsonl"
        _write_jsonl(path, part)
        files[split] = str(path)
    sample = None
    if sample_sentences is not None:
        taken, total = [], 0
        for r in rows["train"]:
            if total >= sample_sentences:
                break
            taken.append(r)
            total += r["n_sentences"]
        path = out / "corpus.train.sample.jsonl"
        _write_jsonl(path, taken)
        files["train_sample"] = str(path)
        sample = {"documents": len(taken), "sentences": total}
    manifest = {
        "version": _FORMAT_VERSION,
        "settings": {
            "sources": sources,
            "holdout": holdout,
            "min_sentences": min_sentences,
            "max_paragraphs": max_paragraphs,
            "valid_fraction": valid_fraction,
            "test_fraction": test_fraction,
            "sample_sentences": sample_sentences,
        },
        "files": files,
        "sources": per_source,
        "splits": {
            s: {"documents": len(r), "sentences": sum(x["n_sentences"] for x in r)}
            for s, r in rows.items()
        },
        "train_sample": sample,
        "duplicate_paragraphs_removed": sum(removed.values()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / MANIFEST)
    return manifest
