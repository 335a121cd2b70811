"""Restoring a checkpoint's state into live objects: the model, each named component, every
rank's RNG. A state that holds whole tensors (a single file's) goes into a plain model with
``load_state_dict`` and into an FSDP2-sharded model through ``set_state_dict``, each rank keeping
its shard; a sharded checkpoint's tensors are loaded by its format before the rest comes here.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..errors import CheckpointIncompatibleError
from .anatomy import PROGRESS_FIELDS, Stateful, present_components
from .model import check_model_compatible, has_dtensors, model_state_dict, unwrap_model
from .rng import restore_rank_rng_state


def restore_state(
    state: Mapping[str, Any],
    model: nn.Module | None = None,
    components: Mapping[str, Stateful | None] | None = None,
    *,
    rng: bool = True,
    source: str = "checkpoint",
) -> dict[str, int]:
    """Load ``state`` into ``model`` and each named component (``None`` values are skipped);
    return its progress.

    A component passed in but missing from the checkpoint is an error, not a silent
    fresh start: resuming without optimizer state would not be the run the user asked for.
    """
    if model is not None:
        check_model_compatible(model, state["model"], source=source)
        unwrap_model(model).load_state_dict(state["model"])
    for key, obj in present_components(components):
        if key not in state:
            kind = state.get("meta", {}).get("kind", "?")
            raise CheckpointIncompatibleError(
                f"{source} has no '{key}' state (checkpoint kind {kind!r}; it holds "
                f"{sorted(state)}). Resume from a full checkpoint, or load it as pretrained weights."
            )
        obj.load_state_dict(state[key])
    if rng and "rng" in state:
        restore_rank_rng_state(state["rng"])
    progress = state.get("progress", {})
    return {k: int(progress.get(k, 0)) for k in PROGRESS_FIELDS}



def restore_full_state(state: Mapping[str, Any], model: nn.Module | None, components: Mapping[str, Stateful | None],
                       *, rng: bool, source: str) -> dict[str, int]:
    """:func:`restore_state` for a state of whole tensors into any model: into an FSDP2-sharded
    model each rank keeps its shard of the full tensors (and of the optimizer's state)."""
    if model is None or not has_dtensors(model):
        return restore_state(state, model, restore_full_modules(state, components, source), rng=rng, source=source)
    full_model = model_state_dict(state["model"])
    check_model_compatible(model, full_model, source=source)
    set_model_state_dict(model, full_model, options=StateDictOptions(full_state_dict=True))
    optimizer = components.get("optimizer")
    if optimizer is not None:
        restore_full_optimizer(state, model, optimizer, source)
    others = {k: v for k, v in components.items() if k != "optimizer"}
    return restore_state(state, None, restore_full_modules(state, others, source), rng=rng, source=source)


def restore_full_optimizer(state: Mapping[str, Any], model: nn.Module | None, optimizer: Any, source: str) -> None:
    """``state["optimizer"]`` (``optimizer.state_dict()``: keyed by parameter index, whole tensors)
    into the live optimizer: directly for a plain model; for an FSDP2-sharded one keyed by parameter
    name first (the live optimizer's param groups give the order), each rank keeping its shard."""
    if "optimizer" not in state:
        raise CheckpointIncompatibleError(f"{source} has no 'optimizer' state; resume from a full checkpoint.")
    if model is None or not has_dtensors(model):
        optimizer.load_state_dict(state["optimizer"])
        return
    set_optimizer_state_dict(model, optimizer, optimizer_state_by_name(state["optimizer"], model, optimizer, source),
                             options=StateDictOptions(full_state_dict=True))


def optimizer_state_by_name(saved: Mapping[str, Any], model: nn.Module, optimizer: Any, source: str) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter index (``optimizer.state_dict()``) keyed by
    parameter name instead, as ``set_optimizer_state_dict`` takes it."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = saved.get("param_groups", [])
    live = optimizer.param_groups
    if len(groups) != len(live) or any(len(g["params"]) != len(lg["params"]) for g, lg in zip(groups, live)):
        raise CheckpointIncompatibleError(
            f"optimizer state in {source} has param groups of sizes {[len(g['params']) for g in groups]}, the "
            f"optimizer being restored {[len(g['params']) for g in live]}.")
    index_to_name = {}
    for g, lg in zip(groups, live):
        for idx, p in zip(g["params"], lg["params"]):
            index_to_name[idx] = names[id(p)]
    return {"state": {index_to_name[i]: v for i, v in saved.get("state", {}).items()},
            "param_groups": [{**g, "params": [index_to_name[i] for i in g["params"]]} for g in groups]}


def restore_full_modules(state: Mapping[str, Any], components: Mapping[str, Stateful | None],
                         source: str) -> dict[str, Stateful | None]:
    """Module components with FSDP2-sharded parameters (an EMA under fsdp) given the full state
    dict a single file holds: each rank keeps its shard (``load_state_dict`` would copy full
    tensors into DTensors). Returns the other components, for :func:`restore_state`, which also
    refuses any component the checkpoint lacks."""
    rest = {}
    for key, obj in components.items():
        if isinstance(obj, nn.Module) and has_dtensors(obj) and isinstance(state.get(key), Mapping):
            check_model_compatible(obj, state[key], source=f"{source} ({key!r})")
            # A copy: set_model_state_dict replaces the dict's tensors by this rank's shards.
            set_model_state_dict(obj, dict(state[key]), options=StateDictOptions(full_state_dict=True))
        else:
            rest[key] = obj
    return rest


__all__ = ["optimizer_state_by_name", "restore_full_modules", "restore_full_optimizer", "restore_full_state",
           "restore_state"]
