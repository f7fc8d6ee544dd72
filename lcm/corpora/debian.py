"""Debian package descriptions and their DDTP translations as summarization pairs.

Every Debian package has a one-line synopsis and a long description; the Debian Description
Translation Project (DDTP) translates both into ~35 languages. Each ``Translation-<lang>`` index
file holds records of ``Package``, ``Description-md5`` (the md5 of the *English* description,
so it aligns translations across languages) and ``Description-<lang>`` (the synopsis on the first
line, then the long description in Debian's control-file formatting). This module fetches those
files with ``apt-get update`` under a private apt configuration, so the system's apt state is never
touched, and turns them into ``(text=long description, summary=synopsis)`` jsonl rows.

Output, per language ``<lang>`` (a DDTP code such as ``en``, ``fr``, ``zh_CN``)::

    <out_dir>/debian_descriptions.<lang>.jsonl          all rows, with a ``split`` field
    <out_dir>/debian_descriptions.<lang>.<split>.jsonl  the same rows, one file per split
    <out_dir>/debian_descriptions.manifest.json         settings and counts (reused on re-runs)
    <out_dir>/apt/                                      the private apt config, state and lists

Rows: ``id`` (binary package name), ``lang`` (FLORES-200 code), ``text``, ``summary``, ``md5``,
``source`` (source package) and ``split``. Rows are deduplicated by text within a language, keep
only descriptions of at least ``min_sentences`` sentences (counted with the project's sentence
splitter, so a list item counts as one) and are split by a hash of the *source* package name,
so binary packages built from one source (``libfoo1``, ``libfoo-dev``, ``libfoo-doc``), whose
descriptions are near-duplicates, always land in the same split, in every language.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

__all__ = [
    "DDTP_TO_FLORES",
    "DescriptionRecord",
    "fetch_debian_descriptions",
    "format_long_description",
    "iter_translation_records",
    "split_of",
    "write_apt_config",
]

#: Every language with a ``Translation-<lang>`` file in Debian bookworm's ``main`` component,
#: mapped to its FLORES-200 code. ``de_DE``, ``pt_AO`` and ``pt_BR`` share a code with their
#: parent language; ``zh`` (a handful of entries, simplified script) maps to ``zho_Hans``.
DDTP_TO_FLORES: dict[str, str] = {
    "ca": "cat_Latn",
    "cs": "ces_Latn",
    "da": "dan_Latn",
    "de": "deu_Latn",
    "de_DE": "deu_Latn",
    "el": "ell_Grek",
    "en": "eng_Latn",
    "eo": "epo_Latn",
    "es": "spa_Latn",
    "eu": "eus_Latn",
    "fi": "fin_Latn",
    "fr": "fra_Latn",
    "gl": "glg_Latn",
    "hr": "hrv_Latn",
    "hu": "hun_Latn",
    "id": "ind_Latn",
    "it": "ita_Latn",
    "ja": "jpn_Jpan",
    "km": "khm_Khmr",
    "ko": "kor_Hang",
    "ml": "mal_Mlym",
    "nb": "nob_Latn",
    "nl": "nld_Latn",
    "pl": "pol_Latn",
    "pt": "por_Latn",
    "pt_AO": "por_Latn",
    "pt_BR": "por_Latn",
    "ro": "ron_Latn",
    "ru": "rus_Cyrl",
    "sk": "slk_Latn",
    "sr": "srp_Cyrl",
    "sv": "swe_Latn",
    "tr": "tur_Latn",
    "uk": "ukr_Cyrl",
    "vi": "vie_Latn",
    "zh": "zho_Hans",
    "zh_CN": "zho_Hans",
    "zh_TW": "zho_Hant",
}

SPLITS = ("train", "valid", "test")
MANIFEST = "debian_descriptions.manifest.json"
_FORMAT_VERSION = 2

# A list item: "*", "-", "+", "•", "·" or "1." / "1)" then a space. "o " (used as a bullet in
# Debian) only counts when indented or followed by two spaces or a capital letter, because "o" is
# a word in Portuguese, Italian and Spanish.
_BULLET = re.compile(r"(?:[*\-+•·]|\d{1,2}[.)])\s+(?=\S)")
_O_BULLET = re.compile(r"o\s+(?=\S)")
_O_BULLET_UNINDENTED = re.compile(r"o(?:\s{2,}|\s(?=[A-Z]))")
# Hiragana, Katakana, CJK ideographs and CJK/full-width punctuation (Hangul uses spaces).
_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]*):[ \t]?(.*)")
_FETCHED = re.compile(r"Fetched ([0-9.,]+ ?[kMG]?B) in")


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DescriptionRecord:
    """One description from a ``Translation-<lang>`` file, already cleaned."""

    package: str
    md5: str
    lang: str  # the DDTP code, e.g. "en", "zh_CN"
    summary: str  # the synopsis (first line)
    text: str  # the long description: paragraphs and list items separated by blank lines


def format_long_description(lines: Sequence[str]) -> str:
    """Clean text from the continuation lines of a Debian ``Description`` field.

    ``lines`` are the lines after the synopsis, as in the file (each starts with one space).
    Debian's rules: a line ``" ."`` separates paragraphs; consecutive lines at one indentation
    are one wrapped paragraph; a list item starts with a marker (``*``, ``-``, ``+``, ``o``,
    ``1.``) and continues over more deeply indented lines. Output: one paragraph or list item per
    block (whitespace collapsed, list markers removed), blocks separated by a blank line, which
    the project's sentence splitter treats as a sentence end.
    """
    body: list[str] = []
    for raw in lines:
        line = raw.expandtabs(8).rstrip()
        if line.startswith(" "):  # the one space every continuation line carries
            line = line[1:]
        body.append(line)
    # Some maintainers indent the whole description; dedent by the common indentation.
    indents = [len(x) - len(x.lstrip(" ")) for x in body if x.strip() and x.strip() != "."]
    common = min(indents, default=0)
    blocks: list[str] = []
    cur: list[str] = []
    kind = ""  # "para" or "item"
    cur_indent = -1

    def flush() -> None:
        nonlocal cur, kind, cur_indent
        text = _join_wrapped(cur)
        if text:
            blocks.append(text)
        cur, kind, cur_indent = [], "", -1

    for line in body:
        stripped = line.strip()
        if not stripped:
            continue  # a stray empty line carries no information (it is not a " ." separator)
        if stripped == ".":
            flush()
            continue
        indent = len(line) - len(line.lstrip(" ")) - common
        marker = _BULLET.match(stripped) or (
            _O_BULLET.match(stripped) if indent > 0 else _O_BULLET_UNINDENTED.match(stripped)
        )
        if marker:
            flush()
            cur, kind, cur_indent = [stripped[marker.end() :]], "item", indent
        elif kind == "item" and indent > cur_indent:
            cur.append(stripped)
        elif kind == "para" and indent == cur_indent:
            cur.append(stripped)
        else:
            flush()
            cur, kind, cur_indent = [stripped], "para", indent
    flush()
    return "\n\n".join(blocks)


def _join_wrapped(lines: Sequence[str]) -> str:
    """Join wrapped lines with a space, except between two CJK characters (no word spaces)."""
    out = ""
    for line in lines:
        line = " ".join(line.split())
        if not line:
            continue
        if out and not (_CJK.match(out[-1]) and _CJK.match(line[0])):
            out += " "
        out += line
    return out


def _iter_stanzas(lines: Iterable[str]) -> Iterator[dict[str, list[str]]]:
    """Control-file stanzas as ``{field: [first line, continuation lines...]}``."""
    stanza: dict[str, list[str]] = {}
    last: str | None = None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip():
            if stanza:
                yield stanza
            stanza, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                stanza[last].append(line)
        else:
            m = _FIELD.match(line)
            if m is None:
                last = None
                continue
            last = m.group(1)
            if last == "Package" and "Package" in stanza:  # tolerate missing blank lines
                yield stanza
                stanza = {}
            stanza[last] = [m.group(2).strip()]
    if stanza:
        yield stanza


def iter_translation_records(lines: Iterable[str], lang: str) -> Iterator[DescriptionRecord]:
    """Parse a ``Translation-<lang>`` file (an iterable of its lines) into records.

    Records without a package, md5 or ``Description-<lang>`` field are skipped; a record whose
    long description is empty is returned with ``text == ""``.
    """
    key = f"Description-{lang}"
    for stanza in _iter_stanzas(lines):
        desc = stanza.get(key)
        if desc is None:  # also accept any single Description-* field (e.g. de_DE in a de file)
            found = [
                v
                for k, v in stanza.items()
                if k.startswith("Description-") and k != "Description-md5"
            ]
            desc = found[0] if len(found) == 1 else None
        package = stanza.get("Package", [""])[0]
        md5 = stanza.get("Description-md5", [""])[0]
        if not package or desc is None:
            continue
        yield DescriptionRecord(
            package=package,
            md5=md5,
            lang=lang,
            summary=" ".join(desc[0].split()),
            text=format_long_description(desc[1:]),
        )


def _iter_packages_sources(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """``(binary package, source package)`` pairs from an apt ``Packages`` file."""
    package = source = ""
    for raw in lines:
        if raw.startswith("Package:"):
            if package:
                yield package, source or package
            package, source = raw[8:].strip(), ""
        elif raw.startswith("Source:"):
            source = raw[7:].split("(")[0].strip()  # "Source: foo (1.2-3)" -> "foo"
    if package:
        yield package, source or package


def split_of(key: str, valid_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    """Deterministic split (``train``/``valid``/``test``) of a package or source name."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + valid_fraction:
        return "valid"
    return "train"


# ---------------------------------------------------------------------------------------------
# apt
# ---------------------------------------------------------------------------------------------

# System settings copied into the private config (they describe the network and the mirror, e.g.
# a snapshot mirror needs Check-Valid-Until "false"); everything else comes from our own file.
_INHERITED_KEYS = (
    "Acquire::Check-Valid-Until",
    "Acquire::Check-Date",
    "Acquire::ForceIPv4",
    "Acquire::ForceIPv6",
)
# Proxies are passed on the command line only, so that no credential is written under out_dir.
_PROXY_KEYS = ("Acquire::http::Proxy", "Acquire::https::Proxy", "Acquire::ftp::Proxy")


def _apt_config_values(keys: Sequence[str]) -> dict[str, str]:
    """Values of ``keys`` in the *system* apt configuration (missing keys are left out)."""
    if shutil.which("apt-config") is None:
        return {}
    env = {k: v for k, v in os.environ.items() if k != "APT_CONFIG"}
    try:
        out = subprocess.run(
            ["apt-config", "dump"], capture_output=True, text=True, timeout=30, env=env
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    values = {}
    for line in out.splitlines():
        name, _, rest = line.partition(" ")
        if name in keys and rest.endswith(";"):
            values[name] = rest[:-1].strip().strip('"')
    return values


def _system_source_files() -> list[Path]:
    """The system's active apt source files (``sources.list`` and ``sources.list.d``)."""
    etc = Path("/etc/apt")
    files = [etc / "sources.list"] if (etc / "sources.list").is_file() else []
    parts = etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    return [f for f in files if f.stat().st_size > 0]


def _q(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ValueError(f"unsupported character in apt config value {value!r}")
    return f'"{value}"'


def write_apt_config(root: str | Path, langs: Sequence[str], http_timeout: int = 20) -> Path:
    """Write a private apt configuration under ``root`` and return the path of its file.

    Everything apt reads or writes lives under ``root``: state and lists, cache, the (empty)
    ``apt.conf.d`` and preferences, and a copy of the system's source files. Only the system's
    keyrings (read-only, for the signatures) and the mirror/network settings listed in
    ``_INHERITED_KEYS`` come from the system. The system's ``apt.conf.d`` is not read, so its
    ``Acquire::Languages "none"`` (docker images) and its post-update hooks do not apply.
    """
    root = Path(root).resolve()
    for sub in (
        "etc/apt.conf.d",
        "etc/preferences.d",
        "etc/sources.list.d",
        "state/lists/partial",
        "cache/archives/partial",
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
    sources = root / "etc/sources.list.d"
    for old in sources.iterdir():
        old.unlink()
    for src in _system_source_files():
        shutil.copyfile(src, sources / src.name)
    status = root / "state/status"
    if not status.exists():
        status.write_text("")
    inherited = _apt_config_values(_INHERITED_KEYS)
    lines = [
        "// Private apt configuration written by lcm.corpora.debian; it touches nothing outside",
        "// this folder. Use: APT_CONFIG=<this file> apt-get update",
        f"Dir::State {_q(str(root / 'state'))};",
        f"Dir::State::Lists {_q(str(root / 'state/lists'))};",
        f"Dir::State::status {_q(str(status))};",
        f"Dir::Cache {_q(str(root / 'cache'))};",
        'Dir::Cache::pkgcache "";',
        'Dir::Cache::srcpkgcache "";',
        f"Dir::Etc::Main {_q(str(root / 'etc/apt.conf'))};",
        f"Dir::Etc::Parts {_q(str(root / 'etc/apt.conf.d'))};",
        f"Dir::Etc::Preferences {_q(str(root / 'etc/preferences'))};",
        f"Dir::Etc::PreferencesParts {_q(str(root / 'etc/preferences.d'))};",
        f"Dir::Etc::SourceList {_q(str(root / 'etc/sources.list'))};",
        f"Dir::Etc::SourceParts {_q(str(sources))};",
        "Acquire::Languages { " + " ".join(f"{_q(x)};" for x in langs) + " };",
        'Acquire::GzipIndexes "false";',
        'Acquire::IndexTargets::deb::Translations::DefaultEnabled "true";',
        'Acquire::IndexTargets::deb::Packages::DefaultEnabled "true";',  # for Source: fields
        f'Acquire::http::Timeout "{int(http_timeout)}";',
        f'Acquire::https::Timeout "{int(http_timeout)}";',
        'Acquire::Retries "1";',
    ]
    lines += [f"{k} {_q(v)};" for k, v in sorted(inherited.items())]
    conf = root / "apt.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _run_apt_update(conf: Path, timeout: float) -> tuple[str, float]:
    """Run ``apt-get update`` under ``conf``; return apt's "Fetched" size text and seconds."""
    if shutil.which("apt-get") is None:
        raise RuntimeError("fetch_debian_descriptions needs apt-get (a Debian/Ubuntu system)")
    cmd = ["apt-get", "-q", "update"]
    for key, value in _apt_config_values(_PROXY_KEYS).items():
        cmd += ["-o", f"{key}={value}"]
    env = dict(os.environ, APT_CONFIG=str(conf), LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(
            f"apt-get update did not finish within {timeout:.0f} s (is the Debian mirror "
            f"reachable?); config: {conf}"
        ) from e
    seconds = time.perf_counter() - t0
    log = (proc.stdout or "") + (proc.stderr or "")
    (conf.parent / "apt-get-update.log").write_text(log)
    m = _FETCHED.search(log)
    failed = proc.returncode != 0 or "\nE: " in "\n" + log or "Err:" in log
    if failed and not _translation_files(conf.parent / "state/lists"):
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise RuntimeError(
            f"apt-get update failed (exit {proc.returncode}) with config {conf}; is the network "
            f"or the Debian mirror reachable?\n{tail}"
        )
    return (m.group(1) if m else "0 B"), seconds


def _translation_files(lists: Path) -> dict[str, list[Path]]:
    """``{ddtp_lang: [files]}`` of the Translation files in an apt lists folder, in suite order.

    The main suite (e.g. ``bookworm``) comes before ``-updates`` and ``-security``, so its record
    of a package wins when a later suite repeats the package.
    """
    found: dict[str, list[Path]] = {}
    if not lists.is_dir():
        return found
    for p in lists.iterdir():
        # apt escapes "_" in file names: Translation-zh_CN is stored as Translation-zh%5fCN
        m = re.search(r"_i18n_Translation-([A-Za-z_%0-9]+)$", p.name)
        if m and p.is_file() and p.stat().st_size > 0:
            found.setdefault(unquote(m.group(1)), []).append(p)

    def order(p: Path) -> tuple[int, str]:
        later = any(s in p.name for s in ("-updates_", "-security_", "-backports_", "-proposed"))
        return (1 if later else 0, p.name)

    return {lang: sorted(files, key=order) for lang, files in found.items()}


def _source_map(lists: Path) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for p in sorted(lists.glob("*_Packages")):
        with open(p, encoding="utf-8", errors="replace") as f:
            for package, source in _iter_packages_sources(f):
                mapping.setdefault(package, source)
    return mapping


# ---------------------------------------------------------------------------------------------
# The fetcher
# ---------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def fetch_debian_descriptions(
    out_dir: str,
    langs: Sequence[str] = ("en", "fr", "de"),
    min_sentences: int = 2,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    max_per_split: int | None = None,
    refresh: bool = False,
    timeout: float = 300.0,
) -> dict:
    """Fetch Debian package descriptions (and DDTP translations) as summarization jsonl files.

    Runs ``apt-get update`` with a private apt configuration under ``out_dir/apt`` (the system's
    apt state is never changed; works as root and as an ordinary user), parses the
    ``Translation-<lang>`` files and writes ``out_dir/debian_descriptions.<lang>.jsonl`` plus one
    file per split. Rows: ``id`` (package), ``lang`` (FLORES-200), ``text`` (long description),
    ``summary`` (synopsis), ``md5`` (``Description-md5``, aligns languages), ``source`` and
    ``split``. Re-running reuses the downloaded files and the outputs.

    Args:
        out_dir: output folder (created).
        langs: DDTP language codes (``en``, ``fr``, ``de``, ``da``, ``it``, ``zh_CN``, ...), or
            ``[all]`` for every language in ``DDTP_TO_FLORES``.
        min_sentences: keep descriptions with at least this many sentences (list items count).
        valid_fraction: share of source packages in the validation split.
        test_fraction: share of source packages in the test split.
        max_per_split: keep at most this many rows per split and language (a deterministic
            sample for quick runs; ``None`` keeps all).
        refresh: run ``apt-get update`` again even if the Translation files are already there.
        timeout: seconds before ``apt-get update`` is abandoned with an error.

    Returns:
        Counts per language and split, cross-language alignment by md5, download size and time;
        also written to ``out_dir/debian_descriptions.manifest.json``.
    """
    langs = list(langs)
    if langs == ["all"]:
        langs = list(DDTP_TO_FLORES)
    unknown = [x for x in langs if x not in DDTP_TO_FLORES]
    if unknown:
        raise ValueError(f"unknown DDTP language(s) {unknown}; known: {sorted(DDTP_TO_FLORES)}")
    if min_sentences < 0 or not 0 <= valid_fraction + test_fraction < 1:
        raise ValueError("need min_sentences >= 0 and 0 <= valid_fraction + test_fraction < 1")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "version": _FORMAT_VERSION,
        "langs": langs,
        "min_sentences": min_sentences,
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "max_per_split": max_per_split,
    }
    manifest_path = out / MANIFEST
    outputs = [out / f"debian_descriptions.{x}.jsonl" for x in langs]
    if not refresh and manifest_path.exists() and all(p.exists() for p in outputs):
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("settings") == settings:
            manifest["reused"] = True
            return manifest

    t0 = time.perf_counter()
    apt_root = out / "apt"
    lists = apt_root / "state/lists"
    available = _translation_files(lists)
    fetched, apt_seconds = "0 B (reused)", 0.0
    if refresh or any(x not in available for x in langs):
        conf = write_apt_config(apt_root, sorted(set(langs) | set(available)))
        fetched, apt_seconds = _run_apt_update(conf, timeout)
        available = _translation_files(lists)
    missing = [x for x in langs if x not in available]
    if "en" in langs and "en" in missing:
        raise RuntimeError(f"apt-get update brought no Translation-en; see {apt_root}")
    sources = _source_map(lists)

    from lcm.splitting import SentenceSplitter

    splitter = SentenceSplitter(max_chars=0)
    per_lang: dict[str, dict] = {}
    md5s: dict[str, set[str]] = {}
    for lang in langs:
        if lang in missing:
            continue
        flores = DDTP_TO_FLORES[lang]
        by_package: dict[str, DescriptionRecord] = {}
        raw = 0
        for path in available[lang]:
            with open(path, encoding="utf-8", errors="replace") as f:
                for rec in iter_translation_records(f, lang):
                    raw += 1
                    by_package.setdefault(rec.package, rec)  # the main suite's record wins
        counts = {
            "records": raw,
            "packages": len(by_package),
            "empty": 0,
            "duplicate_text": 0,
            "short": 0,
        }
        seen: set[str] = set()
        rows: list[dict] = []
        for package in sorted(by_package):
            rec = by_package[package]
            if not rec.text or not rec.summary:
                counts["empty"] += 1
                continue
            if rec.text in seen:
                counts["duplicate_text"] += 1
                continue
            seen.add(rec.text)
            if min_sentences > 1 and len(splitter.split(rec.text, flores)) < min_sentences:
                counts["short"] += 1
                continue
            source = sources.get(package, package)
            rows.append(
                {
                    "id": package,
                    "lang": flores,
                    "text": rec.text,
                    "summary": rec.summary,
                    "md5": rec.md5,
                    "source": source,
                    "split": split_of(source, valid_fraction, test_fraction),
                }
            )
        if max_per_split is not None:  # deterministic sample: lowest hash of the package name
            kept = []
            for split in SPLITS:
                part = [r for r in rows if r["split"] == split]
                part.sort(key=lambda r: hashlib.sha256(r["id"].encode()).digest())
                kept += part[:max_per_split]
            rows = sorted(kept, key=lambda r: r["id"])
        _write_jsonl(out / f"debian_descriptions.{lang}.jsonl", rows)
        for split in SPLITS:
            _write_jsonl(
                out / f"debian_descriptions.{lang}.{split}.jsonl",
                (r for r in rows if r["split"] == split),
            )
        counts["kept"] = len(rows)
        counts["splits"] = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
        per_lang[lang] = counts
        md5s[lang] = {r["md5"] for r in rows}

    done = [x for x in langs if x in md5s]
    aligned = set.intersection(*(md5s[x] for x in done)) if done else set()
    list_bytes = sum(p.stat().st_size for p in lists.iterdir() if p.is_file())
    manifest = {
        "settings": settings,
        "out_dir": str(out),
        "files": {x: str(out / f"debian_descriptions.{x}.jsonl") for x in done},
        "langs": per_lang,
        "missing_langs": missing,
        "aligned_all_langs": len(aligned),
        "aligned_with_en": {x: len(md5s[x] & md5s["en"]) for x in done if "en" in md5s},
        "download": fetched,
        "apt_seconds": round(apt_seconds, 2),
        "lists_mb_on_disk": round(list_bytes / 1e6, 1),
        "seconds": round(time.perf_counter() - t0, 2),
        "reused": False,
    }
    tmp = manifest_path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, manifest_path)
    return manifest
