"""``lcm fit | validate | test | predict``: LightningCLI over the LCM modules and concept shards.

    lcm fit --config configs/trainer/default.yaml --config configs/two_tower/tiny.yaml \\
        --data.data_dir shards/ --trainer.default_root_dir runs/tiny
    lcm fit ... --ckpt_path last          # resumes runs/tiny/checkpoints/last.ckpt
    lcm validate ... --ckpt_path last
    lcm fit --model.help TwoTowerModule   # every model argument with its docstring

What this adds to plain LightningCLI, and why:
- ``--model`` takes any :class:`~lcm.train.module.LCMModule` subclass (``class_path:
  TwoTowerModule``); ``model.init_args.arch.sonar_dim`` is linked to the data's concept dimension.
- A ModelCheckpoint (``--checkpoint.*``, :class:`~lcm.train.callbacks.LCMCheckpoint`) whose
  ``dirpath`` is always ``<trainer.default_root_dir>/checkpoints``, never a logger's fresh
  ``version_N`` folder, so ``--ckpt_path last`` finds the previous run's ``last.ckpt``; the end of
  ``fit`` always writes ``last.ckpt`` at the final step, and non-finite weights are never saved.
- A :class:`~lcm.train.callbacks.NonFiniteGuard` (``--nonfinite_guard.*``): a NaN/inf loss or
  gradient stops the run before the weights change, naming the step and the documents.
- Default loggers: TensorBoard and CSV under ``default_root_dir`` (same version number), plus a
  LearningRateMonitor whenever there is a logger. ``--trainer.logger false`` turns them off.
- ``--optimizer``/``--lr_scheduler`` are not offered: they would silently replace the module's
  own ``configure_optimizers`` (AdamW with decoupled decay groups, warmup + cosine).
- ``config.yaml`` is saved in the log dir and may be overwritten (a rerun without loggers writes
  to the same folder, which SaveConfigCallback otherwise refuses).
- ``seed_everything`` defaults to 0 instead of a random seed.
- Progress: a rich bar labelled ``Epoch e · step s/max_steps`` in a terminal; in a log file
  (stderr not a terminal) plain lines every 30 s with steps/s, ETA and the loss
  (:mod:`lcm.train.progress`).
- ``lcm predict`` writes its predictions (with document ids and positions) to
  ``<trainer.default_root_dir>/predictions/`` (:mod:`lcm.train.predictions`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lcm.train.callbacks import LCMCheckpoint, NonFiniteGuard
from lcm.train.data import ConceptDataModule
from lcm.train.module import LCMModule
from lcm.train.predictions import ConceptPredictionWriter, predictions_dir
from lcm.train.progress import LogProgress, StepProgressBar

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def checkpoint_dir(default_root_dir: str | None) -> str:
    """Where checkpoints go: ``<default_root_dir>/checkpoints`` (cwd when unset)."""
    return os.path.join(default_root_dir or os.getcwd(), "checkpoints")


class LCMCLI(LightningCLI):
    """LightningCLI with the LCM defaults described in the module docstring."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(LCMCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ConceptPredictionWriter, "prediction_writer")
        parser.link_arguments(
            "trainer.default_root_dir", "prediction_writer.output_dir", predictions_dir
        )
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite_guard")
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", checkpoint_dir)
        parser.link_arguments("data.dim", "model.init_args.arch.sonar_dim", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        extra = [
            self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys
        ]
        if config.get("logger") is None:
            root = config.get("default_root_dir") or os.getcwd()
            tensorboard = TensorBoardLogger(root, name="tensorboard")
            config["logger"] = [
                tensorboard,
                CSVLogger(root, name="csv", version=tensorboard.version),
            ]
        if config.get("logger") not in (False, []):
            extra.append(LearningRateMonitor(logging_interval="step"))
        if config.get("enable_progress_bar") is not False:
            if sys.stderr.isatty():
                extra.append(StepProgressBar())
            else:  # a log file: plain lines, at least one per minute
                config["enable_progress_bar"] = False
                extra.append(LogProgress())
        return self._instantiate_trainer(config, extra)


def cli_main(args: list[str] | None = None, run: bool = True) -> LCMCLI:
    """Run ``fit|validate|test|predict`` (``args`` as on the command line; default sys.argv).

    Returns:
        The :class:`LCMCLI`, whose ``trainer``, ``model`` and ``datamodule`` tests can inspect.
    """
    return LCMCLI(
        LCMModule,
        ConceptDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    cli_main()
