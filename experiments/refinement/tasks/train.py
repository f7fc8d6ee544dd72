"""Lightning training on the synthetic tasks: fresh batches streamed forever, a curriculum over
difficulty, any objective.

    from experiments.refinement.tasks import ChainToRoot
    from experiments.refinement.tasks.curriculum import CurriculumConfig
    from experiments.refinement.tasks.train import (
        CurriculumCallback, TaskDataModule, TaskModule, fit_on_task)

    task = ChainToRoot(dim=32, n_items=12, max_hops=6)
    data = TaskDataModule(task, batch_size=64, curriculum=CurriculumConfig(levels=(1, 2, 3)))
    module = TaskModule("refiner", sonar_dim=32, objective_args={"init": "embed"})
    fit_on_task(module, data, max_steps=2000)               # plain L.Trainer underneath
    module.task_scores(task.sample(256, difficulty=5)).by_difficulty()

Pieces:
- :class:`TaskStream`: an endless ``IterableDataset`` of whole batches. Batch i is drawn from a
  generator seeded by ``(seed, i)`` at the curriculum's levels of the moment, so two runs with
  the same seed see the same batches (the curriculum's advances are themselves deterministic:
  seeded probes of a deterministic model). The examples are fresh random concepts every time,
  so there are no epochs and nothing to memorize.
- :class:`TaskDataModule`: the stream, a fixed held-out validation set per level, and the
  :class:`~experiments.refinement.tasks.curriculum.Curriculum` (its state is saved in checkpoints).
- :class:`TaskModule`: a thin LightningModule around any :class:`~lcm.objectives.base.Objective`
  (the refiner's :class:`~lcm.objectives.refiner.RefinerObjective`, or ``MSEObjective`` on a
  Base-LCM network for the fixed-depth baselines): loss on the answer position, retrieval
  accuracy per difficulty for validation, AdamW with warmup and cosine decay.
- :class:`TargetOnlyRefinerObjective`: the refiner's objective with the same loss and gradients
  on task batches, but refining only the position that predicts each answer (T times less core
  work); ``family="refiner"`` builds it.
- :class:`CurriculumCallback`: every ``every_n_steps`` it probes the newest unlocked level on a
  seeded fresh batch and lets the curriculum advance.

The stream runs in the main process (no DataLoader workers): the curriculum object the callback
advances is the one the stream reads, and drawing a batch costs a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from experiments.refinement.tasks.base import Task, TaskBatch, TaskScores, score
from experiments.refinement.tasks.curriculum import Curriculum, CurriculumConfig
from lcm.models import BaseLCMConfig, RefinerConfig
from lcm.objectives import MSEObjective
from lcm.objectives.base import Batch, Objective, masked_mse, target_weight
from lcm.objectives.refiner import RefinerObjective, RefinerOutput
from lcm.train.module import derive_seed
from lcm.train.optim import OptimConfig, adamw_warmup_cosine

Family = Literal["refiner", "base_lcm"]

_TRAIN_SALT, _VAL_SALT, _PROBE_SALT, _NOISE_SALT, _EVAL_SALT = 0, 1, 2, 3, 4


# ------------------------------------------------------------------------------ task batches
def cat_task_batches(batches: list[TaskBatch]) -> TaskBatch:
    """Concatenate task batches of one task (same T and candidate count) along the batch."""
    if len(batches) == 1:
        return batches[0]
    return TaskBatch(
        **{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(TaskBatch)}
    )


def sample_levels(
    task: Task, counts: dict[float, int], generator: torch.Generator | None = None
) -> TaskBatch:
    """A batch with ``counts[level]`` examples of each level, grouped by level in that order."""
    parts = [task.sample(n, difficulty=level, generator=generator) for level, n in counts.items()]
    return cat_task_batches(parts)


def to_dict(tb: TaskBatch, batch_id: int = -1) -> dict[str, Any]:
    """TaskBatch -> the dict a DataLoader passes on (objective layout plus scoring fields)."""
    return {**{f.name: getattr(tb, f.name) for f in fields(TaskBatch)}, "batch_id": batch_id}


def from_dict(batch: dict[str, Any]) -> TaskBatch:
    """The dict of :func:`to_dict` (possibly moved to a device) -> TaskBatch."""
    return TaskBatch(**{f.name: batch[f.name] for f in fields(TaskBatch)})


class TaskStream(IterableDataset):
    """Endless stream of fresh task batches (module docstring).

    Args:
        task: The task.
        batch_size: Examples per batch.
        curriculum: Chooses each batch's levels; None = the task's default levels, uniform.
        levels: Levels to draw uniformly when there is no curriculum (default: the task's).
        seed: Seed of the stream; batch i uses ``derive_seed(seed, i)``.
        start: Index of the first batch (set when resuming).
    """

    def __init__(
        self,
        task: Task,
        batch_size: int,
        curriculum: Curriculum | None = None,
        levels: tuple[float, ...] | None = None,
        seed: int = 0,
        start: int = 0,
    ) -> None:
        super().__init__()
        self.task, self.batch_size, self.curriculum = task, batch_size, curriculum
        self.levels = levels
        self.seed, self.start = seed, start

    def make(self, index: int) -> dict[str, Any]:
        """Batch number ``index`` at the current curriculum stage."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, _TRAIN_SALT, index))
        if self.curriculum is not None:
            tb = sample_levels(self.task, self.curriculum.level_counts(self.batch_size, g), g)
        else:
            tb = self.task.sample(self.batch_size, difficulty=self.levels, generator=g)
        return to_dict(tb, index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        index = self.start
        while True:
            yield self.make(index)
            index += 1


class TaskDataModule(L.LightningDataModule):
    """Fresh task batches for training, a fixed held-out set per level for validation.

    Args:
        task: The task (e.g. ``ChainToRoot(32, n_items=12, max_hops=6)``).
        batch_size: Training examples per batch.
        curriculum: Difficulty schedule; None trains on ``train_levels`` uniformly.
        train_levels: Levels without a curriculum (default: the curriculum's levels, else the
            task's own).
        val_levels: Levels of the validation set (default: the training levels); include harder
            ones to watch extrapolation.
        val_size: Validation examples per level.
        val_batch_size: Validation batch size.
        seed: Seed of the training stream and of the validation set.
    """

    def __init__(
        self,
        task: Task,
        batch_size: int = 64,
        curriculum: CurriculumConfig | None = None,
        train_levels: tuple[float, ...] | None = None,
        val_levels: tuple[float, ...] | None = None,
        val_size: int = 256,
        val_batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.task = task
        self.batch_size = batch_size
        self.curriculum = Curriculum(curriculum) if curriculum is not None else None
        if train_levels is None:
            train_levels = curriculum.levels if curriculum is not None else task.difficulties
        self.train_levels = tuple(float(v) for v in train_levels)
        self.val_levels = tuple(float(v) for v in (val_levels or self.train_levels))
        self.val_size, self.val_batch_size, self.seed = val_size, val_batch_size, seed
        self._val: list[dict[str, Any]] | None = None

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # Resuming: continue with the batch after the last one consumed.
        start = 0
        if trainer is not None:
            start = trainer.global_step * trainer.accumulate_grad_batches
        stream = TaskStream(
            self.task,
            self.batch_size,
            self.curriculum,
            None if self.curriculum is not None else self.train_levels,
            self.seed,
            start,
        )
        return DataLoader(stream, batch_size=None, num_workers=0)

    def val_batches(self) -> list[dict[str, Any]]:
        """The validation set: per level, ``val_size`` examples in batches (same every call)."""
        if self._val is None:
            out = []
            for i, level in enumerate(self.val_levels):
                g = torch.Generator().manual_seed(derive_seed(self.seed, _VAL_SALT, i))
                left = self.val_size
                while left > 0:
                    n = min(left, self.val_batch_size)
                    out.append(to_dict(self.task.sample(n, difficulty=level, generator=g)))
                    left -= n
            self._val = out
        return self._val

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_batches(), batch_size=None, num_workers=0)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and isinstance(batch.get("batch_id"), Tensor):
            batch = {**batch, "batch_id": int(batch["batch_id"])}
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"curriculum": self.curriculum.state_dict()} if self.curriculum else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.curriculum is not None and "curriculum" in state_dict:
            self.curriculum.load_state_dict(state_dict["curriculum"])


# ----------------------------------------------------------------------------------- module
class TargetOnlyRefinerObjective(RefinerObjective):
    """:class:`RefinerObjective` whose training loss refines only the positions that predict a
    target: exactly the same loss and gradients on task batches, about T times less core work.

    The refiner's core has no self-attention, so every position is refined independently
    (:mod:`lcm.models.refiner`); a position whose prediction is not in the loss changes nothing.
    A task batch has one target per row (the answer), so only that row's query position needs
    the r iterations. Batches with another layout fall back to the parent's loss. With
    ``init="random"`` the initial states are drawn for the query positions only, so they are
    different (equally distributed) numbers than the parent would draw; with ``init="embed"``
    the two losses are identical (tested).
    """

    def loss(
        self,
        batch: Batch,
        generator: torch.Generator | None = None,
        num_iterations: int | None = None,
    ) -> RefinerOutput:
        x, mask = batch["x"], batch["mask"]  # (B, T, D), (B, T)
        weight = target_weight(batch).clone()  # (B, T)
        weight[:, 0] = False  # nothing predicts the first concept
        if "loss_mask" not in batch or not bool((weight.sum(dim=1) == 1).all()):
            return super().loss(batch, generator, num_iterations)
        model = self.model
        B, T, _ = x.shape
        r = num_iterations if num_iterations is not None else self.sample_num_iterations(generator)
        if r < 1:
            raise ValueError(f"num_iterations must be >= 1, got {r}")
        k = min(self.backprop_depth, r)
        rows = torch.arange(B, device=x.device)
        target = weight.long().argmax(dim=1)  # (B,) the answer position
        query = target - 1  # (B,) the position that predicts it

        inject, ctx = model.contextualize(x, mask)  # (B, T, d) each
        cross_kv = model.precompute_cross_kv(ctx)
        full = model.cross_mask(mask, T, T, x.device).expand(B, -1, -1, -1)  # (B, 1, T, T)
        cmask = full[rows, :, query][:, :, None]  # (B, 1, 1, T): the query's row
        q_inject = inject[rows, query][:, None]  # (B, 1, d)
        state = self.initial_state(q_inject, generator)  # (B, 1, d)
        with torch.no_grad():
            state = model.iterate(state, q_inject, cross_kv, r - k, cmask)
        state = model.iterate(state.detach() if r > k else state, q_inject, cross_kv, k, cmask)
        y = model.readout(state)[:, 0]  # (B, D)
        pred = torch.zeros_like(x).index_put((rows, target), y)  # (B, T, D) aligned
        return RefinerOutput(masked_mse(pred, x, weight), pred, x, weight, num_iterations=r)


def build_objective(
    family: Family,
    preset: str = "tiny",
    sonar_dim: int = 32,
    model_overrides: dict[str, Any] | None = None,
    objective_args: dict[str, Any] | None = None,
) -> Objective:
    """A fresh objective: ``refiner`` = :class:`TargetOnlyRefinerObjective` (a RefinerObjective
    that skips the positions outside the loss) over a RecurrentRefinerLCM, ``base_lcm`` =
    MSEObjective(BaseLCM) (the fixed-depth baselines; e.g. ``model_overrides={"n_layers": 10}``).
    """
    overrides = model_overrides or {}
    if family == "refiner":
        net = RefinerConfig.from_name(preset, sonar_dim=sonar_dim, **overrides).build()
        return TargetOnlyRefinerObjective(net, **(objective_args or {}))
    if family == "base_lcm":
        if objective_args:
            raise ValueError(f"MSEObjective takes no arguments, got {objective_args}")
        return MSEObjective(
            BaseLCMConfig.from_name(preset, sonar_dim=sonar_dim, **overrides).build()
        )
    raise ValueError(f"unknown family {family!r}; use 'refiner' or 'base_lcm'")


class TaskModule(L.LightningModule):
    """Trains an objective on task batches; validates by answer retrieval per difficulty.

    Args:
        family: Which objective to build: ``refiner`` or ``base_lcm`` (ignored when
            ``objective`` is given).
        preset: Model preset of the family.
        sonar_dim: Concept dimension D (the task's ``dim``).
        model_overrides: Config fields on top of the preset (e.g. ``{"n_layers": 3}``).
        objective_args: Keyword arguments of the objective (refiner: ``mean_iterations``,
            ``backprop_depth``, ``init``, ...).
        eval_args: Keyword arguments of ``objective.predict_next`` for validation and
            :meth:`task_scores` (refiner: ``num_iterations`` for a fixed r, or exit-rule fields).
        lr: Peak learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay on matrices (vectors get none).
        warmup_steps: Linear warmup steps.
        decay_steps: End of the cosine decay (default: the trainer's ``max_steps``).
        min_lr_ratio: Final learning rate as a share of ``lr``.
        seed: Seed of the objective's random draws (with each batch's id).
        objective: A ready objective to train instead of building one (not saved in the
            hyper-parameters, so ``load_from_checkpoint`` then needs it passed again).
    """

    def __init__(
        self,
        family: Family = "refiner",
        preset: str = "tiny",
        sonar_dim: int = 32,
        model_overrides: dict[str, Any] | None = None,
        objective_args: dict[str, Any] | None = None,
        eval_args: dict[str, Any] | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        decay_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        seed: int = 0,
        objective: Objective | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["objective"])
        if objective is None:
            objective = build_objective(family, preset, sonar_dim, model_overrides, objective_args)
        self.objective = objective
        self.eval_args = dict(eval_args or {})
        self._val_scores: list[TaskScores] = []

    @property
    def network(self) -> torch.nn.Module:
        return self.objective.model

    def _generator(self, *parts: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(
            derive_seed(self.hparams.seed, *parts)
        )

    # ------------------------------------------------------------------------------ train
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        g = self._generator(_NOISE_SALT, int(batch.get("batch_id", batch_idx)))
        out = self.objective.loss(from_dict(batch).batch(), g)
        B = batch["x"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=B)
        r = getattr(out, "num_iterations", None)
        if r:  # the refiner's drawn iteration count
            self.log("train/r", float(r), batch_size=B)
        return out.loss

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        optim = OptimConfig(
            lr=h.lr,
            betas=tuple(h.betas),
            eps=1e-8,  # torch's AdamW default, which these task runs were tuned with
            weight_decay=h.weight_decay,
            warmup_steps=h.warmup_steps,
            min_lr_ratio=h.min_lr_ratio,
        )
        decay_steps = h.decay_steps or int(self.trainer.estimated_stepping_batches)
        return adamw_warmup_cosine(list(self.parameters()), optim, decay_steps)

    # ------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict_answers(
        self, tb: TaskBatch, generator: torch.Generator | None = None, **predict_args: Any
    ) -> Tensor:
        """(B, D) predicted answers of a task batch (its prompt, answer hidden)."""
        x, mask = tb.to(self.device).prompt()
        args = {**self.eval_args, **predict_args}
        return self.objective.predict_next(x, mask, generator, **args)

    @torch.no_grad()
    def task_scores(self, tb: TaskBatch, seed: int = 0, **predict_args: Any) -> TaskScores:
        """Retrieval scores of a task batch, in eval mode (restores the previous mode)."""
        was_training = self.training
        self.eval()
        try:
            pred = self.predict_answers(tb, self._generator(_EVAL_SALT, seed), **predict_args)
        finally:
            self.train(was_training)
        return score(pred, tb)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        tb = from_dict(batch)
        pred = self.predict_answers(tb, self._generator(_EVAL_SALT, batch_idx))
        self._val_scores.append(score(pred, tb))

    def on_validation_epoch_end(self) -> None:
        if not self._val_scores:
            return
        scores = TaskScores.cat(self._val_scores)
        self._val_scores = []
        self.log("val/acc", scores.accuracy, prog_bar=True)
        self.log("val/cosine", scores.mean_cosine)
        for level, row in scores.by_difficulty().items():
            self.log(f"val/acc_{level:g}", row["accuracy"])


# --------------------------------------------------------------------------------- callback
class CurriculumCallback(L.Callback):
    """Probes the newest unlocked level every ``every_n_steps`` and advances the curriculum of
    the trainer's :class:`TaskDataModule`.

    Args:
        every_n_steps: Probe period in optimizer steps.
        probe_size: Fresh examples of the newest level per probe (seeded by the step).
        seed: Seed of the probe batches.
    """

    def __init__(self, every_n_steps: int = 100, probe_size: int = 256, seed: int = 0) -> None:
        super().__init__()
        self.every_n_steps, self.probe_size, self.seed = every_n_steps, probe_size, seed
        self.probes: list[dict[str, Any]] = []  # every probe: step, level, accuracy, stage

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dm = trainer.datamodule
        curriculum: Curriculum | None = getattr(dm, "curriculum", None)
        step = trainer.global_step
        if curriculum is None or curriculum.finished or step % self.every_n_steps:
            return
        level = curriculum.newest
        g = torch.Generator().manual_seed(derive_seed(self.seed, _PROBE_SALT, step))
        probe = dm.task.sample(self.probe_size, difficulty=level, generator=g)
        acc = pl_module.task_scores(probe, seed=step).accuracy
        curriculum.update(step, {level: acc})
        self.probes.append(dict(step=step, level=level, accuracy=acc, stage=curriculum.stage))
        pl_module.log("curriculum/probe_acc", acc)
        pl_module.log("curriculum/stage", float(curriculum.stage))


def fit_on_task(
    module: TaskModule,
    data: TaskDataModule,
    max_steps: int,
    callbacks: list[L.Callback] | None = None,
    probe_every: int = 100,
    probe_size: int = 256,
    val_every: int | None = None,
    **trainer_args: Any,
) -> L.Trainer:
    """Fit with a quiet CPU-friendly trainer (no checkpoints, no logger, no progress bar unless
    given in ``trainer_args``); adds a :class:`CurriculumCallback` when ``data`` has a
    curriculum. ``val_every`` runs validation every that many steps (default: never)."""
    callbacks = list(callbacks or [])
    if data.curriculum is not None and not any(
        isinstance(c, CurriculumCallback) for c in callbacks
    ):
        callbacks.append(CurriculumCallback(probe_every, probe_size, seed=data.seed))
    args: dict[str, Any] = dict(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0 if val_every is None else None,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        callbacks=callbacks,
    )
    args.update(trainer_args)
    trainer = L.Trainer(**args)
    trainer.fit(module, data)
    return trainer
