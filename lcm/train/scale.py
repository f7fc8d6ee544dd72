"""Training at scale: FSDP with one unit per transformer layer, and activation checkpointing.

Both act on :data:`lcm.models.TRANSFORMER_LAYERS` (the layer classes of every family), so a
recipe names no class. From YAML::

    trainer:
      strategy:
        class_path: lcm.train.scale.LCMFSDPStrategy
        init_args: {activation_checkpointing: true, sharding_strategy: FULL_SHARD}
      precision: bf16-mixed          # bf16 compute, fp32 master weights and optimizer state

or, without FSDP (one GPU, DDP), the callback ``lcm.train.scale.ActivationCheckpointing``.
Checkpoints are written as one full state dict (``state_dict_type: full``), so they load like
any other (``weights_only=True``), resume, and serve the API unchanged. Multi-node runs use
Lightning's own launchers (``--trainer.num_nodes``, SLURM or ``torchrun``; see the README).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lcm.models import TRANSFORMER_LAYERS


def checkpoint_layers(network: nn.Module) -> int:
    """Wrap every transformer layer of ``network`` so its activations are recomputed in the
    backward pass instead of stored (``torch.utils.checkpoint``, non-reentrant, RNG state kept,
    so dropout masks are the same). Returns the number of layers wrapped; state-dict keys are
    unchanged (the wrapper's prefix is stripped when saving)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    layers = [m for m in network.modules() if isinstance(m, TRANSFORMER_LAYERS)]
    apply_activation_checkpointing(
        network,
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(
            m, checkpoint_impl=CheckpointImpl.NO_REENTRANT
        ),
        check_fn=lambda m: isinstance(m, TRANSFORMER_LAYERS),
    )
    return len(layers)


class ActivationCheckpointing(L.Callback):
    """Recompute each transformer layer's activations in backward (less memory, ~30% more
    compute) without FSDP: one GPU or DDP. With FSDP use
    ``LCMFSDPStrategy(activation_checkpointing=True)`` instead."""

    def setup(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            n = checkpoint_layers(pl_module.objective.model)
            if n == 0:
                raise ValueError("activation checkpointing: the network has no transformer layer")


class LCMFSDPStrategy(ModelParallelStrategy):
    """Fully sharded data parallel (PyTorch's FSDP2, ``fully_shard``) with one FSDP unit per
    transformer layer of the LCM network and one for the rest of the module. Runs on GPUs (NCCL)
    and on CPUs (gloo), through Lightning's own launchers (``--trainer.devices``,
    ``--trainer.num_nodes``, SLURM, ``torchrun``).

    Args:
        activation_checkpointing: also recompute each layer's activations in backward.
        mixed_precision: ``bf16``: compute in bfloat16 with fp32 master weights, fp32
            gradient reduction and fp32 optimizer state (FSDP2's ``MixedPrecisionPolicy``; keep
            the trainer's ``precision`` at ``32-true``); ``none``: everything in fp32.
        reshard_after_forward: free each layer's gathered parameters after its forward
            (``False`` keeps them for the backward: faster, more memory, like ZeRO-2).
        save_distributed_checkpoint: ``False``: one consolidated checkpoint file, loadable
            anywhere with ``weights_only=True``; ``True``: one folder with a file per rank.
        process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPUs (None: Lightning's choice).
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        mixed_precision: Literal["none", "bf16"] = "none",
        reshard_after_forward: bool = True,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )
        self.activation_checkpointing = activation_checkpointing
        self.mixed_precision = mixed_precision
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # pure data parallelism: every process holds one shard (no tensor parallelism)
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def shard_module(self, module: nn.Module, network: nn.Module) -> int:
        """Apply activation checkpointing (optional) and FSDP2 to ``module`` (called from the
        LightningModule's ``configure_model``): one unit per layer of ``network``, then the
        whole module (its other parameters, e.g. a learned separator). Returns the number of
        layer units."""
        import torch
        from torch.distributed.fsdp import (
            MixedPrecisionPolicy,
            fully_shard,
            register_fsdp_forward_method,
        )

        if self.activation_checkpointing:
            checkpoint_layers(network)
        mesh = self.device_mesh["data_parallel"]
        policy = MixedPrecisionPolicy()
        if self.mixed_precision == "bf16":
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kwargs = dict(mesh=mesh, mp_policy=policy, reshard_after_forward=self.reshard_after_forward)
        units = _layer_units(network)
        for unit in units:
            fully_shard(unit, **kwargs)
        # The network is the root unit. Objectives call its methods besides forward
        # (contextualize, denoise, ...): each gathers the root's parameters like forward does.
        fully_shard(network, **kwargs)
        for name in _entry_points(network):
            register_fsdp_forward_method(network, name)
        return len(units)

    def post_backward(self, closure_loss: Any) -> None:
        """Average the gradients of the module's parameters outside the network (e.g. a
        learned separator) across processes; the network's are reduced by FSDP."""
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        super().post_backward(closure_loss)
        for p in self.lightning_module.parameters():
            if p.grad is not None and not isinstance(p, DTensor):
                dist.all_reduce(p.grad)
                p.grad /= self.world_size


#: Network methods that use no parameter (nothing to gather).
_NOT_ENTRY_POINTS = {
    "build",
    "param_count",
    "new_cache",
    "new_depth_cache",
    "forward",
    "reset_parameters",
    "set_quantizer",
}


def _entry_points(network: nn.Module) -> list[str]:
    """Public methods the project's network classes define (``contextualize``, ``denoise``...)."""
    import inspect

    names = {
        name
        for cls in type(network).__mro__
        if cls.__module__.startswith("lcm.")
        for name, value in vars(cls).items()
        if inspect.isfunction(value) and not name.startswith("_")
    }
    return sorted(names - _NOT_ENTRY_POINTS)


def _layer_units(network: nn.Module) -> list[nn.Module]:
    """The transformer layers of ``network``, or the activation-checkpointing wrappers around
    them where they are wrapped (the wrapper is then the unit, not the layer inside it)."""
    wrapped = {
        id(m._checkpoint_wrapped_module)
        for m in network.modules()
        if hasattr(m, "_checkpoint_wrapped_module")
    }
    units = []
    for m in network.modules():
        inner = getattr(m, "_checkpoint_wrapped_module", m)
        if isinstance(inner, TRANSFORMER_LAYERS) and id(m) not in wrapped:
            units.append(m)
    return units
