"""Which tensors of a save only the optimizer step changes: what an overlapped snapshot may copy late."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch

from ..disk import Overlap, SnapshotGate, storage_key

# The component whose tensors change only right after an optimizer step (timm's ModelEmaV3 and the like).
EMA_KEY = "ema"


def optimizers_in(components: Mapping[str, Any]) -> list[torch.optim.Optimizer]:
    """The live optimizers among a save's components (their steps are what an overlapped snapshot holds)."""
    return [v for v in components.values() if isinstance(v, torch.optim.Optimizer)]


def stepped_storages(optimizers: Iterable[torch.optim.Optimizer], ema: Any = None) -> frozenset[int]:
    """Storages (:func:`~linnaeus.checkpoint.disk.storage_key`) that change only in these optimizers'
    steps (their parameters and per-parameter state) or in the EMA update that follows a step."""
    keys: set[int] = set()
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                keys.add(storage_key(p))
                keys.update(storage_key(v) for v in opt.state.get(p, {}).values() if isinstance(v, torch.Tensor))
    state_dict = getattr(ema, "state_dict", None)
    if state_dict is not None:
        keys.update(storage_key(v) for v in state_dict().values() if isinstance(v, torch.Tensor))
    return frozenset(keys)


class SnapshotOverlap:
    """A manager's overlapped snapshots: which tensors each save may copy late, and the gate that the
    optimizers given to its saves wait at."""

    def __init__(self) -> None:
        self.gate = SnapshotGate()

    def plan(self, components: Mapping[str, Any]) -> Overlap | None:
        """The tensors of the live optimizers among ``components`` (and the EMA's, updated right after
        their step), whose steps now wait for the gate; None when there is no live optimizer (nothing
        would hold the writers back, so everything is copied at the call)."""
        optimizers = optimizers_in(components)
        if not optimizers:
            return None
        self.gate.watch(optimizers)
        return Overlap(self.gate, stepped_storages(optimizers, components.get(EMA_KEY)))


__all__ = ["EMA_KEY", "SnapshotOverlap", "optimizers_in", "stepped_storages"]
