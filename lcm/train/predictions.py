"""``lcm predict`` writes what it computes: teacher-forced next-concept predictions, with the
document id and position of every vector, as parquet (one file per rank, one row per example).

Columns: ``example`` (index in the predict split), ``id`` (document id), ``start`` (position of
the example's first concept in its document's main field), ``pred`` (list of D-vectors in the
codec's raw space; position i predicts concept i from concepts < i), ``is_target`` (list of
bools: the positions that are real predictions), plus the family's per-position extras (e.g. the
refiner's ``exit_step``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


def predictions_dir(default_root_dir: str | None) -> str:
    """Where predictions go: ``<default_root_dir>/predictions`` (cwd when unset)."""
    return os.path.join(default_root_dir or os.getcwd(), "predictions")


class ConceptPredictionWriter(BasePredictionWriter):
    """Write every predict batch to ``<output_dir>/predictions-rank<r>.parquet``.

    Args:
        output_dir: Folder for the files (the CLI links it to
            ``<trainer.default_root_dir>/predictions``).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._writer: pq.ParquetWriter | None = None
        self.path: Path | None = None
        self.rows = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(self.output_dir or predictions_dir(trainer.default_root_dir))
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / f"predictions-rank{trainer.global_rank}.parquet"
        self.path.unlink(missing_ok=True)  # a rerun replaces, never appends
        self._writer, self.rows = None, 0

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        index = prediction["index"].cpu()
        keep = index >= 0  # -1: padding batches of distributed prediction
        if not bool(keep.any()):
            return
        dm = trainer.datamodule
        where = dm.describe("predict", index[keep].tolist())
        cols: dict[str, Any] = {
            "example": index[keep].tolist(),
            "id": [w["id"] for w in where],
            "start": [w["start"] for w in where],
        }
        weight = prediction["weight"].cpu()[keep]  # (b, T)
        lengths = batch["mask"].cpu()[keep].sum(dim=1).tolist()  # real concepts per example
        pred = prediction["pred"].float().cpu()[keep]
        cols["pred"] = [p[:n].tolist() for p, n in zip(pred, lengths)]
        cols["is_target"] = [w[:n].tolist() for w, n in zip(weight, lengths)]
        for name, values in prediction.items():
            if name not in ("pred", "weight", "index"):
                v = values.cpu()[keep]
                cols[name] = [x[:n].tolist() for x, n in zip(v, lengths)]
        table = pa.table(cols)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        rank_zero_info(f"lcm predict: wrote {self.rows} examples to {self.path}")
