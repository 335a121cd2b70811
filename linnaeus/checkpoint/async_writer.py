"""Background saving: snapshot state to CPU memory now, write it on a worker thread.

One save is in flight at a time; a new one first waits for the previous. The worker is
a fresh non-daemon thread per save, so an interpreter that exits normally finishes the
save in flight instead of abandoning a half-written temp file.

The snapshot is the only part the training loop waits for. Its CPU tensors are kept
after the write and reused by the next snapshot (same shapes, dtypes): copying into
memory that is already mapped avoids the page faults and zeroing of fresh allocations.
The cost is one state's worth of host memory held between saves.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Any, Callable

import torch

logger = logging.getLogger("linnaeus.checkpoint")

_BufferKey = tuple[tuple[int, ...], torch.dtype]


class _BufferPool:
    """Contiguous CPU tensors free for reuse, by (shape, dtype)."""

    def __init__(self) -> None:
        self._free: dict[_BufferKey, list[torch.Tensor]] = defaultdict(list)

    def recycle(self, tree: Any) -> None:
        for t in _tensors(tree):
            if t.is_contiguous() and t.layout == torch.strided:
                self._free[(tuple(t.shape), t.dtype)].append(t)

    def take(self, like: torch.Tensor) -> torch.Tensor:
        free = self._free.get((tuple(like.shape), like.dtype))
        return free.pop() if free else torch.empty(like.shape, dtype=like.dtype, device="cpu")

    def clear(self) -> None:
        self._free.clear()


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _tensors(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in _tensors(v)]
    return []


def snapshot(obj: Any, pool: _BufferPool | None = None, _memo: dict | None = None) -> Any:
    """Deep copy of a state tree with every tensor copied to CPU memory.

    Containers are rebuilt too: state dicts share live objects (e.g. optimizer
    param_groups, which the scheduler keeps mutating) that must not change under the
    writer. Tensors that are the same view of the same storage (tied weights) stay shared.
    """
    memo = {} if _memo is None else _memo
    if isinstance(obj, torch.Tensor):
        key = (obj.device, obj.untyped_storage().data_ptr(), obj.storage_offset(), tuple(obj.shape),
               tuple(obj.stride()), obj.dtype) if obj.layout == torch.strided else None
        if key is not None and key in memo:
            return memo[key]
        src = obj.detach()
        if pool is not None and src.layout == torch.strided and src.is_contiguous():
            copy = pool.take(src).copy_(src)
        else:
            copy = src.to("cpu", copy=True)
        if key is not None:
            memo[key] = copy
        return copy
    if isinstance(obj, dict):
        items = [(k, snapshot(v, pool, memo)) for k, v in obj.items()]
        return dict(items) if type(obj) is dict else type(obj)(items)  # keeps OrderedDict
    if isinstance(obj, list):
        return [snapshot(v, pool, memo) for v in obj]
    if isinstance(obj, tuple):
        return tuple(snapshot(v, pool, memo) for v in obj)
    return obj  # str/int/float/bool/None/bytes are immutable


class AsyncWriter:
    """Runs one job at a time on a background thread and keeps its first error for the caller."""

    def __init__(self, name: str = "checkpoint", reuse_buffers: bool = True) -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._pool = _BufferPool() if reuse_buffers else None
        self._last_snapshot: Any = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self, state: Any) -> Any:
        """CPU copy of ``state`` for the next job (waits for the job in flight: its buffers get reused)."""
        self.wait_idle()
        if self._pool is not None and self._last_snapshot is not None:
            self._pool.recycle(self._last_snapshot)
        frozen = snapshot(state, self._pool)
        if self._pool is not None:
            self._pool.clear()  # buffers that did not fit this state are released
            self._last_snapshot = frozen
        return frozen

    def submit(self, job: Callable[[], None], description: str) -> None:
        """Wait for the job in flight, then start ``job`` in the background."""
        self.wait_idle()

        def run() -> None:
            try:
                job()
            except BaseException as e:  # noqa: BLE001 - kept and re-raised on the caller's thread by take_error()
                logger.error("Asynchronous %s failed: %s", description, e)
                with self._lock:
                    if self._error is None:
                        self._error = e

        self._thread = threading.Thread(target=run, name=f"linnaeus-{self._name}-writer", daemon=False)
        self._thread.start()

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
        self._last_snapshot = None
        if self._pool is not None:
            self._pool.clear()
