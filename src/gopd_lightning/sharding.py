"""FSDP2 for G-OPD: shard every model, keep the student whole while it generates, count all-gathers.

Under Lightning's ``ModelParallelStrategy`` (``FSDP2Strategy`` below: every process in one FSDP
group), ``PolicyModule.configure_model`` calls :func:`parallelize` for every method:

- every model gets ``fully_shard`` per decoder layer and once as a whole; the whole-model (root)
  group holds the embeddings, the final norm and the output head, so tied weights stay together;
- the student keeps fp32 master weights and optimiser state, computes in ``param_dtype`` (bf16)
  and reduce-scatters its gradients in ``reduce_dtype`` (fp32); its root group stays gathered
  from forward to backward;
- frozen teachers and the reference (loaded in ``frozen_dtype``) have no gradients and no
  optimiser state: every group, the root included, is freed right after its forward;
- activation checkpointing of the student's decoder layers (any strategy, when enabled):
  transformers only checkpoints with gradients on, so ``generate`` keeps its KV cache.

:func:`unsharded_generation` wraps the student's ``generate``: "whole" all-gathers every group
once and keeps it for the whole call (one all-gather per group per rollout instead of one per
layer per generated token); "layerwise", or "whole" when the gathered student would not fit in
memory on some rank, keeps only the root group gathered and lets FSDP gather each layer for every
token. :func:`count_all_gathers` counts FSDP all-gathers in a block, for tests and benchmarks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.profiler import ProfilerActivity, profile

from gopd_lightning.models import DTYPES

ALL_GATHER_EVENT = re.compile(r"FSDP::all_gather( \(|$)")
"""Profiler name of one FSDP all-gather (not its copy-in/copy-out steps)."""


@dataclass
class ShardingConfig:
    """Memory and parallelism of the student; the FSDP2 settings apply under ``ModelParallelStrategy``."""

    activation_checkpointing: bool = False
    """Recompute the student's decoder layers in the backward pass instead of keeping their
    activations (any strategy). Generation keeps its KV cache."""
    rollout_unshard: Literal["whole", "layerwise"] = "whole"
    """FSDP2: "whole" gathers the student once per ``generate`` call; "layerwise" gathers each
    decoder layer for every generated token (least memory, most communication)."""
    rollout_memory_fraction: float = 0.5
    """FSDP2, "whole": the largest share of free device memory the gathered student may take; when
    it needs more on any rank, every rank generates "layerwise" (the rest is for the KV cache)."""
    param_dtype: str = "bfloat16"
    """FSDP2: the dtype the student computes in (its weights are all-gathered in it); the master
    weights and the optimiser state keep ``student_dtype``."""
    reduce_dtype: str = "float32"
    """FSDP2: the dtype of the student's gradient reduce-scatter."""


# the config lives in checkpoint hyperparameters, which Lightning loads with weights_only=True
torch.serialization.add_safe_globals([ShardingConfig])


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` with every process in one FSDP2 group (no tensor parallelism).

    Lightning's default puts the processes of a node in a tensor-parallel group; G-OPD shards whole
    models across all processes instead. Checkpoints are distributed (one folder, a shard per rank).
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # read when the mesh is built
        super().setup_environment()

    def setup(self, trainer: pl.Trainer) -> None:
        if not any(isinstance(p, DTensor) for p in self.lightning_module.parameters()):
            raise TypeError(
                f"{type(self.lightning_module).__name__} did not shard its models in configure_model; "
                "FSDP2 needs gopd_lightning.sharding.parallelize there (PolicyModule.configure_model calls it)"
            )
        super().setup(trainer)


def parallelize(
    student: nn.Module, frozen: Iterable[nn.Module], mesh: DeviceMesh | None, config: ShardingConfig
) -> None:
    """Activation checkpointing of the student (when enabled) and, given a device mesh, FSDP2 of every model."""
    if config.activation_checkpointing:
        enable_activation_checkpointing(student)
    if mesh is None:
        return
    if "data_parallel" in (mesh.mesh_dim_names or ()):
        mesh = mesh["data_parallel"]
    shard_model(student, mesh, MixedPrecisionPolicy(DTYPES[config.param_dtype], DTYPES[config.reduce_dtype]))
    for model in frozen:
        shard_model(model, mesh, MixedPrecisionPolicy())


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Checkpoint every decoder layer (non-reentrant); only forwards with gradients are checkpointed."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def shard_model(model: nn.Module, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy) -> None:
    """``fully_shard`` each decoder layer, then the whole model (its root group: embeddings, norm, head)."""
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=_reshards_after_forward(layer, model), mp_policy=mp_policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=_reshards_after_forward(model, model), mp_policy=mp_policy)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a transformers causal LM (``model.get_decoder().layers``)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__}: no decoder layers at get_decoder().layers to shard")
    return layers


def _reshards_after_forward(group: nn.Module, root: nn.Module) -> bool:
    """Free a group's gathered weights after its forward, except a trainable model's root (needed in backward)."""
    return group is not root or not any(p.requires_grad for p in root.parameters())


@contextmanager
def unsharded_generation(model: nn.Module, config: ShardingConfig) -> Iterator[bool]:
    """Keep ``model`` gathered while it generates (see the module docstring); a no-op without FSDP2.

    Yields whether generation goes layer by layer: then every step all-gathers, and the ranks must
    keep stepping together until all are done (``generate``'s ``synced_gpus``).
    """
    groups = [module for module in model.modules() if isinstance(module, FSDPModule)]
    if not groups:
        yield False
        return
    whole = config.rollout_unshard == "whole" and _fits_on_every_rank(model, config)
    gathered = groups if whole else [model]
    for group in gathered:
        group.set_reshard_after_forward(False, recurse=False)
    for handle in [group.unshard(async_op=True) for group in gathered]:
        handle.wait()
    try:
        yield not whole
    finally:
        for group in gathered:
            group.reshard()
            group.set_reshard_after_forward(_reshards_after_forward(group, model), recurse=False)


def _fits_on_every_rank(model: nn.Module, config: ShardingConfig) -> bool:
    """Whether the gathered model fits ``rollout_memory_fraction`` of free memory, agreed by all ranks."""
    params = [p for p in model.parameters() if isinstance(p, DTensor)]
    needed = sum(p.numel() for p in params) * DTYPES[config.param_dtype].itemsize
    fits = torch.tensor([needed <= config.rollout_memory_fraction * free_memory(params[0].device)], dtype=torch.int)
    fits = fits.to(params[0].device)
    dist.all_reduce(fits, op=dist.ReduceOp.MIN, group=params[0].device_mesh.get_group())
    return bool(fits.item())


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device`` (a GPU, or this host's RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass
class AllGathers:
    """How many FSDP all-gathers ran in a :func:`count_all_gathers` block (set when the block ends)."""

    count: int = 0


@contextmanager
def count_all_gathers() -> Iterator[AllGathers]:
    """Count this process's FSDP2 all-gathers in the block (from the profiler's record of FSDP's regions)."""
    counted = AllGathers()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        yield counted
    counted.count = sum(1 for event in profiler.events() if ALL_GATHER_EVENT.match(event.name))
