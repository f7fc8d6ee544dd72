"""Progress that reads well in a terminal and in a log file.

- :class:`StepProgressBar`: Lightning's rich bar, whose epoch label reads ``Epoch 3`` (and
  ``step 1200/5000``) when training is bounded by ``max_steps`` instead of ``Epoch 3/-2``.
- :class:`LogProgress`: when stderr is not a terminal (a log file, CI), one plain line at most
  every ``interval`` seconds: step, share done, steps/s, ETA and the last training loss.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar

from lcm.progress import clock


class StepProgressBar(RichProgressBar):
    """Rich progress bar labelled by epoch and optimizer step (see the module docstring)."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            text = f"Epoch {current_epoch}/{trainer.max_epochs - 1}"
        else:
            text = f"Epoch {current_epoch}"
        if trainer.max_steps and trainer.max_steps > 0:
            text += f" · step {trainer.global_step}/{trainer.max_steps}"
        width = len(self.validation_description)
        return f"{text:{width}}" if width > len(text) else text


class LogProgress(Callback):
    """Plain progress lines for log files (see the module docstring).

    Args:
        interval: Seconds between lines (at least one line per interval while training runs).
        stream: Where to write (default: stderr).
    """

    def __init__(self, interval: float = 30.0, stream: Any = None) -> None:
        self.interval = interval
        self.stream = stream
        self._start = self._last = 0.0
        self._start_step = 0

    def _write(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._start_step = trainer.global_step
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else "?"
        self._write(f"[lcm fit] training from step {trainer.global_step} to {total}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        now = time.monotonic()
        if now - self._last < self.interval or not trainer.is_global_zero:
            return
        self._last = now
        step, total = trainer.global_step, trainer.max_steps
        rate = (step - self._start_step) / max(now - self._start, 1e-9)
        parts = [f"[lcm fit] step {step}"]
        if total and total > 0:
            parts[0] += f"/{total} ({100 * step / total:.0f}%)"
            parts.append(f"ETA {clock((total - step) / rate) if rate > 0 else '?'}")
        parts.insert(1, f"{rate:.2f} steps/s")
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        self._write(", ".join(parts))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        shown = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        text = ", ".join(f"{k} {float(v):.4f}" for k, v in sorted(shown.items()))
        self._write(f"[lcm fit] validation at step {trainer.global_step}: {text}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.monotonic() - self._start
        self._write(f"[lcm fit] done at step {trainer.global_step} in {clock(elapsed)}")
