"""Overlapped snapshots: copy what only the optimizers change while the next forward and backward run.

A background save must write the state as it was at the save call. The plain way (``AsyncWriter.snapshot``)
copies every tensor before the call returns, so the training loop waits for the whole copy. Most of
those bytes (parameters, optimizer state, the EMA) do not change until the next optimizer step,
though, so their copy can run beside the next forward and backward: the call copies the rest (buffers,
RNG, anything else), and the optimizers wait for the deferred copy in a step pre-hook.

:class:`SnapshotGate` is that wait; :class:`Overlap` says which storages may be deferred and which gate
holds their writers. Storages are named by :func:`storage_key`, the identity ``torch.save`` dedups by.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch.distributed.tensor import DTensor


def storage_key(t: torch.Tensor) -> int:
    """The identity of the storage ``t`` views (the same for every view of it, whatever Python object;
    for a DTensor, its local shard's)."""
    if isinstance(t, DTensor):
        t = t.to_local()
    return t.untyped_storage()._cdata


class SnapshotGate:
    """Holds the step of every optimizer it watches while a deferred copy is in flight.

    Closed by the writer when it defers a copy, opened when the copy is done (or failed): a step
    pre-hook of each watched optimizer waits for it, so no parameter or optimizer state changes under
    the copy.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._hooks: weakref.WeakKeyDictionary[torch.optim.Optimizer, Any] = weakref.WeakKeyDictionary()

    def watch(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Make each optimizer's ``step`` wait for the gate (once per optimizer)."""
        for opt in optimizers:
            if opt not in self._hooks:
                self._hooks[opt] = opt.register_step_pre_hook(lambda *_: self.wait())

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def wait(self) -> None:
        """Return once no deferred copy is in flight."""
        self._open.wait()

    def unwatch(self) -> None:
        """Remove the step pre-hooks (after the last save; the gate is open by then)."""
        for handle in list(self._hooks.values()):
            handle.remove()
        self._hooks.clear()


@dataclass(frozen=True)
class Overlap:
    """Which storages a save may copy after its call returns (``deferred``, by :func:`storage_key`), and
    the gate that holds everything that could change them until the copy is done."""

    gate: SnapshotGate
    deferred: frozenset[int]


__all__ = ["Overlap", "SnapshotGate", "storage_key"]
