"""lcm.corpora.prose (``lcm fetch-corpus``): parsers, deduplication and splits on fixtures."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lcm.corpora.prose import (
    dedup_paragraphs,
    fetch_corpus,
    foldoc_documents,
    html_help_paragraphs,
    rst_paragraphs,
    split_of_document,
)

RST = """\
.. SPDX-License-Identifier: GPL-2.0

==============================
Accessing PCI device resources
==============================

sysfs, usually mounted at /sys, provides access to PCI resources on
platforms that support it.  For example, a given bus might look like this::

     /sys/devices/pci0000:17
     |-- 0000:17:00.0

       =========== ==========
       file        function
       =========== ==========
       class       PCI class
       =========== ==========

Use :c:func:`pci_enable_device` and the ``resource`` files, see
`the manual <https://example.org/>`_ and :ref:`Other docs <other>` for **more**.

.. note::

   This note body is a directive and is dropped entirely.

* First item of a list that has words.
* Second item of the same list, also words.

Back to normal prose after the list, with enough words.
"""

HTML = """<html><head><title>Macro Security</title></head><body>
<div id="DisplayArea"><h1>Macro Security</h1>
<p id="a" class="paragraph">The Macro Security dialog appears when a document contains macros.
You can call it from <span hidden="true">MAC ONLY TEXT</span><span>Tools - Options</span> too.</p>
<p class="embedded"><a>Security Level</a></p>
<p class="listitem">Choose a security level for running macros here.</p>
<p class="paragraph">Too short.</p>
</div><footer><p class="paragraph">This page is: a debug footer line that must go.</p></footer>
</body></html>"""

FOLDOC = """\
56 kbps

   <communications> (56 kilobits per second) The data capacity of
   a normal single channel digital {telephone} channel in North
   America.

   At the end of 1997 there were two rival {modem} designs
   capable of this rate.

   (1998-09-15)

tiny

   Nothing.

56 kbps

   A second entry with the same headword gets its own id here.
"""


def test_rst_paragraphs_keep_prose_only():
    paras = rst_paragraphs(RST)
    assert paras == [
        "sysfs, usually mounted at /sys, provides access to PCI resources on platforms that "
        "support it. For example, a given bus might look like this:",
        "Use pci_enable_device and the resource files, see the manual and Other docs for more.",
        "First item of a list that has words.",
        "Second item of the same list, also words.",
        "Back to normal prose after the list, with enough words.",
    ]


def test_html_help_paragraphs_skip_hidden_and_chrome():
    assert html_help_paragraphs(HTML) == [
        "The Macro Security dialog appears when a document contains macros. You can call it "
        "from Tools - Options too.",
        "Choose a security level for running macros here.",
    ]


def test_foldoc_entries():
    docs = list(foldoc_documents(FOLDOC.splitlines(keepends=True)))
    assert [h for h, _ in docs] == ["56 kbps", "tiny", "56 kbps"]
    assert docs[0][1] == [
        "(56 kilobits per second) The data capacity of a normal single channel digital "
        "telephone channel in North America.",
        "At the end of 1997 there were two rival modem designs capable of this rate.",
    ]
    assert docs[1][1] == []  # "Nothing." is not prose (one word)


def test_dedup_counts_per_source_and_keeps_first():
    docs = [
        {"id": "a/1", "source": "a", "paragraphs": ["Same words here now.", "Unique one."]},
        {"id": "b/1", "source": "b", "paragraphs": ["same  WORDS here now.", "Other."]},
        {"id": "b/2", "source": "b", "paragraphs": ["Unique one."]},
    ]
    out, removed = dedup_paragraphs(docs)
    assert [d["id"] for d in out] == ["a/1", "b/1"]
    assert out[1]["paragraphs"] == ["Other."]
    assert removed == {"a": 0, "b": 2}


def test_split_is_stable_and_proportional():
    keys = [f"doc/{i}" for i in range(4000)]
    splits = [split_of_document(k, 0.1, 0.2) for k in keys]
    assert splits == [split_of_document(k, 0.1, 0.2) for k in keys]
    assert abs(splits.count("test") / 4000 - 0.2) < 0.03
    assert abs(splits.count("valid") / 4000 - 0.1) < 0.03


def _seed_sources(out: Path) -> None:
    """Unpacked source trees where fetch_corpus would leave them, so no apt is needed."""
    kernel = out / "sources/linux-doc/usr/share/doc/linux-doc-6.1/html/_sources"
    for i in range(30):
        body = f"Kernel document number {i} explains one thing. It has a second sentence.\n\n"
        body += "This boilerplate paragraph repeats in every single kernel file.\n\n"
        body += "".join(f"Paragraph {j} of document {i} has words in it.\n\n" for j in range(5))
        (kernel / f"sub{i % 3}").mkdir(parents=True, exist_ok=True)
        (kernel / f"sub{i % 3}/doc{i}.rst.txt").write_text(body)
    (kernel / "translations/zh_CN").mkdir(parents=True)
    (kernel / "translations/zh_CN/x.rst.txt").write_text("Translated text that is skipped here.")
    python = out / "sources/python-doc/usr/share/doc/python3.11/html/_sources/library"
    python.mkdir(parents=True)
    for i in range(4):
        (python / f"m{i}.rst.txt").write_text(
            f"Module {i} does useful things. It is documented well.\n\nSee also the other one.\n"
        )
    office = out / "sources/libreoffice-help/usr/share/libreoffice/help/en-US/text"
    office.mkdir(parents=True)
    (office / "page.html").write_text(HTML)
    foldoc = out / "sources/foldoc/usr/share/dictd"
    foldoc.mkdir(parents=True)
    with gzip.open(foldoc / "foldoc.dict.dz", "wt") as f:
        f.write(FOLDOC)
    for name in ("linux-doc", "python-doc", "libreoffice-help", "foldoc"):
        (out / "sources" / name / ".complete").write_text("fixture\n")


def _read(path: str | Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_fetch_corpus_on_fixtures(tmp_path, monkeypatch):
    import lcm.corpora.prose as prose

    monkeypatch.setattr(prose, "_apt_download", lambda *a, **k: pytest.fail("no apt here"))
    out = tmp_path / "corpus"
    _seed_sources(out)
    sources = ["linux-doc", "python-doc", "libreoffice-help", "foldoc"]
    options = dict(
        sources=sources, holdout="python-doc", max_paragraphs=3, sample_sentences=10,
        valid_fraction=0.2, test_fraction=0.2, progress=False,
    )  # fmt: skip
    m = fetch_corpus(str(out), **options)
    kernel = m["sources"]["linux-doc"]
    assert kernel["documents_parsed"] == 30  # the translation is skipped
    assert kernel["duplicate_paragraphs_removed"] == 29  # boilerplate kept once
    assert m["sources"]["foldoc"]["documents_parsed"] == 2  # "tiny" has no prose
    assert m["sources"]["python-doc"]["duplicate_paragraphs_removed"] == 3  # "See also ..."
    rows = {s: _read(m["files"][s]) for s in ("train", "valid", "test", "ood")}
    assert {r["source"] for r in rows["ood"]} == {"python-doc"}
    assert all(r["source"] != "python-doc" for s in ("train", "valid", "test") for r in rows[s])
    assert all(
        set(r) == {"id", "text", "lang", "source", "n_sentences"} for v in rows.values() for r in v
    )
    # parts of one kernel document (7 paragraphs -> 3 parts of <= 3) share its split
    by_doc: dict[str, set[str]] = {}
    for split, part in rows.items():
        for r in part:
            by_doc.setdefault(r["id"].split("#part")[0], set()).add(split)
    assert all(len(v) == 1 for v in by_doc.values())
    first = [r for v in rows.values() for r in v if r["id"].startswith("linux-doc/sub0/doc0.")]
    assert sorted(r["id"] for r in first) == [
        f"linux-doc/sub0/doc0.rst.txt#part{k}" for k in (0, 1, 2)
    ]
    for split in ("train", "valid", "test"):
        assert len(rows[split]) > 0 and m["splits"][split]["documents"] == len(rows[split])
    sample = _read(m["files"]["train_sample"])
    assert sample == rows["train"][: len(sample)]
    assert sum(r["n_sentences"] for r in sample) >= 10 > sum(r["n_sentences"] for r in sample[:-1])
    # resumable: parsed sources are reused and the result is identical
    again = fetch_corpus(str(out), **options)
    assert all(s["reused"] for s in again["sources"].values())
    assert again["splits"] == m["splits"]


def test_bad_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        fetch_corpus(str(tmp_path), sources=["nope"])
    with pytest.raises(ValueError, match="holdout"):
        fetch_corpus(str(tmp_path), sources=["foldoc"], holdout="python-doc")


def test_cli_subcommand(tmp_path, monkeypatch, capsys):
    import lcm.corpora.prose as prose
    from lcm.cli import run

    monkeypatch.setattr(prose, "_apt_download", lambda *a, **k: pytest.fail("no apt here"))
    _seed_sources(tmp_path)
    result = run(
        [
            "fetch-corpus",
            "--out_dir",
            str(tmp_path),
            "--sources",
            "[foldoc]",
            "--holdout",
            "null",
            "--progress",
            "false",
        ]
    )
    assert result["splits"]["ood"]["documents"] == 0
    assert json.loads(capsys.readouterr().out)["sources"]["foldoc"]["documents_parsed"] == 2


@pytest.mark.slow
def test_fetch_real_foldoc(tmp_path):
    from test_corpora import _mirror_reachable

    reason = _mirror_reachable()
    if reason:
        pytest.skip(reason)
    m = fetch_corpus(str(tmp_path), sources=["foldoc"], holdout=None, progress=False)
    foldoc = m["sources"]["foldoc"]
    assert foldoc["documents_parsed"] > 10_000, foldoc
    rows = _read(m["files"]["train"])
    assert m["splits"]["train"]["sentences"] > 30_000
    assert len({r["id"] for r in rows}) == len(rows)
    assert not any("{" in r["text"] or "\n\n\n" in r["text"] for r in rows)
