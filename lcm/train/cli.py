"""``lcm fit | validate | test | predict``: LightningCLI over the LCM modules and concept shards.

    lcm fit --config configs/trainer/default.yaml --config configs/two_tower/tiny.yaml \\
        --data.data_dir shards/ --trainer.default_root_dir runs/tiny
    lcm fit ... --ckpt_path last          # resumes runs/tiny/checkpoints/last.ckpt
    lcm validate ... --ckpt_path last
    lcm fit --model.help TwoTowerModule   # every model argument with its docstring

What this adds to plain LightningCLI, and why:
- ``--model`` takes any :class:`~lcm.train.module.LCMModule` subclass (``class_path:
  TwoTowerModule``); ``model.init_args.arch.sonar_dim`` is linked to the data's concept dimension.
- A ModelCheckpoint (``--checkpoint.*``) whose ``dirpath`` is always
  ``<trainer.default_root_dir>/checkpoints``, never a logger's fresh ``version_N`` folder, so
  ``--ckpt_path last`` finds the previous run's ``last.ckpt``.
- Default loggers: TensorBoard and CSV under ``default_root_dir`` (same version number), plus a
  LearningRateMonitor whenever there is a logger. ``--trainer.logger false`` turns them off.
- ``--optimizer``/``--lr_scheduler`` are not offered: they would silently replace the module's
  own ``configure_optimizers`` (AdamW with decoupled decay groups, warmup + cosine).
- ``config.yaml`` is saved in the log dir and may be overwritten (a rerun without loggers writes
  to the same folder, which SaveConfigCallback otherwise refuses).
- ``seed_everything`` defaults to 0 instead of a random seed.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lcm.train.data import ConceptDataModule
from lcm.train.module import LCMModule

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def checkpoint_dir(default_root_dir: str | None) -> str:
    """Where checkpoints go: ``<default_root_dir>/checkpoints`` (cwd when unset)."""
    return os.path.join(default_root_dir or os.getcwd(), "checkpoints")


class LCMCLI(LightningCLI):
    """LightningCLI with the LCM defaults described in the module docstring."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
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
