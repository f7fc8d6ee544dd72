"""The README's CLI block runs as written, command by command, in one folder the way a user runs
it from the repository root. What the test changes is listed in ``OFFLINE`` and nothing else:
apt is replaced by index files written into the place apt leaves them (same parser, same
outputs), SONAR (whose weights are a download) by a deterministic test codec, and the recipes'
step counts by a few steps."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from helpers_train import HashCodec
from test_corpora_prose import _seed_sources

from encoders.registry import register_codec
from lcm.cli import run

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: README text -> what runs here instead, and why (the only departures from the README).
OFFLINE = {
    # SONAR's weights cannot be downloaded here: the same command with a test codec
    "--codec encoders.sonar.SonarCodec --codec.device cuda": "--codec helpers_train.HashCodec",
}
#: Appended to every `lcm fit` (the recipe trains 500 steps; the resume adds 2 more).
SHORT_FIT = [
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=2",
    "--data.val_fraction=0.2",
    "--checkpoint.every_n_train_steps=2",
    "--trainer.enable_progress_bar=false",
]
RESUME_FIT = ["--trainer.max_steps=6"]


def cli_commands(section: str = "CLI") -> list[list[str]]:
    """The `lcm ...` command lines of a README section's bash blocks, as argument lists."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            for old, new in OFFLINE.items():
                line = line.replace(old, new)
            args = shlex.split(line, comments=True)
            if args:
                assert args[0] in ("lcm", "lcm-eval"), f"not an lcm command: {line}"
                commands.append(["eval", *args[1:]] if args[0] == "lcm-eval" else args[1:])
    return commands


def _seed_debian(out: Path, n: int = 60) -> None:
    """Translation files (en, fr, de) and a Packages file where `apt-get update` leaves them."""
    lists = out / "apt/state/lists"
    lists.mkdir(parents=True)
    prefix = "example.org_debian_dists_stable_main_"
    words = "tool library daemon editor viewer parser server client driver plugin".split()
    for lang, tag in (("en", "en"), ("fr", "fr"), ("de", "de")):
        records = []
        for i in range(n):
            name, kind = f"pkg{i}", words[i % len(words)]
            body = " ".join(
                f"{tag} sentence {k} about the {kind} number {i % 7}." for k in range(2 + i % 4)
            )
            records.append(
                f"Package: {name}\nDescription-md5: {i:032x}\n"
                f"Description-{lang}: {tag} {kind} for task {i % 5}\n {body}\n"
            )
        (lists / f"{prefix}i18n_Translation-{lang}").write_text("\n".join(records))
    packages = "\n".join(f"Package: pkg{i}\nVersion: 1\n" for i in range(n))
    (lists / f"{prefix}binary-amd64_Packages").write_text(packages)


@pytest.mark.slow
def test_the_cli_block_runs_as_written(tmp_path, monkeypatch, capsys):
    import lcm.corpora.debian as deb
    import lcm.corpora.prose as prose

    commands = cli_commands()
    assert [c[0] for c in commands] == [
        "--help", "fetch-debian", "fetch-corpus", "prepare", "check", "fit", "fit", "validate",
        "predict", "summarize", "fit-rvq", "eval",
    ]  # fmt: skip
    evaluation = cli_commands("Evaluation")  # continues in the same folder
    assert [c[0] for c in evaluation] == ["eval", "prepare", "eval"]
    commands += evaluation
    monkeypatch.setattr(deb, "_run_apt_update", lambda *a, **k: pytest.fail("no apt here"))
    monkeypatch.setattr(prose, "_apt_download", lambda *a, **k: pytest.fail("no apt here"))
    register_codec(HashCodec.codec_id, lambda codec_id, **kw: HashCodec())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")  # run from "the repository root"
    _seed_debian(tmp_path / "data")
    _seed_sources(tmp_path / "data" / "corpus")
    _seed_debian(tmp_path / "data" / "corpus" / "debian")  # fetch-corpus's fifth source

    results = {}
    fits = 0
    for args in commands:
        name = args[0]
        if name == "fit":
            args = [*args, *SHORT_FIT, *(RESUME_FIT if fits else [])]
            fits += 1
        capsys.readouterr()
        results.setdefault(name, []).append(run(args))
        printed = capsys.readouterr().out
        if name == "--help":
            assert "prepare" in printed and "summarize" in printed

    train = [json.loads(x) for x in Path("data/debian_descriptions.en.train.jsonl").open()]
    assert results["prepare"][0]["documents"] == len(train) > 30
    assert results["check"][0]["ok"]
    ckpt = Path("runs/two_tower_tiny_sft/checkpoints/last.ckpt")
    import torch

    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 6  # resumed
    assert list(Path("runs/two_tower_tiny_sft/predictions").glob("*.parquet"))
    test_rows = Path("data/debian_descriptions.en.test.jsonl").read_text().splitlines()
    out = [json.loads(x) for x in Path("summaries.jsonl").read_text().splitlines()]
    assert len(out) == len(test_rows) > 0 and all(
        "error" not in r and r["output"] and r["target_lang"] == "fra_Latn" for r in out
    )
    assert Path("rvq.pt").exists()
    report = (Path("runs/eval") / "report.md").read_text()
    assert "ROUGE" in report.upper() and "eng_Latn" in report
    results = json.loads((Path("runs/eval_pairs") / "results.json").read_text())
    assert sorted(results["summarization"]) == ["eng_Latn->eng_Latn", "eng_Latn->fra_Latn"]
    assert results["failures"] == [] and len(results["config"]["settings"]) == 2
    assert "two_tower_tiny_sft/last" in results["concepts"]  # --concept_dir: teacher-forced
    assert "eng_Latn->fra_Latn" in (Path("runs/eval_pairs") / "report.md").read_text()
