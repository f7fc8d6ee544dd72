"""Every benchmark takes typed options through jsonargparse (like the ``lcm`` commands), and
every benchmark command written in the README and bench/RESULTS.md still parses (the numbers
there must stay reproducible by their commands)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted(p for p in (ROOT / "bench").glob("*.py") if "def main(" in p.read_text())


def _main(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _parser(path: Path) -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(_main(path), as_positional=False)
    return parser


def recorded_commands() -> list[tuple[str, list[str]]]:
    """(bench name, arguments) of every ``python bench/<name>.py ...`` in the docs."""
    found = []
    for doc in (ROOT / "README.md", ROOT / "bench" / "RESULTS.md"):
        text = doc.read_text(encoding="utf-8").replace("\\\n", " ")
        for line in text.splitlines():
            m = re.search(r"python (bench/\w+\.py)(.*)", line)
            if m:
                args = shlex.split(m.group(2).split("`")[0], comments=True)
                found.append((Path(m.group(1)).stem, args))
    return found


def test_every_benchmark_has_a_typed_main():
    assert {p.stem for p in BENCHES} >= {
        "encode_throughput", "generate_throughput", "multilingual_codec", "scale",
        "solver_quality", "train_throughput",
    }  # fmt: skip
    for path in BENCHES:
        assert "import argparse" not in path.read_text(), f"{path.name} still uses argparse"


@pytest.mark.parametrize("name,args", recorded_commands(), ids=lambda x: str(x)[:40])
def test_recorded_benchmark_commands_parse(name, args):
    parser = _parser(ROOT / "bench" / f"{name}.py")
    parser.parse_args(["PATH" if a == "..." else a for a in args])  # "...": a path of yours


def test_a_wrong_option_is_an_error():
    parser = _parser(ROOT / "bench" / "generate_throughput.py")
    assert parser.parse_args(["--two_tower_denoiser", "true"]).two_tower_denoiser is True
    with pytest.raises(Exception, match="batches"):
        parser.parse_args(["--batches", "3"])
