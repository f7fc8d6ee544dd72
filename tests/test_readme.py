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


def test_the_codec_block_runs_with_a_tiny_sonar_in_place_of_the_real_one(
    tiny_sonar, tmp_path, monkeypatch
):
    """The real SONAR's weights are a download: the block runs as written with one change, the
    asset names of a tiny SONAR built with sonar-space's own classes (same loading path)."""
    import json

    (block,) = [b for b in python_blocks("Python API") if "SonarCodec()" in b]
    offline = f'SonarCodec("{tiny_sonar.encoder}", "{tiny_sonar.decoder}", decode_max_len=8)'
    block = block.replace("SonarCodec()", offline)
    monkeypatch.chdir(tmp_path)
    rows = [{"id": f"d{i}", "text": "The cat sat. It purred.", "summary": "A cat."} for i in (1, 2)]
    Path("docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)  # noqa: S102 - the README's own code
    assert tuple(scope["vecs"].shape) == (2, scope["codec"].dim)
    summary = json.loads(Path("shards/summary.json").read_text())
    assert summary["documents"] == 2 and summary["rejected"] == 0


def test_the_multilingual_block_prints_what_it_says():
    (block,) = python_blocks("Multilingual offline codec")
    *body, expr, expected = block.strip().splitlines()
    scope: dict = {}
    code = "\n".join([*body, f"result = {expr}"])  # the last line's value, as a REPL shows it
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - the README's own code
    assert repr(scope["result"]) == expected.lstrip("# ")
