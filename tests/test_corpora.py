"""Tests of lcm.corpora.debian: Translation-file parsing (hand-written snippets that imitate
Debian's format), the private apt configuration, the offline pipeline on seeded list files, and
one slow test that really fetches Translation-en from the Debian mirror."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

from lcm.corpora.debian import (
    DDTP_TO_FLORES,
    fetch_debian_descriptions,
    format_long_description,
    iter_translation_records,
    split_of,
    write_apt_config,
)

# Written by hand for these tests in the layout of a Translation-<lang> file; not real data.
SNIPPET_EN = """\
Package: frobnicator
Description-md5: 0123456789abcdef0123456789abcdef
Description-en: tool to frobnicate widgets
 Frobnicator turns plain widgets into frobnicated
 widgets. It is fast.
 .
 Features:
  * parallel frobnication of many widgets at once,
    using all cores
  * a café-friendly “quiet” mode
 - dry runs
 .
 Some text after the list.

Package: frobnicator-doc
Description-md5: fedcba9876543210fedcba9876543210
Description-en: documentation for frobnicator
 Frobnicator turns plain widgets into frobnicated
 widgets. It is fast.
 .
 Features:
  * parallel frobnication of many widgets at once,
    using all cores
  * a café-friendly “quiet” mode
 - dry runs
 .
 Some text after the list.

Package: tiny
Description-md5: 11111111111111111111111111111111
Description-en: a package with a one-sentence description
 Just one sentence here.
Package: nolong
Description-md5: 22222222222222222222222222222222
Description-en: synopsis only

Package: indented
Description-md5: 33333333333333333333333333333333
Description-en: everything indented by two more spaces
   First paragraph, wrapped
   over two lines.
   .
   o  An old-style bullet,
      continued.
   o  Another one.
   1. A numbered item.
"""

SNIPPET_FR = """\
Package: frobnicator
Description-md5: 0123456789abcdef0123456789abcdef
Description-fr: outil pour frobniquer des widgets
 Frobnicator transforme des widgets ordinaires en widgets
 frobniqués. Il est rapide.
 .
 Fonctionnalités :
  * frobnication parallèle ;
  * mode « silencieux ».

Package: tiny
Description-md5: 11111111111111111111111111111111
Description-fr: un paquet très court
 Une seule phrase ici.
"""

SNIPPET_ZH = """\
Package: frobnicator
Description-md5: 0123456789abcdef0123456789abcdef
Description-zh_CN: 部件处理工具
 本软件包可以处理
 部件。它很快。
"""

# A Packages file with Source fields (frobnicator-doc is built from the frobnicator source).
PACKAGES = """\
Package: frobnicator
Version: 1.0-1
Description-md5: 0123456789abcdef0123456789abcdef

Package: frobnicator-doc
Source: frobnicator (1.0-1)
Version: 1.0-1

Package: tiny
Version: 2

Package: indented
Source: indented-src
"""


def _records(text: str, lang: str):
    return list(iter_translation_records(text.splitlines(keepends=True), lang))


def test_parse_english_snippet_exactly():
    recs = _records(SNIPPET_EN, "en")
    assert [r.package for r in recs] == [
        "frobnicator",
        "frobnicator-doc",
        "tiny",
        "nolong",
        "indented",
    ]
    frob = recs[0]
    assert frob.md5 == "0123456789abcdef0123456789abcdef"
    assert frob.lang == "en"
    assert frob.summary == "tool to frobnicate widgets"
    assert frob.text == (
        "Frobnicator turns plain widgets into frobnicated widgets. It is fast.\n\n"
        "Features:\n\n"
        "parallel frobnication of many widgets at once, using all cores\n\n"
        "a café-friendly “quiet” mode\n\n"
        "dry runs\n\n"
        "Some text after the list."
    )
    assert recs[2].text == "Just one sentence here."
    # a record right after another without a blank line is still separate
    assert recs[3].summary == "synopsis only" and recs[3].text == ""
    assert recs[4].text == (
        "First paragraph, wrapped over two lines.\n\n"
        "An old-style bullet, continued.\n\n"
        "Another one.\n\n"
        "A numbered item."
    )


def test_parse_translations_non_ascii_and_cjk():
    fr = _records(SNIPPET_FR, "fr")
    assert fr[0].summary == "outil pour frobniquer des widgets"
    assert fr[0].text == (
        "Frobnicator transforme des widgets ordinaires en widgets frobniqués. Il est rapide.\n\n"
        "Fonctionnalités :\n\n"
        "frobnication parallèle ;\n\n"
        "mode « silencieux »."
    )
    zh = _records(SNIPPET_ZH, "zh_CN")
    # wrapped CJK lines are joined without a space
    assert zh[0].text == "本软件包可以处理部件。它很快。"
    assert zh[0].md5 == fr[0].md5 == _records(SNIPPET_EN, "en")[0].md5


def test_format_long_description_rules():
    # "o" is a bullet only when indented, or followed by 2 spaces / a capital letter
    assert format_long_description([" o jogo é bom", " e rápido."]) == "o jogo é bom e rápido."
    assert format_long_description([" o  Item", " .", " text"]) == "Item\n\ntext"
    # a change of indentation outside a list starts a new block (verbatim lines)
    assert format_long_description([" Usage:", "   frob --all"]) == "Usage:\n\nfrob --all"
    assert format_long_description([" a\tb", " c  d"]) == "a b c d"
    assert format_long_description([]) == ""


def test_ddtp_codes_map_to_flores():
    assert DDTP_TO_FLORES["en"] == "eng_Latn"
    assert DDTP_TO_FLORES["zh_CN"] == "zho_Hans"
    assert DDTP_TO_FLORES["ru"] == "rus_Cyrl"
    assert all(len(v) == 8 and v[3] == "_" for v in DDTP_TO_FLORES.values())


def test_split_is_deterministic_and_proportional():
    names = [f"pkg{i}" for i in range(20_000)]
    splits = [split_of(n) for n in names]
    assert splits == [split_of(n) for n in names]
    share = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert abs(share["test"] - 0.05) < 0.01 and abs(share["valid"] - 0.05) < 0.01
    assert {split_of(n, 0.0, 0.0) for n in names[:100]} == {"train"}


def test_private_apt_config(tmp_path):
    conf = write_apt_config(tmp_path / "apt", ["en", "fr"])
    text = conf.read_text()
    root = str((tmp_path / "apt").resolve())
    for key in ("Dir::State ", "Dir::Cache ", "Dir::Etc::Parts ", "Dir::Etc::SourceParts "):
        line = next(x for x in text.splitlines() if x.startswith(key))
        assert root in line, line
    assert 'Acquire::Languages { "en"; "fr"; };' in text
    assert 'Acquire::GzipIndexes "false";' in text
    assert list((tmp_path / "apt/etc/apt.conf.d").iterdir()) == []
    if shutil.which("apt-config") is None:
        pytest.skip("apt-config not installed: cannot check what apt makes of the config")
    env = dict(os.environ, APT_CONFIG=str(conf))
    dump = subprocess.run(["apt-config", "dump"], env=env, capture_output=True, text=True).stdout
    # our languages are on (apt-config itself lists "none" last, so that says nothing) ...
    assert 'Acquire::Languages:: "en";' in dump and 'Acquire::Languages:: "fr";' in dump
    assert 'Acquire::GzipIndexes "false";' in dump
    # ... and nothing of the system's apt.conf.d leaks in (e.g. its post-update hooks)
    system = subprocess.run(
        ["apt-config", "dump"],
        env={k: v for k, v in os.environ.items() if k != "APT_CONFIG"},
        capture_output=True,
        text=True,
    ).stdout
    hooks = [x for x in system.splitlines() if "Invoke" in x]
    assert not [x for x in hooks if x in dump.splitlines()]


def _seed_lists(out: Path) -> None:
    """Put hand-written index files where apt would leave them, so no network is needed."""
    lists = out / "apt/state/lists"
    lists.mkdir(parents=True)
    prefix = "example.org_debian_dists_stable_main_"
    (lists / f"{prefix}i18n_Translation-en").write_text(SNIPPET_EN, encoding="utf-8")
    (lists / f"{prefix}i18n_Translation-fr").write_text(SNIPPET_FR, encoding="utf-8")
    (lists / f"{prefix}i18n_Translation-zh%5fCN").write_text(SNIPPET_ZH, encoding="utf-8")
    (lists / f"{prefix}binary-amd64_Packages").write_text(PACKAGES, encoding="utf-8")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_fetch_pipeline_on_seeded_lists(tmp_path, monkeypatch):
    import lcm.corpora.debian as deb

    def no_network(*args, **kwargs):
        raise AssertionError("apt-get must not run when the Translation files are there")

    monkeypatch.setattr(deb, "_run_apt_update", no_network)
    out = tmp_path / "debian"
    _seed_lists(out)
    result = fetch_debian_descriptions(str(out), langs=["en", "fr", "zh_CN"])

    en = _read(out / "debian_descriptions.en.jsonl")
    # frobnicator-doc has the same text as frobnicator (deduplicated), tiny has one sentence,
    # nolong has no long description
    assert [r["id"] for r in en] == ["frobnicator", "indented"]
    assert en[0]["lang"] == "eng_Latn" and en[0]["summary"] == "tool to frobnicate widgets"
    assert en[0]["source"] == "frobnicator" and en[1]["source"] == "indented-src"
    assert en[0]["split"] == split_of("frobnicator") and en[1]["split"] == split_of("indented-src")
    assert set(en[0]) == {"id", "lang", "text", "summary", "md5", "source", "split"}
    counts = result["langs"]["en"]
    assert (counts["records"], counts["duplicate_text"], counts["short"], counts["empty"]) == (
        5,
        1,
        1,
        1,
    )
    fr = _read(out / "debian_descriptions.fr.jsonl")
    assert [r["id"] for r in fr] == ["frobnicator"] and fr[0]["lang"] == "fra_Latn"
    zh = _read(out / "debian_descriptions.zh_CN.jsonl")
    assert zh[0]["lang"] == "zho_Hans" and zh[0]["text"] == "本软件包可以处理部件。它很快。"
    assert result["aligned_all_langs"] == 1  # frobnicator's md5 is in all three
    assert result["aligned_with_en"]["fr"] == 1
    # per-split files hold exactly the rows of that split
    for split in ("train", "valid", "test"):
        rows = _read(out / f"debian_descriptions.en.{split}.jsonl")
        assert rows == [r for r in en if r["split"] == split]

    # idempotent: the second call reuses the outputs
    again = fetch_debian_descriptions(str(out), langs=["en", "fr", "zh_CN"])
    assert again["reused"] is True and again["langs"] == result["langs"]
    # other settings re-derive from the downloaded lists, still without network
    strict = fetch_debian_descriptions(str(out), langs=["en"], min_sentences=1)
    assert strict["reused"] is False and strict["langs"]["en"]["kept"] == 3  # + tiny


def test_unknown_language_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown DDTP language"):
        fetch_debian_descriptions(str(tmp_path), langs=["xx"])


def test_unreachable_mirror_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    import lcm.corpora.debian as deb

    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not installed")
    sources = tmp_path / "broken.sources"
    sources.write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: stable\nComponents: main\n"
    )
    monkeypatch.setattr(deb, "_system_source_files", lambda: [sources])
    with pytest.raises(RuntimeError, match="apt-get update (failed|did not finish)"):
        fetch_debian_descriptions(str(tmp_path / "out"), langs=["en"], timeout=60)
    assert not (tmp_path / "out/debian_descriptions.en.jsonl").exists()


def test_cli_subcommand(tmp_path, monkeypatch, capsys):
    import lcm.corpora.debian as deb
    from lcm.cli import run

    monkeypatch.setattr(deb, "_run_apt_update", lambda *a, **k: pytest.fail("no network here"))
    out = tmp_path / "debian"
    _seed_lists(out)
    result = run(["fetch-debian", "--out_dir", str(out), "--langs", "[en,fr]"])
    assert result["settings"]["langs"] == ["en", "fr"]
    assert json.loads(capsys.readouterr().out)["langs"]["fr"]["kept"] == 1


def _mirror_reachable(timeout: float = 10.0) -> str | None:
    """None if the first Debian mirror of the system's sources answers, else the reason."""
    if shutil.which("apt-get") is None:
        return "apt-get is not installed"
    from lcm.corpora.debian import _system_source_files

    hosts = []
    for f in _system_source_files():
        for word in " ".join(x.split("#")[0] for x in f.read_text().splitlines()).split():
            if word.startswith(("http://", "https://")):
                hosts.append(urlparse(word))
    if not hosts:
        return "no http(s) apt source configured"
    url = hosts[0]
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
    except OSError as e:
        return f"Debian mirror {url.hostname} not reachable within {timeout:.0f} s: {e}"
    return None


@pytest.mark.slow
def test_fetch_real_english(tmp_path):
    reason = _mirror_reachable()
    if reason:
        pytest.skip(reason)
    system_lists = Path("/var/lib/apt/lists")
    before = sorted(p.name for p in system_lists.iterdir()) if system_lists.is_dir() else None
    result = fetch_debian_descriptions(str(tmp_path / "debian"), langs=["en"], timeout=300)
    en = result["langs"]["en"]
    assert en["kept"] > 10_000, en
    assert set(en["splits"]) == {"train", "valid", "test"} and min(en["splits"].values()) > 100
    rows = _read(Path(result["files"]["en"]))
    assert len(rows) == en["kept"]
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["text"] for r in rows}) == len(rows)
    assert all(r["lang"] == "eng_Latn" and r["summary"] and len(r["md5"]) == 32 for r in rows)
    # no Debian markup survives: no leading spaces, no " ." separator lines, single blank lines
    lines = [line for r in rows for line in r["text"].split("\n")]
    assert not any(line.startswith(" ") or line.strip() == "." for line in lines)
    assert not any("\n\n\n" in r["text"] or r["text"] != r["text"].strip() for r in rows)
    # the system's apt lists were not touched
    if before is not None:
        assert sorted(p.name for p in system_lists.iterdir()) == before
