"""kill -9 during ``lcm summarize`` and ``lcm eval``, then a rerun: the result equals an
uninterrupted run's (issue 11). The killed process is either a forked child (everything already
imported, so the test takes seconds) or the real command in a fresh process (``python -m lcm.cli
summarize|eval``, as a user runs it, marked slow), killed with SIGKILL: no handler, no
cleanup."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers_train import (
    FixedHashCodec,
    HashCodec,
    fresh_env,
    make_shards,
    sentence,
)

from lcm.api import ConceptModel, Settings
from lcm.apps.files import generate_file
from lcm.cli import run

SETTINGS = Settings(max_new_concepts=2, num_inference_steps=3, seed=7)


@pytest.fixture(scope="module")
def two_tower(tmp_path_factory) -> Path:
    """A summarization Two-Tower (diffusion: every output depends on its noise draws)."""
    root = tmp_path_factory.mktemp("kill-apps")
    shards = make_shards(root / "data", n_docs=30, summaries=True)
    run(
        ["fit", "--config", "configs/trainer/default.yaml", "--config",
         "configs/two_tower/tiny_sft.yaml", f"--data.data_dir={shards}",
         f"--trainer.default_root_dir={root / 'run'}", "--data.val_fraction=0.2",
         "--trainer.max_steps=3", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false", "--trainer.logger=false"]
    )  # fmt: skip
    return root / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("kill-docs") / "docs.jsonl"
    rows = [
        {"id": f"d{i}", "text": " ".join(sentence(rng.randrange(23)) for _ in range(1 + i % 4))}
        for i in range(24)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _slowly(target, *args, **kwargs) -> None:
    """Run ``target`` in this forked child with every generation call slowed down."""
    original = ConceptModel.predict_concepts

    def slow(self, *a, **k):
        time.sleep(0.15)
        return original(self, *a, **k)

    ConceptModel.predict_concepts = slow  # only in this child
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork()
    target(*args, **kwargs)


def _kill_when(proc, ready, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.is_alive() and time.time() < deadline, f"exit code {proc.exitcode}"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_kill_summarize_then_rerun_writes_the_uninterrupted_file(
    two_tower, documents, tmp_path, one_thread
):
    kw = dict(settings=SETTINGS, codec=FixedHashCodec(), progress=False)
    straight = tmp_path / "straight.jsonl"
    generate_file(str(two_tower), str(documents), str(straight), batch_size=4, **kw)

    killed = tmp_path / "killed.jsonl"
    want = random.Random(1).randint(4, 19)  # rows written before the kill
    proc = multiprocessing.get_context("fork").Process(
        target=_slowly,
        args=(generate_file, str(two_tower), str(documents), str(killed)),
        kwargs=dict(batch_size=4, **kw),
        daemon=True,
    )
    proc.start()
    _kill_when(proc, lambda: _lines(killed) >= want)
    before = _lines(killed)  # complete lines only: a line cut by the kill has no end
    assert 0 < before < 24  # really cut short
    # Another batch size on the rerun: a document's output does not depend on its batch.
    counts = generate_file(str(two_tower), str(documents), str(killed), batch_size=3, **kw)
    assert counts == {"documents": 24, "already_done": before, "written": 24 - before, "errors": 0}
    assert killed.read_text() == straight.read_text()


def test_a_line_cut_by_a_kill_is_generated_again_and_other_garbage_is_an_error(
    two_tower, documents, tmp_path, capsys
):
    kw = dict(settings=SETTINGS, codec=FixedHashCodec(), progress=False, batch_size=5)
    straight = tmp_path / "straight.jsonl"
    generate_file(str(two_tower), str(documents), str(straight), **kw)
    lines = straight.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:9]) + lines[9][:17])  # a kill in the middle of line 10
    (tmp_path / "cut.jsonl.settings.json").write_bytes(
        (tmp_path / "straight.jsonl.settings.json").read_bytes()
    )
    counts = generate_file(str(two_tower), str(documents), str(cut), **kw)
    assert counts == {"documents": 24, "already_done": 9, "written": 15, "errors": 0}
    assert "line 10 was cut short" in capsys.readouterr().err
    assert cut.read_text() == straight.read_text()

    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "not json\n" + lines[1])
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: .*new --output"):
        generate_file(str(two_tower), str(documents), str(bad), **kw)
    assert bad.read_text() == lines[0] + "not json\n" + lines[1]  # nothing dropped


def _eval_docs(tmp_path: Path) -> Path:
    """12 documents with reference summaries for the eval kill tests."""
    docs = tmp_path / "eval.jsonl"
    rows = [
        {"id": f"e{i}", "text": f"{sentence(i % 23)} {sentence((i * 5) % 23)}",
         "summary": sentence((3 * i + 7) % 23), "lang": "eng_Latn"}
        for i in range(12)
    ]  # fmt: skip
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return docs


def _strip(result: dict) -> dict:
    result = {k: v for k, v in result.items() if k != "run"}
    return {**result, "config": {k: v for k, v in result["config"].items() if k != "out_dir"}}


def test_kill_eval_then_rerun_gives_the_uninterrupted_results(two_tower, tmp_path, one_thread):
    from encoders.registry import register_codec
    from eval.run import evaluate

    register_codec(HashCodec.codec_id, lambda codec_id, **kw: FixedHashCodec())
    docs = _eval_docs(tmp_path)
    kw = dict(
        checkpoints=[str(two_tower)],
        data=[str(docs)],
        settings=[{"max_new_concepts": 2, "num_inference_steps": 3}],
        batch_size=2,
        progress=False,
    )
    straight = evaluate(out_dir=str(tmp_path / "a"), **kw)
    out = tmp_path / "b"
    store = out / "documents.jsonl"
    proc = multiprocessing.get_context("fork").Process(
        target=_slowly, args=(evaluate,), kwargs=dict(out_dir=str(out), **kw), daemon=True
    )
    proc.start()
    # baselines are written first; kill once some model records are there too
    _kill_when(proc, lambda: store.exists() and '"kind": "model"' in store.read_text())
    assert not (out / "results.json").exists()  # really cut short
    resumed = evaluate(out_dir=str(out), **kw)
    assert resumed["run"]["computed"] > 0
    assert _strip(resumed) == _strip(straight)
    assert (out / "report.md").read_text() == (tmp_path / "a" / "report.md").read_text()


GENERATE = ("--settings.max_new_concepts=2", "--settings.num_inference_steps=3")


@pytest.mark.slow
def test_kill_a_fresh_lcm_summarize_process_then_rerun_writes_the_uninterrupted_file(
    two_tower, documents, tmp_path, one_thread
):
    """``lcm summarize`` killed (SIGKILL) in a process that inherits nothing from the test,
    then rerun in another: both fork from one clean interpreter that imports the modules once
    (:class:`helpers_train.FreshLcm`) while the test computes the uninterrupted file."""
    from helpers_train import FreshLcm

    killed = tmp_path / "killed.jsonl"

    def command(batch_size: int) -> list[str]:
        return ["summarize", f"--checkpoint={two_tower}", f"--inputs={documents}",
                f"--output={killed}", "--codec=helpers_train.SlowFixedHashCodec",
                f"--batch_size={batch_size}", *GENERATE, "--settings.seed=7",
                "--progress=false"]  # fmt: skip

    with FreshLcm(fresh_env(), ("lcm.apps.files", "helpers_train")) as lcm:  # imports meanwhile
        straight = tmp_path / "straight.jsonl"
        generate_file(str(two_tower), str(documents), str(straight), batch_size=4,
                      settings=SETTINGS, codec=FixedHashCodec(), progress=False)  # fmt: skip
        want = random.Random(2).randint(4, 19)  # rows written before the kill
        lcm.kill_when(command(4), lambda: _lines(killed) >= want, tmp_path / "killed.log",
                      LCM_TEST_ENCODE_SLEEP="0.3")  # fmt: skip
        before = _lines(killed)  # complete lines only: a line cut by the kill has no end
        assert want <= before < 24  # really cut short
        out = lcm.run(command(3), tmp_path / "rerun.log", LCM_TEST_ENCODE_SLEEP="0")
    counts = json.loads(out)  # the command prints its counts as JSON
    assert counts == {"documents": 24, "already_done": before, "written": 24 - before, "errors": 0}
    assert killed.read_bytes() == straight.read_bytes()


@pytest.mark.slow
def test_kill_a_fresh_lcm_eval_process_then_rerun_gives_the_uninterrupted_results(
    two_tower, tmp_path, one_thread
):
    """``lcm eval`` killed (SIGKILL) and rerun in processes forked from one clean interpreter
    (:class:`helpers_train.FreshLcm`), which imports the modules while the test computes the
    uninterrupted results."""
    from helpers_train import FreshLcm

    from eval.run import evaluate

    docs = _eval_docs(tmp_path)
    out = tmp_path / "b"
    store = out / "documents.jsonl"
    args = ["eval", f"--checkpoints=[{two_tower}]", f"--data=[{docs}]",
            f"--out_dir={out}", '--settings=[{"max_new_concepts": 2, '
            '"num_inference_steps": 3}]', "--codec=helpers_train.SlowFixedHashCodec",
            "--batch_size=2", "--plots=false", "--progress=false"]  # fmt: skip
    want = random.Random(3).randint(1, 10)  # model records (of 12) before the kill

    def models() -> int:
        return store.read_text().count('"kind": "model"') if store.exists() else 0

    with FreshLcm(fresh_env(), ("eval.run", "helpers_train")) as lcm:  # imports meanwhile
        straight = evaluate([str(two_tower)], data=[str(docs)], out_dir=str(tmp_path / "a"),
                            settings=[{"max_new_concepts": 2, "num_inference_steps": 3}],
                            codec=FixedHashCodec(), batch_size=2, plots=False,
                            progress=False)  # fmt: skip
        lcm.kill_when(args, lambda: models() >= want, tmp_path / "killed.log",
                      LCM_TEST_ENCODE_SLEEP="0.3")  # fmt: skip
        assert not (out / "results.json").exists() and models() < 12  # really cut short
        printed = lcm.run(args, tmp_path / "rerun.log", LCM_TEST_ENCODE_SLEEP="0")
    run = json.loads(printed.splitlines()[-1])
    assert run["computed"] > 0
    resumed = json.loads((out / "results.json").read_text())
    assert _strip(resumed) == _strip(straight)
    assert (out / "report.md").read_text() == (tmp_path / "a" / "report.md").read_text()


def test_summarize_reports_progress_as_plain_lines_in_a_log(two_tower, documents, tmp_path, capsys):
    generate_file(
        str(two_tower),
        str(documents),
        str(tmp_path / "out.jsonl"),
        settings=SETTINGS,
        codec=FixedHashCodec(),
        batch_size=8,
    )
    err = capsys.readouterr().err  # not a terminal here: plain lines, as in a log file
    assert "lcm summarize generate: 24/24 documents, " in err and "documents/s" in err


def test_eval_scores_the_text_lcm_summarize_writes(two_tower, tmp_path):
    """`lcm eval` and `lcm summarize` render generated concepts the same way (a repeated
    decoded sentence cuts the text) and, with per-document seeds, generate the same concepts
    whatever the batch: the hypothesis eval scores is the output summarize writes."""
    from encoders.registry import register_codec
    from eval.run import evaluate

    register_codec(HashCodec.codec_id, lambda codec_id, **kw: FixedHashCodec())
    rows = [
        {"id": f"e{i}", "text": f"{sentence(i % 23)} {sentence((i * 5) % 23)}",
         "summary": sentence((3 * i + 7) % 23), "lang": "eng_Latn"}
        for i in range(10)
    ]  # fmt: skip
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate([str(two_tower)], data=[str(docs)], out_dir=str(tmp_path / "eval"), batch_size=3,
             settings=[{"max_new_concepts": 3, "num_inference_steps": 3, "seed": 7}],
             progress=False, plots=False)  # fmt: skip
    records = [json.loads(x) for x in (tmp_path / "eval" / "documents.jsonl").open()]
    scored = {r["id"]: r["hypothesis"] for r in records if r["kind"] == "model"}
    settings = Settings(max_new_concepts=3, num_inference_steps=3, seed=7)
    out = tmp_path / "out.jsonl"
    generate_file(str(two_tower), str(docs), str(out), settings=settings, batch_size=4,
                  codec=FixedHashCodec(), progress=False)  # fmt: skip
    written = {r["id"]: r["output"] for r in map(json.loads, out.open())}
    assert len(scored) == 10 and scored == written and all(scored.values())
