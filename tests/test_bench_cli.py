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


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _main(path: Path):
    return _module(path).main


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


def test_generate_bench_paired_ratio_has_a_bootstrap_interval():
    """The KV-cache / fast-path verdicts: median of per-round paired ratios, a bootstrap
    interval of it that contains it, and the rounds won."""
    module = _module(ROOT / "bench" / "generate_throughput.py")
    same = {"slow": [2.0, 4.0, 3.0], "fast": [1.0, 2.0, 1.5]}
    assert module.ratio_ci(same, "slow", "fast") == (2.0, 2.0, 2.0, 1.0)
    noisy = {"slow": [1.1, 0.9, 1.2, 1.0, 1.05], "fast": [1.0, 1.0, 1.0, 1.0, 1.0]}
    med, lo, hi, wins = module.ratio_ci(noisy, "slow", "fast")
    assert med == pytest.approx(1.05) and lo <= med <= hi and lo < 1.0 < hi
    assert wins == pytest.approx(3 / 5)
    assert "faster in 3/5 rounds" in module.fmt_ratio(noisy, "slow", "fast")


@pytest.mark.parametrize("family", ["BaseLCM", "TwoTower", "OneTower"])
def test_the_kv_cache_never_does_more_work_per_concept(family):
    """The KV cache's verdict that a loaded machine cannot give by timing: per generated
    concept, the cached step dispatches no more aten operators than recomputing the context,
    and fewer FLOPs (exact counts, tiny model, the paper's 40 steps and guidance 3)."""
    import torch

    import lcm.models as models
    from lcm.normalizer import RobustNormalizer

    module = _module(ROOT / "bench" / "generate_throughput.py")
    torch.manual_seed(0)
    model = getattr(models, f"{family}Config").from_name("tiny", sonar_dim=32).build().eval()
    prompts = [torch.randn(12, 32) for _ in range(2)]
    variants = {"cached": {}, "uncached": dict(use_cache=False)}
    work = module.work_per_concept(model, prompts, RobustNormalizer(32), variants, n=(1, 2))
    (flops_c, ops_c), (flops_u, ops_u) = work["cached"], work["uncached"]
    assert ops_c <= ops_u, work
    assert flops_c < flops_u, work
