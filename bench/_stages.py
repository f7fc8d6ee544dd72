"""How the corpus-size benchmarks (``scale.py``, ``bank_load.py``, ``stream_startup.py``) measure:
each stage in a fresh process that prints one JSON line, its peak RSS, the clock at the first
training step, and a short Base-LCM ``tiny`` fit.

Not a benchmark itself (it has no ``main``). It imports nothing heavy at module level (Lightning
and the toolkit are imported where used), so a measured process pays only for what it uses.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def peak_mb() -> float:
    """This process's peak RSS in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def first_step_clock():
    """A Lightning callback whose ``at`` is the ``perf_counter`` at the first training step."""
    import lightning as L

    class FirstStep(L.Callback):
        at: float | None = None

        def on_train_batch_start(self, *args) -> None:
            self.at = self.at or time.perf_counter()

    return FirstStep()


def fit_tiny(dm, dim: int, root: Path, max_steps: int, **trainer_kw):
    """Fit Base-LCM ``tiny`` (width ``dim``) on ``dm`` for ``max_steps`` steps on CPU, with no
    logger, progress bar or validation; ``trainer_kw`` adds to the Trainer. Returns the
    Trainer."""
    import lightning as L

    from lcm.models import BaseLCMConfig
    from lcm.train import BaseLCMModule

    module = BaseLCMModule(arch=BaseLCMConfig.from_name("tiny", sonar_dim=dim))
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root), limit_val_batches=0,
        **trainer_kw,
    )  # fmt: skip
    trainer.fit(module, dm)
    return trainer


def run_stage(script: str, args: list[str], what: str) -> dict:
    """Run ``python script *args`` in a fresh process, print and return the JSON line it printed
    last; a failure raises with ``what`` and the end of its stderr."""
    res = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{res.stderr[-3000:]}")
    row = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row
