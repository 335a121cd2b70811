"""How the model is spread over the ranks: ``TRAIN.STRATEGY`` ddp (DistributedDataParallel) or
fsdp (FSDP2 ``fully_shard``), and the two things the training step must do differently.

fsdp shards every ViT block, every ConvNeXt stage and the root (for ``MODEL.TYPE timm``: each
entry of the trunk's ``blocks`` / ``stages`` / ``layers`` container, else each top-level child of
the trunk), so a rank holds 1/N of the parameters, gradients and optimizer state. ``fully_shard``
works in place: the model object stays the one the optimizer, evaluation and checkpoints use.
"""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger("linnaeus")

STRATEGIES = ("ddp", "fsdp")
_BLOCK_CONTAINERS = ("blocks", "stages", "layers")


def wrap_model(model: nn.Module, strategy: str, *, amp: bool = False, ema: nn.Module | None = None) -> nn.Module:
    """The module the forward goes through: ``DistributedDataParallel(model)`` or, for fsdp,
    ``model`` itself sharded in place. Without a process group both return ``model`` unchanged.

    ``ema``: a timm ``ModelEma*`` whose ``.module`` was copied from ``model`` before this call
    (FSDP2 refuses deepcopy). It gets rank 0's values, as ``model`` does, and under fsdp is sharded
    the same way, so each rank keeps only its shard of the EMA weights too."""
    if strategy not in STRATEGIES:
        raise ValueError(f"TRAIN.STRATEGY must be one of {STRATEGIES}, got {strategy!r}")
    if not (dist.is_available() and dist.is_initialized()):
        return model
    copy = getattr(ema, "module", ema)
    if strategy == "ddp":
        if copy is not None:
            _broadcast_from_rank0(copy)  # what DDP's constructor does for model
        return DistributedDataParallel(model)
    if any(not p.is_contiguous() for p in model.parameters()):
        logger.info("TRAIN.STRATEGY fsdp: parameters made contiguous (MODEL.CHANNELS_LAST has no effect on them)")
    mp = MixedPrecisionPolicy()
    if amp and next(model.parameters()).is_cuda:
        # bf16 compute with fp32 gradient reduction: what TRAIN.AMP asks for under fsdp on CUDA.
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    units = _shard(model, mp)
    if copy is not None:
        _shard(copy, mp)
    logger.info("FSDP2: sharded %d unit(s) + root over %d ranks%s", units, dist.get_world_size(),
                " (the EMA copy alike)" if copy is not None else "")
    return model


def _shard(module: nn.Module, mp: MixedPrecisionPolicy) -> int:
    """``module`` sharded in place from rank 0's values; returns its number of units (root excluded)."""
    if any(not p.is_contiguous() for p in module.parameters()):
        # FSDP2 shards flat, contiguous parameters only (it refuses channels_last conv weights).
        module.to(memory_format=torch.contiguous_format)
    _broadcast_from_rank0(module)
    units = shard_units(module)
    for unit in units:
        fully_shard(unit, mp_policy=mp)
    fully_shard(module, mp_policy=mp)
    return len(units)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The sub-modules that get their own ``fully_shard`` (each one all-gathers on its own)."""
    trunk = getattr(model, "trunk", None)
    if isinstance(trunk, nn.Module):  # MODEL.TYPE timm: the timm model is the trunk
        containers = list(_containers(trunk))
        if containers:
            return [m for c in containers for m in c.children()]
        return [m for m in trunk.children() if any(True for _ in m.parameters())]
    return [m for c in _containers(model) for m in c.children()]


def _containers(module: nn.Module) -> Iterator[nn.Module]:
    for name in _BLOCK_CONTAINERS:
        child = getattr(module, name, None)
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            yield child


def _broadcast_from_rank0(model: nn.Module) -> None:
    """Every rank starts from rank 0's values (DDP's constructor does this; fully_shard does not,
    and ranks are seeded differently): parameters and buffers, before they are sharded."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def gradient_sync(model: nn.Module, sync: bool) -> ContextManager[None]:
    """Skip the gradient reduction on all but the last micro-batch of an accumulation group:
    DDP's ``no_sync``; FSDP2's ``set_requires_gradient_sync`` (gradients stay unsharded until then)."""
    if isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext() if sync else model.no_sync()
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def grad_norm_value(norm: torch.Tensor) -> torch.Tensor:
    """``clip_grad_norm_``'s result as a plain tensor: under fsdp it is a DTensor (the norm over all
    shards, already reduced), whose ``.item()`` would need a collective at log time."""
    full = getattr(norm, "full_tensor", None)
    return full() if callable(full) else norm
