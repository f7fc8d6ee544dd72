"""The ``lcm`` entry point: one table of subcommands, one-line errors, ``--debug``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lcm.cli import COMMANDS, main, run


def test_every_command_names_an_importable_target():
    import importlib

    for name, cmd in COMMANDS.items():
        module, attr = cmd.target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    missing = tmp_path / "nowhere.jsonl"
    args = ["summarize", f"--checkpoint={tmp_path / 'none.ckpt'}", f"--inputs={missing}",
            f"--output={tmp_path / 'out.jsonl'}"]  # fmt: skip
    with pytest.raises(SystemExit) as ex:
        main(args)
    assert ex.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lcm summarize: error: ")
    assert "none.ckpt" in err[0] and "--debug shows the traceback" in err[0]
    with pytest.raises(FileNotFoundError):  # the same failure, raised as it is
        main([*args, "--debug"])
    with pytest.raises(FileNotFoundError):
        run(args)


def test_unknown_command_suggests_the_closest(capsys):
    with pytest.raises(SystemExit) as ex:
        run(["summrize"])
    assert ex.value.code == 2
    assert "unknown command 'summrize' (did you mean 'summarize'?)" in capsys.readouterr().err


def test_the_console_script_prints_the_table():
    out = subprocess.run(
        [sys.executable, "-m", "lcm.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in COMMANDS:
        assert f"  {name} " in out
