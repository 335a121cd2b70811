"""Background saving: snapshot state to CPU memory now, write it on a worker thread.

One save is in flight at a time; a new one first waits for the previous. The worker is
a fresh non-daemon thread per save, so an interpreter that exits normally finishes the
save in flight instead of abandoning a half-written temp file.

The snapshot holds what ``torch.save`` of the live state would write: every storage the
state's tensors view is copied once, whole, and each tensor is rebuilt as the same view
(offset, shape, strides, dtype) of its storage's copy. Tied weights, views, slices and
non-contiguous tensors therefore keep their sharing and layout, and an object met twice is
one object in the copy, as in pickle. On CPU the file is byte-identical to a synchronous
save of the same state; from a GPU only the recorded device of each storage differs.

The snapshot is the only part the training loop waits for. Its CPU storages are kept after
the write and reused by the next snapshot (by size): copying into memory that is already
mapped avoids the page faults and zeroing of fresh allocations. Each kept storage is handed
out once per snapshot, so two tensors of the state never land in one buffer. The cost is
one state's worth of host memory held between saves.

With an :class:`~.overlap.Overlap`, the storages it defers are allocated and laid out at the call
like the others, but their bytes are copied on the worker thread, first thing, with the gate
closed until they are (:mod:`.overlap`).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..testing import phase
from .hashed_file import Serializer, Written, write_hashed
from .overlap import Overlap, SnapshotGate

logger = logging.getLogger("linnaeus.checkpoint")


Allocate = Callable[[int], torch.UntypedStorage]


class _BufferPool:
    """CPU storages free for reuse, by size in bytes; new ones come from ``allocate``."""

    def __init__(self, allocate: Allocate = torch.UntypedStorage) -> None:
        self._allocate = allocate
        self._free: dict[int, list[torch.UntypedStorage]] = defaultdict(list)

    def recycle(self, storages: list[torch.UntypedStorage]) -> None:
        """Offer ``storages`` (each a distinct storage, no longer read by anyone) for reuse."""
        for s in storages:
            self._free[s.nbytes()].append(s)

    def take(self, nbytes: int) -> torch.UntypedStorage:
        free = self._free.get(nbytes)
        return free.pop() if free else self._allocate(nbytes)

    def clear(self) -> None:
        self._free.clear()


def _bytes_of(storage: torch.UntypedStorage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


class _Snapshot:
    """One deep copy of a state tree, storage by storage (see the module docstring)."""

    def __init__(self, pool: _BufferPool | None, deferred: frozenset[int] = frozenset()) -> None:
        self._pool = pool
        self._deferred = deferred
        self.storages: list[torch.UntypedStorage] = []  # the copies, each once
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (destination, source) of deferred copies
        # Source storage → its copy, keyed by the storage's identity (what torch.save keys by):
        # views of one storage share one copy, distinct storages never do.
        self._copies: dict[int, torch.UntypedStorage] = {}
        # id(source object) → its copy: an object that appears twice stays one object. The
        # sources are alive in the tree being copied, so their ids are not reused meanwhile.
        self._memo: dict[int, Any] = {}

    def copy(self, obj: Any) -> Any:
        if not isinstance(obj, (torch.Tensor, dict, list, tuple)) or isinstance(obj, torch.Size):
            return obj  # str/int/float/bool/None/bytes/torch.Size are immutable
        done = self._memo.get(id(obj))
        if done is not None:
            return done
        if isinstance(obj, torch.Tensor):
            out: Any = self._tensor(obj)
        elif isinstance(obj, dict):
            # Containers are rebuilt too: state dicts share live objects (e.g. optimizer
            # param_groups, which the scheduler keeps mutating) that must not change under the writer.
            items = [(k, self.copy(v)) for k, v in obj.items()]
            out = dict(items) if type(obj) is dict else type(obj)(items)  # keeps OrderedDict
            if type(obj) is not dict and getattr(obj, "__dict__", None):
                # A module's state_dict carries _metadata (each submodule's version, which its
                # _load_from_state_dict reads): pickled by torch.save, so kept here too.
                out.__dict__.update(self.copy(dict(vars(obj))))
        elif isinstance(obj, list):
            out = [self.copy(v) for v in obj]
        else:
            out = tuple(self.copy(v) for v in obj)
        self._memo[id(obj)] = out
        return out

    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        kind = type(t)
        if ((kind is not torch.Tensor and kind is not nn.Parameter) or t.layout != torch.strided or t.is_quantized
                or t.is_conj() or t.is_neg()):
            return t.detach().to("cpu", copy=True)  # rare kinds: a private copy
        source = t.untyped_storage()
        copy = self._copies.get(source._cdata)
        out = torch.empty(0, dtype=t.dtype)
        if copy is None:
            nbytes = source.nbytes()
            copy = self._pool.take(nbytes) if self._pool is not None else torch.UntypedStorage(nbytes)
            self._copies[source._cdata] = copy
            self.storages.append(copy)
            out.set_(copy, t.storage_offset(), t.shape, t.stride())
            if t.storage_offset() == 0 and t.numel() * t.element_size() == nbytes and t.is_contiguous():
                pair = (out, t.detach())  # the usual parameter: the tensor is its whole storage
            else:
                pair = (_bytes_of(copy), _bytes_of(source))
            if source._cdata in self._deferred:
                self.pending.append(pair)
            else:
                pair[0].copy_(pair[1])
        else:
            out.set_(copy, t.storage_offset(), t.shape, t.stride())
        if kind is nn.Parameter:
            return nn.Parameter(out, requires_grad=t.requires_grad)
        return out.requires_grad_() if t.requires_grad and t.is_leaf else out


def snapshot(obj: Any, pool: _BufferPool | None = None) -> Any:
    """Deep copy of a state tree with every tensor's storage copied to CPU memory (see the module docstring)."""
    return _Snapshot(pool).copy(obj)


class AsyncWriter:
    """Runs one job at a time on a background thread and keeps its first error for the caller."""

    def __init__(self, name: str = "checkpoint", reuse_buffers: bool = True,
                 allocate: Allocate = torch.UntypedStorage) -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._pool = _BufferPool(allocate) if reuse_buffers else None
        self._last_storages: list[torch.UntypedStorage] = []  # the last snapshot's, reused by the next
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # the last snapshot's deferred copies
        self._gate: SnapshotGate | None = None  # the last snapshot's, closed by submit() while it copies

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self, state: Any, overlap: Overlap | None = None) -> Any:
        """CPU copy of ``state`` for the next job (waits for the job in flight: its buffers get reused).

        With ``overlap``, the bytes of its deferred storages are copied by the next :meth:`submit`'s
        thread before the job, behind ``overlap.gate``; everything else is copied here."""
        self.wait_idle()
        if self._pool is not None:
            self._pool.recycle(self._last_storages)
        copier = _Snapshot(self._pool, overlap.deferred if overlap is not None else frozenset())
        frozen = copier.copy(state)
        if self._pool is not None:
            self._pool.clear()  # buffers that did not fit this state are released
            self._last_storages = copier.storages
        self._pending, self._gate = copier.pending, (overlap.gate if overlap is not None else None)
        return frozen

    def submit(self, job: Callable[[], None], description: str) -> None:
        """Wait for the job in flight, then start ``job`` in the background (after the deferred copies
        of the last snapshot, if any: the gate is closed from here until they are done)."""
        self.wait_idle()
        pending, gate = self._pending, self._gate
        self._pending, self._gate = [], None
        if pending and gate is not None:
            gate.close()  # here, not in snapshot(): a gate closed without a thread to open it would hang training

        def run() -> None:
            try:
                if pending:
                    try:
                        phase("snapshot-deferred")  # the overlap tests' seam: the deferred copy has not begun
                        for dst, src in pending:
                            dst.copy_(src)
                    finally:
                        if gate is not None:
                            gate.open()
                    pending.clear()
                job()
            except BaseException as e:  # noqa: BLE001 - kept and re-raised on the caller's thread by take_error()
                logger.error("Asynchronous %s failed: %s", description, e)
                with self._lock:
                    if self._error is None:
                        self._error = e

        self._thread = threading.Thread(target=run, name=f"linnaeus-{self._name}-writer", daemon=False)
        self._thread.start()

    def write_file(self, path: Path, state: Any, serialize: Serializer = torch.save) -> Written:
        """Called by a job: create ``path`` holding ``state`` (a snapshot of this writer's), hashed and fsynced."""
        return write_hashed(path, state, serialize)

    def wait_idle(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def take_error(self) -> BaseException | None:
        """The first error of a finished job (cleared once taken)."""
        with self._lock:
            error, self._error = self._error, None
        return error

    def release_buffers(self) -> None:
        """Drop the kept snapshot (after the last save) so its memory can be freed."""
        self.wait_idle()
        self._last_storages = []
        if self._pool is not None:
            self._pool.clear()
