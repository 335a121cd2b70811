"""sha256 while bytes stream by: a hashing file wrapper for writes, a file hasher for reads.

Hashing runs on a helper thread, overlapped with the file I/O it accompanies
(``hashlib`` and file writes both release the GIL), so checksumming costs close to
nothing on top of the I/O instead of adding a second pass over the data.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Callable

SIDECAR_SUFFIX = ".sha256"
_CHUNK = 8 << 20
# Below this, handing a buffer to another thread costs more than hashing it inline.
_PARALLEL_MIN = 1 << 20
_SIDECAR_RE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _reset_after_fork() -> None:
    # A forked child (DataLoader worker, test harness) inherits the executor object but
    # not its threads; submitting to it would wait forever.
    global _executor, _executor_lock
    _executor = None
    _executor_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _hash_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="linnaeus-sha256")
        return _executor


def _submit(fn: Callable[..., Any], *args: Any) -> "Future[Any] | None":
    """Run on the helper thread, or None if it is gone.

    At interpreter exit concurrent.futures refuses new work before non-daemon threads
    (our async writer) are joined; that save must still finish, hashing inline.
    """
    try:
        return _hash_executor().submit(fn, *args)
    except RuntimeError:
        return None


class HashingWriter:
    """File-object wrapper that sha256-hashes every byte written through it.

    Pass it to ``torch.save``; ``hexdigest()`` afterwards is the sha256 of the file
    without reading it back. ``on_write(total_bytes)`` is called after each write
    (the fault-injection tests use it to stop a save at chosen byte offsets).
    """

    def __init__(self, raw: BinaryIO, on_write: Callable[[int], None] | None = None) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self._on_write = on_write
        self.bytes_written = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = memoryview(data).nbytes
        pending = _submit(self._sha.update, data) if size >= _PARALLEL_MIN else None
        if pending is not None:
            # torch hands us views of memory it may free once write() returns, so the
            # hash must finish before we return; it just runs beside the write.
            written = self._raw.write(data)
            pending.result()
        else:
            self._sha.update(data)
            written = self._raw.write(data)
        if written is not None and written != size:
            raise OSError(f"short write: {written} of {size} bytes")
        self.bytes_written += size
        if self._on_write is not None:
            self._on_write(self.bytes_written)
        return size

    def flush(self) -> None:
        self._raw.flush()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in large chunks into one reused buffer.

    Deliberately not mmap: a file truncated by someone else while we hash it would
    kill the process with SIGBUS instead of raising an error.
    """
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)  # larger readahead when cold
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            sha.update(view[:n])
    return sha.hexdigest()


def sha256_file_async(path: str | Path) -> "Future[str]":
    """Start hashing ``path`` on the helper thread (to overlap with loading the same file)."""
    pending = _submit(sha256_file, path)
    if pending is None:
        pending = Future()
        pending.set_result(sha256_file(path))
    return pending


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def format_sidecar(hexdigest: str, file_name: str) -> str:
    """sha256sum's format, so ``sha256sum -c`` works in the checkpoint dir."""
    return f"{hexdigest}  {file_name}\n"


def read_sidecar(path: str | Path) -> str:
    """Expected sha256 of ``path`` from its sidecar.

    Raises FileNotFoundError if there is no sidecar and ValueError (naming the sidecar
    and what was wrong) if it is malformed or written for another file.
    """
    return read_sidecar_file(sidecar_path(path), Path(path).name)


def read_sidecar_file(side: str | Path, file_name: str) -> str:
    """Expected sha256 of ``file_name`` from the sha256sum-format file ``side`` (any name).

    The store also keeps a pending sidecar while it overwrites a committed file, under a
    hidden name; this reads both. Errors as in :func:`read_sidecar`.
    """
    side = Path(side)
    text = side.read_text(encoding="utf-8", errors="replace").strip()
    m = _SIDECAR_RE.match(text.splitlines()[0] if text else "")
    if not m:
        raise ValueError(f"{side} is not in sha256sum format ('<64 hex>  <file name>'); found {text[:80]!r}")
    if m.group(2) != file_name:
        raise ValueError(f"{side} is for file {m.group(2)!r}, not {file_name!r}")
    return m.group(1).lower()
