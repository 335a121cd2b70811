"""The model in a checkpoint: its state dict without wrapper prefixes, the compatibility check
before anything is loaded, and an FSDP2-sharded model's whole state.

A checkpoint always stores the plain module's names (no ``module.`` from DDP, no ``_orig_mod.``
from ``torch.compile``), so a file loads into any wrapping of the same architecture.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from ..errors import CheckpointIncompatibleError


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP/FSDP-style ``.module`` wrappers and ``torch.compile``."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def model_state_dict(model: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """State dict without wrapper prefixes, whether given a module or a state dict."""
    if isinstance(model, nn.Module):
        return unwrap_model(model).state_dict()
    return {_strip_wrapper_prefix(k): v for k, v in model.items()}


def _strip_wrapper_prefix(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def check_model_compatible(model: nn.Module, state: Mapping[str, Any], *, source: str) -> None:
    """Raise :class:`CheckpointIncompatibleError` listing key and shape differences."""
    own = unwrap_model(model).state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in sorted(own.keys() & state.keys())
        if isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointIncompatibleError(
            f"model state in {source} does not match the model being restored "
            f"({type(unwrap_model(model)).__name__}); use a transfer/pretrained load for a "
            "different architecture or taxonomy.",
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )

def has_dtensors(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are sharded (FSDP2 DTensors): full tensors must not be
    loaded into it with ``load_state_dict``."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_model_state(model: nn.Module) -> dict[str, Any]:
    """The whole model's state dict on rank 0 (CPU), empty elsewhere: what a single-file save of an
    FSDP2 model writes. A collective."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


__all__ = ["check_model_compatible", "full_model_state", "has_dtensors", "model_state_dict", "unwrap_model"]
