"""``torch.compile`` for training, as a Lightning callback (no change to module signatures).

From YAML (or ``--trainer.callbacks``)::

    trainer:
      callbacks:
        - class_path: lcm.train.compile.CompileModel
          init_args: {compile: true, mode: null}

The network ``module.objective.model`` is compiled in place with ``nn.Module.compile``: its
parameters, ``state_dict`` keys and checkpoints stay exactly those of the eager module, and only
its ``forward`` (what the training loss calls) runs through the compiler. Sampling methods
(``contextualize``, ``denoise``, ...) stay eager.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


def compile_network(
    module: Any,
    *,
    mode: CompileMode | None = None,
    dynamic: bool | None = None,
    fullgraph: bool = False,
    backend: str = "inductor",
) -> nn.Module:
    """Compile ``module.objective.model`` in place (``nn.Module.compile``) and return it.

    Args:
        module: an object with ``.objective.model`` (an :class:`~lcm.train.module.LCMModule`).
        mode: ``torch.compile`` mode (None: the default).
        dynamic: ``torch.compile``'s dynamic-shape setting (None: decide on recompilation).
        fullgraph: fail on graph breaks instead of falling back to eager around them.
        backend: ``torch.compile`` backend.
    """
    network = module.objective.model
    if not isinstance(network, nn.Module):
        raise TypeError(f"module.objective.model is a {type(network).__name__}, not a Module")
    network.compile(mode=mode, dynamic=dynamic, fullgraph=fullgraph, backend=backend)
    return network


def compile_optimizer(
    optimizer: torch.optim.Optimizer, backend: str = "inductor"
) -> torch.optim.Optimizer:
    """Run ``optimizer``'s update through ``torch.compile``, in place, and return it.

    The reference (non-fused) AdamW on CPU is a Python loop of about a dozen small ops per
    parameter; compiled, it is a few fused kernels for all of them. The closure (Lightning's
    forward and backward) still runs eagerly before the update. Learning rates become 0-d
    tensors, so that a schedule (``LambdaLR`` fills them in place) does not recompile the
    update at every step. The update computes what the eager one does (tested).

    Args:
        optimizer: a ``torch.optim`` optimizer, not fused (a fused one is one kernel already).
        backend: ``torch.compile`` backend.
    """
    if any(group.get("fused") for group in optimizer.param_groups):
        return optimizer
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]))
    eager_step = optimizer.step

    @torch.compile(backend=backend)
    def update() -> None:
        eager_step()

    def step(closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        update()
        optimizer._opt_called = True  # what an LR scheduler's own wrapper of `step` records
        return loss

    if hasattr(eager_step, "_wrapped_by_lr_sched"):  # the scheduler checks the order of calls
        step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    optimizer.step = step  # type: ignore[method-assign]
    return optimizer


def compile_loss(
    objective: nn.Module,
    *,
    mode: CompileMode | None = None,
    dynamic: bool | None = None,
    backend: str = "inductor",
) -> bool:
    """Run ``objective.loss`` (network, alignment and loss) through ``torch.compile`` as one
    graph, in place, when the loss draws no random numbers; return whether it did.

    Only Base-LCM's :class:`~lcm.objectives.MSEObjective` qualifies: the diffusion losses draw
    noise and timesteps from a ``torch.Generator``, which dynamo does not trace. Compiling the
    network alone leaves the loss over the (B, T, D) outputs (shift, weights, squared error, mean
    and their backward) to eager kernels; at tiny widths that is a large share of a step
    (bench/RESULTS.md). The ``generator`` argument is accepted and not passed on (the loss does
    not read it), so a new generator per step does not recompile.
    """
    from lcm.objectives import MSEObjective

    if not isinstance(objective, MSEObjective):
        return False
    compiled = torch.compile(
        functools.partial(type(objective).loss, objective),
        mode=mode,
        dynamic=dynamic,
        backend=backend,
    )

    def loss(batch: Any, generator: torch.Generator | None = None) -> Any:
        return compiled(batch)

    objective.loss = loss  # type: ignore[method-assign]
    return True


class CompileModel(L.Callback):
    """Compile the trained network with ``torch.compile`` when training sets up.

    Args:
        compile: compile (True) or leave eager (False; lets a config switch it off).
        mode: ``torch.compile`` mode, e.g. ``"max-autotune"`` (None: the default).
        dynamic: dynamic shapes (None: torch decides after a recompilation).
        fullgraph: require one graph (error on graph breaks).
        backend: ``torch.compile`` backend.
        optimizer: also compile the optimizers' updates (:func:`compile_optimizer`; non-fused
            optimizers only, i.e. AdamW on CPU).
        loss: also compile the objective's loss with the network (:func:`compile_loss`; the
            losses that draw no random numbers, i.e. Base-LCM's).
    """

    def __init__(
        self,
        compile: bool = True,
        mode: CompileMode | None = None,
        dynamic: bool | None = None,
        fullgraph: bool = False,
        backend: str = "inductor",
        optimizer: bool = False,
        loss: bool = False,
    ) -> None:
        super().__init__()
        self.compile, self.mode, self.dynamic = compile, mode, dynamic
        self.fullgraph, self.backend = fullgraph, backend
        self.optimizer, self.loss = optimizer, loss

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.compile and self.optimizer:  # the optimizers exist by now (not at setup)
            for opt in trainer.optimizers:
                compile_optimizer(opt, backend=self.backend)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.compile and stage == "fit":
            compile_network(
                pl_module,
                mode=self.mode,
                dynamic=self.dynamic,
                fullgraph=self.fullgraph,
                backend=self.backend,
            )
            if self.loss:
                compile_loss(
                    pl_module.objective, mode=self.mode, dynamic=self.dynamic, backend=self.backend
                )


def compiler_available() -> bool:
    """Whether inductor can build CPU kernels here (a C++ compiler is found)."""
    try:
        from torch._inductor import cpp_builder

        return bool(cpp_builder.get_cpp_compiler())
    except Exception:  # noqa: BLE001 - any failure means: no toolchain
        return False
