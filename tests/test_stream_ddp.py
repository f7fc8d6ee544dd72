"""``lcm fit --data.streaming true`` on two processes (DDP, gloo on CPU), run as a user runs it:
``python -m lcm.cli fit --trainer.devices 2``. The ranks stream different shards, so each one's
stream position is saved in the checkpoint and a resumed run continues every rank exactly."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers_train import make_shards

from lcm.train.stream import StreamingBatches, StreamingLoader

REPO = Path(__file__).resolve().parents[1]


def _fit(shards: Path, val: Path, root: Path, steps: int, *extra: str) -> dict:
    cmd = [
        sys.executable, "-m", "lcm.cli", "fit",
        "--config", str(REPO / "configs" / "trainer" / "default.yaml"),
        "--config", str(REPO / "configs" / "two_tower" / "tiny.yaml"),
        f"--data.data_dir={shards}", f"--data.val_dir={val}",
        "--data.streaming=true", "--data.shuffle_buffer=9",
        "--data.max_seq_len=8", "--data.max_concepts_per_batch=64",
        f"--trainer.default_root_dir={root}", f"--trainer.max_steps={steps}",
        "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.val_check_interval=4", "--checkpoint.every_n_train_steps=4",
        "--model.init_args.optim.decay_steps=20", "--model.init_args.arch.dropout=0.1",
        *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sync_dist" not in run.stderr  # validation metrics are global, and logged as such
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow  # three two-process runs, ~25 s each
def test_two_rank_streaming_fit_resumes_every_rank_bit_for_bit(tmp_path):
    shards = make_shards(tmp_path / "pre", 40, seed=0)
    val = make_shards(tmp_path / "val", 8, seed=5)
    straight = _fit(shards, val, tmp_path / "a", 8)
    first = _fit(shards, val, tmp_path / "b", 4)
    state = first["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert len(state["ranks"]) == 2 and all(r["epoch"] == 0 for r in state["ranks"])
    resumed = _fit(shards, val, tmp_path / "b", 8, "--ckpt_path=last")
    assert resumed["global_step"] == straight["global_step"] == 8
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    assert not torch.equal(
        first["state_dict"]["objective.model.den_postnet.weight"],
        straight["state_dict"]["objective.model.den_postnet.weight"],
    )


def _loader(rank: int, world: int) -> StreamingLoader:
    data = StreamingBatches(["unused.parquet"], ["text"], "pretrain", 4, 8, None, 64,
                            rank=rank, world_size=world)  # fmt: skip
    return StreamingLoader(data, epoch_fn=lambda: 0)


def test_each_rank_takes_its_own_saved_position():
    positions = [{"epoch": 2, "block": b, "anchor": {"rank": b}, "done": 3} for b in (0, 1)]
    for rank in (0, 1):
        loader = _loader(rank, 2)
        loader.load_state_dict({"epoch": 2, "ranks": positions})
        assert loader._pending == positions[rank]


@pytest.mark.parametrize("saved_world,world", [(2, 3), (2, 1), (1, 2)])
def test_another_number_of_ranks_restarts_the_epoch_with_a_warning(saved_world, world):
    position = {"epoch": 2, "block": 1, "anchor": {"x": 1}, "done": 3}
    state = position if saved_world == 1 else {"epoch": 2, "ranks": [position] * saved_world}
    loader = _loader(0, world)
    with pytest.warns(UserWarning, match=f"saved by {saved_world} ranks and this run has {world}"):
        loader.load_state_dict(state)
    assert loader._pending == {"epoch": 2, "done": 0}


def test_one_process_resumes_its_own_position_silently():
    position = {"epoch": 1, "block": 0, "anchor": {"x": 1}, "done": 2}
    loader = _loader(0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.load_state_dict(position)
    assert loader._pending == position
