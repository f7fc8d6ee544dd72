"""``lcm <command> --help`` answers from a cache of the real parser's text, which any edit of the
sources or upgrade of the parser libraries invalidates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcm import cli

ROOT = Path(__file__).resolve().parent.parent


def _lcm(args: list[str], cache: Path, **env) -> subprocess.CompletedProcess:
    script = "import sys; sys.argv[0] = 'lcm'; from lcm.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "XDG_CACHE_HOME": str(cache), "COLUMNS": "100", **env},
    )


def test_help_is_built_once_then_answered_from_the_cache_without_heavy_imports(tmp_path):
    live = _lcm(["check", "--help"], tmp_path, LCM_NO_HELP_CACHE="1")
    assert live.returncode == 0 and "usage: lcm check" in live.stdout
    assert not (tmp_path / "lcm").exists()  # LCM_NO_HELP_CACHE: nothing written

    first = _lcm(["check", "--help"], tmp_path)  # builds the entry
    (cache_file,) = (tmp_path / "lcm" / "help").glob("*.json")
    assert first.stdout == live.stdout
    assert json.loads(cache_file.read_text()) == {"check": live.stdout}

    # The second answer comes from the cache: a marked entry is what it prints, and neither
    # torch nor Lightning is imported for it (they are what makes a live --help take seconds).
    cache_file.write_text(json.dumps({"check": "cached check help\n", "fit": "cached fit\n"}))
    probe = (
        "import sys; sys.argv[0] = 'lcm'\n"
        "from lcm.cli import run\n"
        "try:\n    run(['fit', '--help'])\nexcept SystemExit as ex:\n    assert ex.code == 0\n"
        "heavy = [m for m in ('torch', 'lightning', 'datasets') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "cached fit\nHEAVY []\n"
    assert _lcm(["check", "--help"], tmp_path).stdout == "cached check help\n"


def test_build_help_cache_matches_the_live_help_of_each_command(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "100")
    path = cli.build_help_cache(["check", "fetch-debian"])
    cached = json.loads(path.read_text())
    for name in ("check", "fetch-debian"):
        live = _lcm([name, "--help"], tmp_path, LCM_NO_HELP_CACHE="1")
        assert cached[name] == live.stdout and f"usage: lcm {name}" in live.stdout


def test_the_fingerprint_changes_with_a_source_edit_and_a_library_version(tmp_path, monkeypatch):
    source = tmp_path / "lcm" / "a.py"
    source.parent.mkdir()
    source.write_text("x = 1\n")
    before = cli._source_fingerprint(tmp_path)
    source.write_text("x = 22\n")
    assert cli._source_fingerprint(tmp_path) != before

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = cli._help_cache_file()
    monkeypatch.setattr(cli, "_HELP_DEPENDS_ON", (*cli._HELP_DEPENDS_ON, "pytest"))
    assert cli._help_cache_file() != path  # another library version, another cache file
    assert cli._help_cache_file().parent == path.parent


def test_a_new_fingerprint_replaces_the_old_cache_file_of_this_installation(tmp_path):
    folder = tmp_path / "help"
    folder.mkdir()
    (folder / "aaaa-old.json").write_text("{}")
    (folder / "bbbb-other.json").write_text("{}")  # another checkout's cache stays
    cli._write_help_cache(folder / "aaaa-new.json", {"check": "x\n"})
    assert sorted(p.name for p in folder.iterdir()) == ["aaaa-new.json", "bbbb-other.json"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_a_parser_error_is_never_cached(tmp_path, flag):
    done = _lcm(["check", flag], tmp_path)
    assert done.returncode == 0
    bad = _lcm(["check", "--no-such-option"], tmp_path)
    assert bad.returncode != 0
    (cache_file,) = (tmp_path / "lcm" / "help").glob("*.json")
    assert list(json.loads(cache_file.read_text())) == ["check"]
