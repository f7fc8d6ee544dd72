"""Streaming training from object storage: a prepared folder given as an fsspec URL is checked
and streamed with no local copy. ``memory://`` stands in for ``s3://`` (the same fsspec calls)."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest
import torch
from helpers_train import make_shards

from lcm.data.shards import ShardError, verified_shards
from lcm.train import ConceptDataModule
from lcm.train.cli import cli_main

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("plain_argv")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("url")
    local = make_shards(root / "pre", 30, seed=2)
    val = make_shards(root / "val", 8, seed=5)
    url = f"memory://bucket-{uuid.uuid4().hex[:8]}/prepared"
    fsspec.filesystem("memory").put(str(local), url, recursive=True)
    return local, url, val


def _fit(data_dir, val, root: Path) -> dict:
    cli_main(
        [
            "fit",
            "--config", str(REPO / "configs" / "trainer" / "default.yaml"),
            "--config", str(REPO / "configs" / "base_lcm" / "tiny.yaml"),
            f"--data.data_dir={data_dir}", f"--data.val_dir={val}",
            "--data.streaming=true", "--data.shuffle_buffer=7",
            "--data.max_seq_len=8", "--data.max_concepts_per_batch=64",
            f"--trainer.default_root_dir={root}", "--trainer.max_steps=6",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.val_check_interval=3", "--model.init_args.optim.decay_steps=20",
        ]
    )  # fmt: skip
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_fit_streams_a_url_folder_exactly_as_the_local_one(folders, tmp_path):
    local, url, val = folders
    from_url = _fit(url, val, tmp_path / "url")
    from_disk = _fit(local, val, tmp_path / "disk")
    assert from_url["global_step"] == from_disk["global_step"] == 6
    for name, value in from_disk["state_dict"].items():
        assert torch.equal(value, from_url["state_dict"][name]), name
    assert from_url["lcm_data"]["data_dir"] == url  # recorded as given, not as a local path


def test_url_folder_checks_name_a_truncated_shard(folders):
    local, url, _ = folders
    files = verified_shards(url, "full")
    assert all(isinstance(f, str) and f.startswith("memory://") for f in files)
    bad = f"{url}-cut"
    fs = fsspec.filesystem("memory")
    fs.put(str(local), bad, recursive=True)
    shard = f"{bad}/shards/shard-00001.parquet"
    data = fs.cat_file(shard)
    fs.pipe_file(shard, data[: len(data) // 2])
    with pytest.raises(ShardError, match=r"shard-00001\.parquet: \d+ bytes, \d+ recorded"):
        verified_shards(bad, "quick")


def test_a_url_needs_streaming(folders):
    _, url, val = folders
    with pytest.raises(ValueError, match="is a URL.*--data.streaming true"):
        ConceptDataModule(url, val_dir=str(val), streaming=False)
    with pytest.raises(ValueError, match="val_dir memory://.* is a URL: only streaming training"):
        ConceptDataModule(str(folders[0]), val_dir=url, streaming=True)
