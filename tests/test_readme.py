"""The README's Python API block runs as written, on a tiny checkpoint standing in for the main
job's (same recipe family and mode, a test codec instead of MiniLM)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers_train import HashCodec, make_shards

from encoders.registry import register_codec
from lcm.cli import run

README = Path(__file__).resolve().parents[1] / "README.md"
MAIN_JOB_CKPT = "runs/demo/run/checkpoints/last.ckpt"


def python_blocks(section: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_the_python_api_block_runs_as_written(tmp_path, monkeypatch):
    shards = make_shards(tmp_path / "data", n_docs=30, summaries=True)
    root = tmp_path / "demo" / "run"
    run(
        ["fit", "--config", "configs/trainer/default.yaml", "--config",
         "configs/base_lcm/tiny_sft.yaml", f"--data.data_dir={shards}",
         f"--trainer.default_root_dir={root}", "--data.val_fraction=0.2", "--trainer.max_steps=3",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    )  # fmt: skip
    # The block loads by codec id (no codec= argument): teach the registry the test codec.
    register_codec(HashCodec.codec_id, lambda codec_id, **kw: HashCodec())
    block = python_blocks("Python API")[0]
    assert MAIN_JOB_CKPT in block
    monkeypatch.chdir(tmp_path)  # the block's relative path, from another folder than training
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(tmp_path / "demo")
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)  # noqa: S102 - the README's own code
    model = scope["model"]
    assert model.mode == "summarize" and scope["out"].concepts[0].shape[-1] == 16
    assert scope["out"].extras.get("exit_step") is None  # a Base-LCM checkpoint


@pytest.mark.parametrize("section", ["Python API"])
def test_readme_python_blocks_compile(section):
    for block in python_blocks(section):
        compile(block, str(README), "exec")
