"""A training callback for kill -9 tests of ``lcm fit`` in a fresh process (its own module so
that ``helpers_train``, which fresh ``lcm prepare`` processes import, does not load Lightning)."""

from __future__ import annotations

import os
import time

from lightning.pytorch.callbacks import Callback


class SlowSteps(Callback):
    """Sleeps ``LCM_TEST_STEP_SLEEP`` seconds (default 0.2) before each training step: room for
    a kill between checkpoints (``--trainer.callbacks+=slow_steps.SlowSteps``). With
    ``LCM_TEST_HOLD_AT`` set, it holds before the step that starts at that global step
    instead (:func:`helpers_train.hold_here`): an exact kill point. It has no state, so
    checkpoints are the same with or without it."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from helpers_train import hold_here

        hold_here(trainer.global_step)
        time.sleep(float(os.environ.get("LCM_TEST_STEP_SLEEP", "0.2")))
