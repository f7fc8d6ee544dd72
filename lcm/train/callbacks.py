"""Training callbacks that keep runs honest: no NaN weights, no lost final steps.

- :class:`NonFiniteGuard` stops training at the first non-finite loss or gradient, before the
  optimizer step, with an error that names the step and the batch's document ids. The weights
  are never updated with NaN/inf, so no checkpoint can hold them.
- :class:`LCMCheckpoint` is Lightning's ModelCheckpoint plus two guarantees: the end of ``fit``
  always writes ``last.ckpt`` at the final step (Lightning's own only does so when no checkpoint
  was written before, so with ``max_steps: 120`` and ``every_n_train_steps: 25`` its
  ``last.ckpt`` held step 100), and a checkpoint whose weights are not finite is never written
  over a good one.

Both are wired into ``lcm fit`` by :mod:`lcm.train.cli` (``--checkpoint.*`` and
``--nonfinite_guard.*``, see ``configs/trainer/default.yaml``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint


class NonFiniteError(FloatingPointError):
    """Training met a NaN/inf loss or gradient (the message names the step and documents)."""


def _first_non_finite(module: torch.nn.Module, grads: bool) -> list[str]:
    names = []
    for name, p in module.named_parameters():
        t = p.grad if grads else p
        if t is not None and not torch.isfinite(t).all():
            names.append(name)
            if len(names) == 3:
                break
    return names


class NonFiniteGuard(Callback):
    """Stop at the first non-finite loss or gradient, before the weights change.

    Args:
        check_gradients: Also check the gradients (one fused norm per step) before each
            optimizer step; a finite loss can still give inf gradients.
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients
        self._batch: Any = None
        self._batch_idx = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def _documents(self, trainer: L.Trainer) -> str:
        batch, dm = self._batch, trainer.datamodule
        if not isinstance(batch, dict) or "index" not in batch:
            return "unknown documents"
        if dm is not None and hasattr(dm, "document_ids"):
            ids = dm.document_ids("train", batch["index"])
            return f"document ids {ids}"
        return f"example indices {batch['index'].tolist()}"

    def _stop(self, trainer: L.Trainer, what: str) -> None:
        raise NonFiniteError(
            f"non-finite {what} at optimizer step {trainer.global_step + 1} (global_step "
            f"{trainer.global_step}, epoch {trainer.current_epoch}, batch {self._batch_idx}); the "
            f"batch holds {self._documents(trainer)}. Training stopped before the weights "
            "changed; the last checkpoint is the last good one. Check these documents' shards "
            "with `lcm check`, lower the learning rate or set --trainer.gradient_clip_val"
        )

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            self._stop(
                trainer,
                f"loss ({loss.detach().flatten()[0].item()})" if bad else "loss on another rank",
            )

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.check_gradients:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        bad = False
        if grads:
            norms = torch._foreach_norm(grads)  # NaN/inf anywhere makes its norm NaN/inf
            bad = not bool(torch.isfinite(torch.stack(norms)).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            where = _first_non_finite(pl_module, grads=True) if bad else ["on another rank"]
            self._stop(trainer, f"gradient ({', '.join(where)})")


class LCMCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that always saves ``last.ckpt`` at the final step and never saves
    non-finite weights (same arguments as ModelCheckpoint)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # The final step of a max_steps run is saved here, where periodic checkpoints are saved:
        # by train end Lightning has already counted the unfinished epoch as done, and a
        # checkpoint written then would resume into the next epoch's batch order. (With a
        # monitor, top-k waits for validation metrics; then on_train_end writes last.ckpt.)
        if self.monitor is None and 0 < trainer.max_steps <= trainer.global_step:
            self._save_final(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_final(trainer)  # other ends (max_epochs, max_time, a stop signal)
        super().on_train_end(trainer, pl_module)

    def _save_final(self, trainer: L.Trainer) -> None:
        final_missing = (
            self.save_last
            and trainer.global_step > 0
            and self._last_global_step_saved != trainer.global_step
            and not trainer.fast_dev_run
            and not trainer.sanity_checking
        )
        if final_missing:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = trainer.global_step

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        bad = _first_non_finite(trainer.lightning_module, grads=False)
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            raise NonFiniteError(
                f"refusing to write {filepath} at global_step {trainer.global_step}: parameters "
                f"{bad or '(on another rank)'} are not finite; the previous checkpoint is kept"
            )
        super()._save_checkpoint(trainer, filepath)
