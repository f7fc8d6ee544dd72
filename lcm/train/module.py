"""Thin LightningModules: one per model family, each wiring a network and its objective into
training, evaluation, optimizers and checkpoints.

    from lcm.train import TwoTowerModule, ConceptDataModule
    data = ConceptDataModule("shards/", max_seq_len=64)
    module = TwoTowerModule(preset="tiny", sonar_dim=data.dim, warmup_steps=100)
    L.Trainer(max_steps=1000).fit(module, data)
    module = load_module("runs/x/checkpoints/last.ckpt")     # any family, self-contained
    nxt = module.predict_next(sonar_vectors, mask)           # (B, D) in SONAR space

What a checkpoint carries besides the weights (so it needs no other file to generate):
- ``normalizer.*``: the robust normalizer the model was trained with (taken from the data module
  at setup; a model that already has one, e.g. after ``init_from``, imposes it on the data).
- ``separator``: the summarization separator concept, in normalized space. It is a constant
  N(0, I) vector drawn from a fixed seed (``SEPARATOR_SEED``), hence identical across runs and
  families, and far (about sqrt(2 D)) from the normalized median concept 0 that padding uses;
  ``learn_separator=True`` makes it a trained parameter starting from the same vector.
- ``ema_model.*`` (optional): an exponential moving average of the network, used for validation,
  test, predict and :meth:`LCMModule.predict_next` when ``ema_eval`` is on.

Randomness: every training batch carries a ``batch_id`` that is unique per epoch and batch and does
not depend on the number of devices (:mod:`lcm.train.data`). The objective's noise, timesteps and
CFG drops come from a generator seeded by ``(seed, batch_id)``, and dropout runs under a forked
global RNG seeded the same way. A run resumed from a checkpoint, or run on w devices instead of
one device with ``accumulate_grad_batches=w``, therefore draws exactly the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanMetric

from diffusion import DDIMScheduler, PredictionType, ScheduleName, TimestepSpacing
from lcm.metrics import sequence_contrastive_accuracy
from lcm.models import (
    FAMILIES,
    BaseLCMConfig,
    OneTowerConfig,
    QuantLCMConfig,
    RefinerConfig,
    TransformerConfig,
    TwoTowerConfig,
)
from lcm.normalizer import RobustNormalizer
from lcm.objectives import (
    DiffusionObjective,
    ExitRule,
    MSEObjective,
    Objective,
    OneTowerDiffusion,
    QuantObjective,
    RefinerObjective,
    RefinerOutput,
    SamplingConfig,
    TwoTowerDiffusion,
)
from lcm.objectives.base import (
    Batch,
    ObjectiveOutput,
    Residual,
    check_input_noise,
    check_residual,
    check_residual_scale,
)
from lcm.objectives.mse import RegressionLoss
from lcm.objectives.quant import Decoding, check_decoding
from lcm.quant import RESIDUALS as RVQ_RESIDUALS
from lcm.quant import RVQ
from lcm.train.optim import DEFAULT_OPTIM, EMA, OptimConfig, adamw_warmup_cosine, check_ema

T = TypeVar("T")

#: Each family's default architecture: its ``tiny`` preset (CPU tests and the quickstart).
TINY = {name: config_cls.from_name("tiny") for name, config_cls in FAMILIES.items()}
#: The paper's inference settings (section 2.3.5), the diffusion families' default.
PAPER_SAMPLING = SamplingConfig()


def typed(cls: type[T], value: T | dict[str, Any] | None) -> T:
    """``value`` as a ``cls`` config: a checkpoint's hyperparameters hold configs as dicts."""
    if value is None:
        return cls()
    if isinstance(value, dict):
        return cls(**value)
    if not isinstance(value, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(value).__name__}")
    return value


SEPARATOR_SEED = 20241212  # the LCM paper's arXiv month; any fixed value works
METRICS = ("loss", "mse", "l2", "ca")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


#: Family name -> its LightningModule. A subclass that sets ``family`` registers itself here
#: when it is defined; its ``arch_cls`` is the family's config, its objective (set with
#: :meth:`LCMModule.attach`) the network's loss, sampling and cached generation step
#: (:meth:`lcm.objectives.Objective.generation_step`).
FAMILY_MODULES: dict[str, type[LCMModule]] = {}


class LCMModule(L.LightningModule):
    """Base LightningModule of every LCM family (use a family subclass, which builds its
    network and objective from its typed arguments and calls :meth:`attach`).

    Args:
        arch: The network's architecture, a typed config with every field (the family
            subclass narrows the type; presets: ``<Family>Config.from_name("small")``).
            ``arch.sonar_dim`` is linked to the data's concept dimension by the CLI.
        optim: AdamW and its warmup-cosine schedule.
        ema_decay: Keep an exponential moving average of the weights with this decay (e.g.
            0.999); None disables it.
        ema_warmup: The EMA's decay ramp: after n updates the decay is ``min(ema_decay, (1 + n)
            / (ema_warmup + n))`` (an integer >= 1). The default 10 reaches 0.99 only after 890
            updates and 0.995 after 1,790, so in shorter runs the ramp sets the window and every
            larger ``ema_decay`` gives the same weights; 2 averages all updates equally until
            the ramp meets ``ema_decay``; 1 turns the ramp off (the initialization keeps weight
            ``ema_decay ** n``).
        ema_eval: Evaluate, predict and generate with the EMA weights when they exist.
        init_from: Checkpoint to initialize the network, normalizer and separator from when a
            ``fit`` starts fresh (fine-tuning); ignored when resuming with ``ckpt_path``.
        learn_separator: Train the separator concept instead of keeping it constant.
        seed: Seed of the training noise and dropout (combined with each batch's id).
        residual: Predict each next concept as a base from the context plus the network's
            output: ``none`` (the concept itself), ``last`` (a correction to the last concept)
            or ``context_mean`` (a correction to the mean of the context), in normalized space;
            applied in training, validation and generation alike (every family; Quant-LCM
            predicts the quantized residual with a quantizer fitted on residuals). Base-LCM,
            One-Tower and Two-Tower also take ``source_mean`` (summarization: the mean of the
            source's concepts, separator and end-of-text left out) and ``source_lead`` (the
            midpoint of that mean and the source's first concept), computed with the module's
            ``separator``; see :data:`lcm.objectives.base.Residual` (the diffusion families add
            the base to the denoiser's x0 estimate of the rows that keep their context).
        residual_scale: Prediction time only (validation, test, predict, generation; never the
            loss): predict ``base + residual_scale * (prediction - base)``, the learned
            correction to the residual base scaled (> 0; 1, the default, predicts as trained;
            only 1 without a residual). Recorded in the checkpoint; override it on a loaded
            module with ``module.objective.residual_scale = s`` or per generation with
            ``residual_scale`` (:class:`lcm.api.Settings`).
        input_noise: Training only: add Gaussian noise of this std per coordinate, in the
            normalized concept space, to the context concepts the network reads (padding and
            separator slots excepted); never to the targets or to the residual base, and never
            in validation, test, predict or generation. 0 (default) trains exactly as without
            it. For scale: normalization divides by the interquartile range, so a coordinate's
            std is about 0.74 (MiniLM, 32.5k training sentences: 0.74 over the corpus, 0.59
            within a document, 0.85 between consecutive sentences). See
            :attr:`lcm.objectives.base.Objective.input_noise`.
    """

    family: ClassVar[str] = ""
    #: The family's architecture config class.
    arch_cls: ClassVar[type[TransformerConfig]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("family"):
            FAMILY_MODULES[cls.family] = cls

    def __init__(
        self,
        arch: TransformerConfig,
        optim: OptimConfig = DEFAULT_OPTIM,
        ema_decay: float | None = None,
        ema_warmup: int = 10,
        ema_eval: bool = True,
        init_from: str | None = None,
        learn_separator: bool = False,
        seed: int = 0,
        residual: Residual = "none",
        residual_scale: float = 1.0,
        input_noise: float = 0.0,
    ) -> None:
        super().__init__()
        if not self.family:
            raise TypeError("use a family subclass: BaseLCMModule, TwoTowerModule, ...")
        self.save_hyperparameters()
        # Checkpoints hold plain data only (they load with weights_only=True), so typed
        # configs are stored as dicts and turned back into configs by the constructors.
        for name, value in list(self.hparams.items()):
            if dataclasses.is_dataclass(value):
                self.hparams[name] = dataclasses.asdict(value)
        self.arch = typed(self.arch_cls, arch)
        self.optim = typed(OptimConfig, optim)
        self.ema_decay, self.ema_warmup, self.ema_eval = ema_decay, ema_warmup, ema_eval
        if ema_decay is not None:  # fail at construction, before the network is built
            check_ema(ema_decay, ema_warmup)
        self.init_from, self.seed = init_from, seed
        self.residual: Residual = check_residual(residual)
        self.residual_scale = check_residual_scale(residual_scale, self.residual)
        self.input_noise = check_input_noise(input_noise)
        self.objective: Objective
        self.ema_model: EMA | None = None

        sonar_dim = self.arch.sonar_dim
        self.normalizer = RobustNormalizer(sonar_dim)
        # False until the statistics come from data or a checkpoint (see _sync_normalizer).
        self.register_buffer("normalizer_ready", torch.zeros((), dtype=torch.bool))
        sep = torch.randn(sonar_dim, generator=torch.Generator().manual_seed(SEPARATOR_SEED))
        if learn_separator:
            self.separator = nn.Parameter(sep)
        else:
            self.register_buffer("separator", sep)

        #: What checkpoints record about the training data (see ``_record_data_info``).
        self.data_info: dict[str, Any] = {}
        names = METRICS + self.extra_metrics
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({name: MeanMetric() for name in names})
                for stage in ("val", "test")
            }
        )

    def attach(self, objective: Objective) -> None:
        """Install the family's objective (wrapping its freshly built network) and the EMA."""
        if objective.residual != self.residual:
            raise ValueError(
                f"family {self.family!r} built its objective with residual="
                f"{objective.residual!r} but the module has residual={self.residual!r}: the "
                "family's build must pass the module's residual to its objective"
            )
        self.objective = objective
        # read at each call: the buffer follows the module's device, a learned one trains
        objective.separator = self._separator_now
        objective.residual_scale = self.residual_scale
        objective.input_noise = self.input_noise
        if self.ema_decay is not None:
            self.ema_model = EMA(objective.model, self.ema_decay, self.ema_warmup)

    def _separator_now(self) -> Tensor:
        """The separator as it is now (a buffer moves with the module; a parameter trains)."""
        return self.separator

    # ----------------------------------------------------------------------- family hooks
    def eval_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of ``predict_all`` during validation and test."""
        return {}

    extra_metrics: ClassVar[tuple[str, ...]] = ()
    """Family-specific validation/test metrics, one value per target (see ``eval_predict``)."""

    def eval_predict(
        self, objective: Objective, batch: Batch, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher-forced predictions (B, T, D) for validation/test, and per-position values
        (B, T) of each of :attr:`extra_metrics` (averaged over the target positions)."""
        return objective.predict_all(batch, generator, **self.eval_kwargs()), {}

    # ------------------------------------------------------------------------- helpers
    @property
    def network(self) -> nn.Module:
        return self.objective.model

    def eval_objective(self) -> Objective:
        """The objective bound to the EMA weights when ``ema_eval``, else the trained ones."""
        if self.ema_model is not None and self.ema_eval:
            return self.objective.with_model(self.ema_model.model)
        return self.objective

    def insert_separator(self, batch: Batch) -> Batch:
        """Fill the separator slots (``sep_mask``) of ``batch["x"]`` with :attr:`separator`."""
        sep_mask = batch.get("sep_mask")
        if sep_mask is None:
            return batch
        x = batch["x"]
        sep = self.separator.to(x.dtype)[None, None]  # (1, 1, D)
        return {**batch, "x": torch.where(sep_mask[..., None], sep, x)}

    def _batch_seed(self, batch: Batch, salt: int) -> int:
        return derive_seed(self.seed, salt, int(batch.get("batch_id", -1)))

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    @contextlib.contextmanager
    def _seeded_dropout(self, seed: int) -> Iterator[None]:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    # ------------------------------------------------------------------------ training
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        batch = self.insert_separator(batch)
        seed = self._batch_seed(batch, salt=0)
        with self._seeded_dropout(seed):
            out = self.objective.loss(batch, self._generator(seed))
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["x"].shape[0])
        self.log_train_output(out, batch)
        return out.loss

    def log_train_output(self, out: ObjectiveOutput, batch: Batch) -> None:
        """Family hook: log more of a training step's objective output."""

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema_model is not None:
            self.ema_model.update(self.objective.model)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for n, p in self.named_parameters() if not n.startswith("ema_model.")]
        decay_steps = self.optim.decay_steps or int(self.trainer.estimated_stepping_batches)
        return adamw_warmup_cosine(params, self.optim, decay_steps)

    # ---------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: Batch, stage: str) -> None:
        batch = self.insert_separator(batch)
        objective = self.eval_objective()
        seed = self._batch_seed(batch, salt=1)
        out = objective.loss(batch, self._generator(seed))
        pred, extra = self.eval_predict(objective, batch, self._generator(seed + 1))
        w = out.weight  # (B, T)
        n = int(w.sum())
        if n == 0:
            return  # an all-padding batch (distributed evaluation)
        m = self.metrics[stage]
        m["loss"].update(out.loss.detach(), n)
        for name, values in extra.items():
            m[name].update(values[w].float())
        pred_w, gold_w = pred[w], batch["x"][w]  # (N, D) normalized
        m["mse"].update((pred_w - gold_w).pow(2).mean(dim=-1))
        # l2 and CA in SONAR space, as in the paper (section 2.4).
        pred_s, x_s = self.normalizer.denormalize(pred), self.normalizer.denormalize(batch["x"])
        m["l2"].update((pred_s[w] - x_s[w]).norm(dim=-1))
        # The paper's CA: the gold's rank among every real concept of the batch, the gold's two
        # neighbours in its own document excluded (they are near it by construction).
        ca = sequence_contrastive_accuracy(pred_s, x_s, w, batch["mask"])
        ca = ca[w.cpu()]
        ca = ca[torch.isfinite(ca)]
        if ca.numel():
            m["ca"].update(ca.to(self.device))

    def _log_metrics(self, stage: str) -> None:
        # compute() syncs across ranks, so every rank calls it, even one that only saw padding.
        for name, metric in self.metrics[stage].items():
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
                value = metric.compute()
            metric.reset()
            if torch.isfinite(value):  # NaN: no update on any rank (e.g. CA needs N >= 2)
                # The value is already global; sync_dist only tells Lightning so (a mean of
                # equal values), so it stops warning that per-rank values are logged.
                self.log(f"{stage}/{name}", value, prog_bar=name == "loss", sync_dist=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """Teacher-forced prediction of every concept, in SONAR space.

        Returns:
            ``pred`` (B, T, D): position i predicts concept i from concepts < i; ``weight``
            (B, T) bool: positions that are real targets; ``index`` (B,): example indices;
            plus the family's :attr:`extra_metrics` per position (e.g. the refiner's
            ``exit_step``).
        """
        batch = self.insert_separator(batch)
        objective = self.eval_objective()
        seed = self._batch_seed(batch, salt=2)
        pred, extra = self.eval_predict(objective, batch, self._generator(seed))
        weight = batch["mask"] & batch["loss_mask"]
        if not objective.predicts_first_concept:
            weight[:, 0] = False
        return {
            "pred": self.normalizer.denormalize(pred),
            "weight": weight,
            "index": batch["index"],
            **extra,
        }

    @torch.no_grad()
    def predict_next(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        sep_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        **sampling: Any,
    ) -> Tensor:
        """The concept following each sequence, in SONAR space.

        Args:
            x: (B, T, D) right-padded SONAR vectors.
            mask: (B, T) bool, True = real concept.
            sep_mask: (B, T) bool slots to fill with the separator (e.g. ``[source, SEP]``
                prompts of a summarization fine-tune); their ``x`` is ignored.
            generator: Random generator of the diffusion sampler.
            **sampling: Diffusion sampling overrides (``num_inference_steps``,
                ``guidance_scale``, ``guidance_rescale``, ``init_noise_scale``).

        Returns:
            (B, D) SONAR vectors.
        """
        batch = {"x": self.normalizer.normalize(x)}
        if sep_mask is not None:
            batch = self.insert_separator({**batch, "sep_mask": sep_mask})
        out = self.eval_objective().predict_next(batch["x"], mask, generator, **sampling)
        return self.normalizer.denormalize(out)

    # ------------------------------------------------------------ normalizer / init / ckpt
    def setup(self, stage: str) -> None:
        trainer = self._trainer
        if stage == "fit" and self.init_from and trainer is not None and trainer.ckpt_path is None:
            self.load_init(self.init_from)
        self._sync_normalizer()
        self._record_data_info()

    def _record_data_info(self) -> None:
        """Remember what the checkpoint must carry about the data (codec id, end-of-text
        sentence, sentence cap, mode, target field, absolute shards path), so that it loads from
        any folder without the shards (:func:`lcm.api.data_info`)."""
        dm = self._datamodule()
        if dm is None or not hasattr(dm, "data_dir"):
            return
        from lcm.data.shards import is_url
        from lcm.train.data import read_manifest

        manifest = read_manifest(dm.data_dir)
        self.data_info = {
            "codec": manifest.get("codec"),
            "end_of_text": manifest.get("end_of_text"),
            "max_sentence_chars": manifest.get("max_sentence_chars", 256),
            "mode": dm.mode,
            "target_field": dm.target_field,
            "text_field": dm.text_field,
            "data_dir": str(dm.data_dir if is_url(dm.data_dir) else Path(dm.data_dir).resolve()),
        }

    def _datamodule(self):
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def _sync_normalizer(self) -> None:
        """Make the model's and the data's normalizers one and the same.

        A model with statistics (from ``init_from`` or a checkpoint) imposes them on the data: it
        only understands the space it was trained in. A fresh model adopts the data's.
        """
        dm = self._datamodule()
        if dm is None or not hasattr(dm, "set_normalizer"):
            return
        if not bool(self.normalizer_ready):
            if dm.normalize and dm.normalizer is None:
                dm.setup()
            if dm.normalize and dm.normalizer is not None:
                self.normalizer.load_state_dict(dm.normalizer.state_dict())
            # else: the data is used raw, and the model's identity normalizer says so.
            self.normalizer_ready.fill_(True)
            return
        data_norm = dm.normalizer if dm.normalize else None
        same = data_norm is not None and all(
            torch.equal(a.cpu(), b.cpu())
            for a, b in zip(data_norm.state_dict().values(), self.normalizer.state_dict().values())
        )
        if not same:
            rank_zero_info("lcm: the data is normalized with the model's own normalizer")
            dm.set_normalizer(self.normalizer)

    def configure_model(self) -> None:
        """Shard the network when the strategy shards (``lcm.train.scale.LCMFSDPStrategy``);
        nothing otherwise. Lightning calls this once the processes exist."""
        shard = getattr(self.trainer.strategy, "shard_module", None) if self._trainer else None
        if shard is not None and not getattr(self, "_lcm_sharded", False):
            shard(self, self.objective.model)
            self._lcm_sharded = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs before the weights are loaded: push the checkpoint's normalizer into the data
        # module now, so that resumed runs and `validate --ckpt_path` read data the same way.
        if checkpoint.get("lcm_data"):
            self.data_info = dict(checkpoint["lcm_data"])
        state = checkpoint.get("state_dict", {})
        if not bool(state.get("normalizer_ready", False)):
            return
        self.normalizer.center.copy_(state["normalizer.center"])
        self.normalizer.scale.copy_(state["normalizer.scale"])
        self.normalizer_ready.fill_(True)
        self._sync_normalizer()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lcm_family"] = self.family
        checkpoint["lcm_module"] = f"{type(self).__module__}:{type(self).__qualname__}"
        if self.data_info:
            checkpoint["lcm_data"] = dict(self.data_info)

    def load_init(self, path: str) -> None:
        """Initialize network, normalizer and separator from a checkpoint of the same family
        (the optimizer and step start fresh; the EMA restarts from the loaded weights)."""
        from lightning.fabric.utilities.cloud_io import _load as pl_load

        checkpoint = pl_load(path, map_location="cpu", weights_only=True)
        family = checkpoint.get("lcm_family")
        if family is not None and family != self.family:
            raise ValueError(f"{path} holds a {family} model; this module is {self.family}")
        state = checkpoint["state_dict"]
        prefix = "objective.model."
        net = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        self.objective.model.load_state_dict(net, strict=True)
        if bool(state.get("normalizer_ready", False)):
            self.normalizer.center.copy_(state["normalizer.center"])
            self.normalizer.scale.copy_(state["normalizer.scale"])
            self.normalizer_ready.fill_(True)
        if "separator" in state:
            with torch.no_grad():
                self.separator.copy_(state["separator"])
        if self.ema_model is not None:
            self.ema_model.reset(self.objective.model)
        rank_zero_info(f"lcm: initialized from {path}")


class BaseLCMModule(LCMModule):
    """Base-LCM: next-concept MSE regression (paper section 2.2).

    Args:
        arch: Architecture (default: the ``tiny`` preset).
        loss: The training loss: ``mse`` (the paper's), or for a model decoded by cosine
            nearest-neighbour retrieval ``cosine`` (1 - cosine to the target) or ``infonce``
            (the target must out-score the batch's other targets, cosine / ``temperature``);
            ``cosine`` and ``infonce`` score in SONAR (decoder) space
            (:func:`lcm.objectives.mse.regression_loss`).
        temperature: The InfoNCE temperature (of ``infonce`` and of ``contrastive_weight``'s term).
        contrastive_weight: Add this weight times the InfoNCE term (cosine of the prediction to
            every target concept of the batch / ``temperature``, cross-entropy to the true next
            concept) to ``loss``, on the final prediction (base plus output with a residual);
            0 (default) trains on ``loss`` alone.
        contrastive_queue: The InfoNCE negatives also include up to this many targets of the
            previous training batches (0, default: the batch's own targets only).
        **kwargs: The arguments of :class:`LCMModule`.
    """

    family = "base_lcm"
    arch_cls = BaseLCMConfig

    def __init__(
        self,
        arch: BaseLCMConfig = TINY["base_lcm"],
        loss: RegressionLoss = "mse",
        temperature: float = 0.05,
        contrastive_weight: float = 0.0,
        contrastive_queue: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(arch=arch, **kwargs)
        objective = MSEObjective(
            self.arch.build(),
            self.residual,
            loss,
            temperature,
            contrastive_weight,
            contrastive_queue,
        )
        # Scored where the retrieval decoder searches; the normalizer is filled in at setup or
        # from the checkpoint, and this reads it at each call.
        objective.to_decoder_space = self.normalizer.denormalize
        self.attach(objective)


class DiffusionModule(LCMModule):
    """Shared arguments of the diffusion families (paper section 2.3).

    Args:
        cfg_dropout: Share of positions trained without context, for classifier-free guidance.
        num_train_timesteps: Diffusion steps T (paper: 100).
        beta_schedule: Noise schedule (``cosine``, ``linear``, ``sigmoid``).
        rescale_zero_terminal_snr: Rescale the schedule to zero terminal SNR.
        prediction_type: What the denoiser outputs; the paper uses ``sample`` (x0).
        timestep_spacing: Inference timestep spacing (paper: ``trailing``).
        sampling: Generation defaults (the paper's: 40 DDIM steps, guidance 3, rescale 0.7,
            initial noise 0.6); what ``ConceptModel`` and ``lcm summarize`` use unless told
            otherwise.
        eval_inference_steps: DDIM steps for validation/test metrics (default:
            ``sampling.num_inference_steps``).
        **kwargs: The arguments of :class:`LCMModule`.
    """

    objective_cls: ClassVar[type[DiffusionObjective]]

    def __init__(
        self,
        arch: TransformerConfig,
        cfg_dropout: float = 0.15,
        num_train_timesteps: int = 100,
        beta_schedule: ScheduleName = "cosine",
        rescale_zero_terminal_snr: bool = True,
        prediction_type: PredictionType = "sample",
        timestep_spacing: TimestepSpacing = "trailing",
        sampling: SamplingConfig = PAPER_SAMPLING,
        eval_inference_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(arch=arch, **kwargs)
        scheduler = DDIMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            rescale_zero_terminal_snr=rescale_zero_terminal_snr,
            prediction_type=prediction_type,
            timestep_spacing=timestep_spacing,
        )
        self.eval_inference_steps = eval_inference_steps
        sampling = typed(SamplingConfig, sampling)
        self.attach(
            self.objective_cls(self.arch.build(), scheduler, cfg_dropout, sampling, self.residual)
        )

    def eval_kwargs(self) -> dict[str, Any]:
        steps = self.eval_inference_steps
        return {} if steps is None else {"num_inference_steps": steps}


class TwoTowerModule(DiffusionModule):
    """Two-Tower diffusion LCM (paper section 2.3.4).

    Args:
        arch: Architecture (default: the ``tiny`` preset).
        **kwargs: The arguments of :class:`DiffusionModule` and :class:`LCMModule`.
    """

    family = "two_tower"
    arch_cls = TwoTowerConfig
    objective_cls = TwoTowerDiffusion

    def __init__(self, arch: TwoTowerConfig = TINY["two_tower"], **kwargs: Any) -> None:
        super().__init__(arch=arch, **kwargs)


class OneTowerModule(DiffusionModule):
    """One-Tower diffusion LCM (paper section 2.3.3).

    Args:
        arch: Architecture (default: the ``tiny`` preset).
        **kwargs: The arguments of :class:`DiffusionModule` and :class:`LCMModule`.
    """

    family = "one_tower"
    arch_cls = OneTowerConfig
    objective_cls = OneTowerDiffusion

    def __init__(self, arch: OneTowerConfig = TINY["one_tower"], **kwargs: Any) -> None:
        super().__init__(arch=arch, **kwargs)


class RefinerModule(LCMModule):
    """Recurrent-depth refiner LCM (ours, after Geiping et al. 2025): a weight-tied core iterated
    on the next-concept state, adaptive exit per concept at inference.

    Validation and test predict with ``eval_iterations`` fixed iterations, or with the adaptive
    exit when it is None; they log the mean exit step as ``exit_step``.

    Args:
        arch: Architecture (default: the ``tiny`` preset).
        mean_iterations: Mean of the training iteration count r (log-normal Poisson draws).
        sigma: Std of the log-normal rate of r.
        backprop_depth: k, the trailing iterations that get gradients (truncated backprop).
        max_train_iterations: Cap on the drawn r (bounds the cost of the heavy tail).
        init: Initial state: ``random`` (truncated normal) or ``embed`` (the PreNet embedding
            of the current concept).
        exit_threshold: Adaptive exit: tau, bound on 1 - cos between successive predictions.
        exit_patience: Adaptive exit: m, consecutive iterations under tau.
        max_iterations: Adaptive exit: r_max, the cap.
        eval_iterations: Fixed r for validation/test (None: the adaptive exit).
        temperature: The temperature of ``contrastive_weight``'s InfoNCE term.
        contrastive_weight: Add this weight times the InfoNCE term (cosine of the prediction to
            every target concept of the batch / ``temperature``, cross-entropy to the true next
            concept, scored in SONAR space) to the MSE, on the prediction the MSE regresses
            (base plus readout with a residual); 0 (default) trains on the MSE alone.
        contrastive_queue: The InfoNCE negatives also include up to this many targets of the
            previous training batches (0, default: the batch's own targets only).
        **kwargs: The arguments of :class:`LCMModule`.
    """

    family = "refiner"
    arch_cls = RefinerConfig
    extra_metrics = ("exit_step",)

    def __init__(
        self,
        arch: RefinerConfig = TINY["refiner"],
        mean_iterations: float = 8.0,
        sigma: float = 0.5,
        backprop_depth: int = 4,
        max_train_iterations: int | None = 32,
        init: Literal["random", "embed"] = "random",
        exit_threshold: float = 1e-3,
        exit_patience: int = 2,
        max_iterations: int = 64,
        eval_iterations: int | None = None,
        temperature: float = 0.05,
        contrastive_weight: float = 0.0,
        contrastive_queue: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(arch=arch, **kwargs)
        self.eval_iterations = eval_iterations
        objective = RefinerObjective(
            self.arch.build(),
            mean_iterations=mean_iterations,
            sigma=sigma,
            backprop_depth=backprop_depth,
            max_train_iterations=max_train_iterations,
            init=init,
            exit_rule=ExitRule(exit_threshold, exit_patience, max_iterations),
            residual=self.residual,
            temperature=temperature,
            contrastive_weight=contrastive_weight,
            contrastive_queue=contrastive_queue,
        )
        objective.to_decoder_space = self.normalizer.denormalize  # as Base-LCM's
        self.attach(objective)

    def log_train_output(self, out: ObjectiveOutput, batch: Batch) -> None:
        if isinstance(out, RefinerOutput):
            self.log("train/iterations", float(out.num_iterations), batch_size=len(batch["x"]))

    def eval_predict(
        self, objective: Objective, batch: Batch, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        assert isinstance(objective, RefinerObjective)
        pred, steps = objective.predict_all_with_exit(
            batch, generator, num_iterations=self.eval_iterations
        )
        return pred, {"exit_step": steps}


class QuantModule(LCMModule):
    """Quant-LCM-d (paper section 2.5): predicts the residual-quantization codes of the next
    concept, coarse to fine, and sums the sampled code vectors back into a concept.

    The quantizer (``model.rvq``) works in the model's normalized space. It comes from
    ``rvq_path`` (a file written by ``lcm fit-rvq`` or ``RVQ.save``), from the checkpoint when
    resuming, or else is fitted with faiss on ``rvq_fit_samples`` training concepts when ``fit``
    starts; its relative reconstruction error on held-out (validation) concepts is then logged as
    ``rvq_relative_error``. The codebook count and size come from the preset
    (``model_overrides: {n_codebooks: 64, n_units: 8192}`` for the paper's quantizer).

    With a ``residual`` (``last`` or ``context_mean``) the network predicts the codes of
    ``x_{t+1} - base_t`` (:class:`~lcm.objectives.QuantObjective`): the quantizer is then fitted
    on such residuals of whole training windows (:meth:`~lcm.train.data.ConceptDataModule.
    sample_residuals`), and ``rvq_path`` must hold one fitted on the same residual (``lcm
    fit-rvq --residual``); the quantizer records what it was fitted on (``RVQ.residual``, also in
    the checkpoint), and a mismatch is an error. Code accuracy is then that of the residual codes.

    Args:
        arch: Architecture (default: the ``tiny`` preset; ``n_codebooks`` and ``n_units`` size
            the quantizer).
        rvq_path: Fitted quantizer to use (fitted on concepts, or on the residuals of
            ``residual``).
        rvq_fit_samples: Training concepts (or residuals) to fit the quantizer on when there is
            none.
        rvq_niter: k-means iterations per codebook when fitting.
        temperature: Code sampling temperature for generation (0 = greedy).
        top_p: Nucleus mass for generation.
        eval_temperature: Sampling temperature of validation/test predictions (0 = greedy).
        eval_decoding: Decoding of validation/test predictions: ``"sample"`` (codes drawn at
            ``eval_temperature``, greedy by default) or ``"expected"`` (the probability-weighted
            mean code vector per level at ``eval_temperature``;
            :class:`~lcm.objectives.QuantObjective`). Generation keeps the objective's
            ``"sample"`` unless asked (``Settings.decoding``).
        **kwargs: The arguments of :class:`LCMModule`.
    """

    family = "quant_lcm"
    arch_cls = QuantLCMConfig
    extra_metrics = ("code_accuracy",)

    def __init__(
        self,
        arch: QuantLCMConfig = TINY["quant_lcm"],
        rvq_path: str | None = None,
        rvq_fit_samples: int = 100_000,
        rvq_niter: int = 10,
        temperature: float = 1.0,
        top_p: float = 0.9,
        eval_temperature: float = 0.0,
        eval_decoding: Decoding = "sample",
        **kwargs: Any,
    ) -> None:
        super().__init__(arch=arch, **kwargs)
        self.rvq_error: dict[str, float] = {}
        self.rvq_fit_samples, self.rvq_niter = rvq_fit_samples, rvq_niter
        self.eval_temperature = eval_temperature
        self.eval_decoding: Decoding = check_decoding(eval_decoding)
        model = self.arch.build()
        if rvq_path:
            model.set_quantizer(RVQ.load(rvq_path))
        try:
            objective = QuantObjective(
                model, temperature=temperature, top_p=top_p, residual=self.residual
            )
        except ValueError as e:
            if not rvq_path:
                raise
            # name the file whose quantizer does not fit the residual
            raise ValueError(f"{rvq_path}: {e}") from None
        self.attach(objective)

    @property
    def rvq(self) -> RVQ:
        return self.objective.model.rvq

    def setup(self, stage: str) -> None:
        super().setup(stage)
        trainer = self._trainer
        resuming = trainer is not None and trainer.ckpt_path is not None
        if bool(self.rvq.fitted) or resuming or stage != "fit":
            return
        dm = self._datamodule()
        if dm is None or not hasattr(dm, "sample_code_targets"):
            raise RuntimeError(
                "Quant-LCM needs a fitted quantizer: pass rvq_path (lcm fit-rvq) or train with "
                "a ConceptDataModule to fit one on the training concepts"
            )
        n, seed = self.rvq_fit_samples, self.seed
        if trainer is None or trainer.is_global_zero:
            x = dm.sample_code_targets("train", n, self.residual, seed=seed)
            self.rvq.fit(x, niter=self.rvq_niter, seed=seed, residual=self.residual)
            self.rvq_error = {"train_relative_error": self.rvq.reconstruction_error(x)["relative"]}
            held = dm.sample_code_targets("val", min(n, 20_000), self.residual, seed=seed + 1)
            if len(held):
                err = self.rvq.reconstruction_error(held)["relative"]
                self.rvq_error["rvq_relative_error"] = err
            rank_zero_info(f"lcm: fitted RVQ {self.rvq.extra_repr()}: {self.rvq_error}")
        if trainer is not None and trainer.world_size > 1:
            books = trainer.strategy.broadcast(self.rvq.codebooks.cpu(), src=0)
            with torch.no_grad():
                self.rvq.codebooks.copy_(books)
                self.rvq.fitted.fill_(True)
                self.rvq.fitted_on.fill_(RVQ_RESIDUALS.index(self.residual))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if "rvq_relative_error" in self.rvq_error:
            self.log("val/rvq_relative_error", self.rvq_error["rvq_relative_error"])

    def eval_kwargs(self) -> dict[str, Any]:
        return {"temperature": self.eval_temperature, "decoding": self.eval_decoding}

    def eval_predict(
        self, objective: Objective, batch: Batch, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        assert isinstance(objective, QuantObjective)
        pred, pred_codes = objective.predict_all_with_codes(batch, generator, **self.eval_kwargs())
        # Share of the K codes of each target (its residual's, with a residual) that the
        # sampled prediction got right (expected decoding: its argmax per level).
        codes = objective.target_codes(batch)  # (B, T, K)
        return pred, {"code_accuracy": (codes == pred_codes).float().mean(dim=-1)}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents without reading its tensors: they are memory-mapped, so looking
    at metadata (family, hyperparameters) of a multi-GB checkpoint costs almost nothing.
    ``weights_only``: a checkpoint is data (tensors, numbers, strings), never code to unpickle."""
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)


def load_module(path: str, map_location: str | torch.device | None = "cpu") -> LCMModule:
    """Load a checkpoint of any family (the family is recorded in the checkpoint)."""
    checkpoint = read_checkpoint(path)
    family = checkpoint.get("lcm_family")
    if family not in FAMILY_MODULES and checkpoint.get("lcm_module"):
        # A plug-in family: importing the module that defines it registers it.
        importlib.import_module(str(checkpoint["lcm_module"]).split(":")[0])
    if family not in FAMILY_MODULES:
        raise ValueError(f"{path} is not an lcm checkpoint (family {family!r})")
    return FAMILY_MODULES[family].load_from_checkpoint(
        path, map_location=map_location, weights_only=True
    )
