"""sha256 while bytes stream by: the hashing file wrapper a save writes through, and the helper
threads every hash of this library runs on.

Hashing runs on helper threads, overlapped with the file I/O it accompanies
(``hashlib`` and file writes both release the GIL), so checksumming costs close to
nothing on top of the I/O instead of adding a second pass over the data.

For files larger than one chunk (``CHUNK_SIZE``) the sha256 of every chunk is computed
too, from the same stream. One sha256 is inherently sequential (about 1.2 GB/s on one core);
the chunk digests, recorded in the sidecar (:mod:`.sidecar`), let a reader verify the same
bytes on all cores at once (:mod:`.digests`). They are only an accelerator: when a chunk does
not match (or the block is absent, malformed, or bound to another digest), the whole file is
hashed and compared with the sidecar's first line, exactly as without them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

# Unit of the per-chunk digests: small enough to balance over many cores, large enough
# that a 10 GB checkpoint's sidecar stays ~20 kB.
CHUNK_SIZE = 32 << 20
# Below this, handing a buffer to another thread costs more than hashing it inline.
_PARALLEL_MIN = 1 << 20

_executor: ThreadPoolExecutor | None = None
_verify_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _reset_after_fork() -> None:
    # A forked child (DataLoader worker, test harness) inherits the executor object but
    # not its threads; submitting to it would wait forever.
    global _executor, _verify_executor, _executor_lock
    _executor = None
    _verify_executor = None
    _executor_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _hash_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="linnaeus-sha256")
        return _executor


def verify_workers() -> int:
    # The cores this process may run on (a cgroup/taskset limit, not the machine's count);
    # beyond 8, a disk rarely feeds the hashers faster.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def verify_pool() -> ThreadPoolExecutor:
    # Separate from the writer's pool: chunk checks fan out to every core, and a task of
    # one pool never waits on the other, so neither can deadlock.
    global _verify_executor
    with _executor_lock:
        if _verify_executor is None:
            _verify_executor = ThreadPoolExecutor(max_workers=verify_workers(), thread_name_prefix="linnaeus-sha256-verify")
        return _verify_executor


def submit(fn: Callable[..., Any], *args: Any) -> "Future[Any] | None":
    """Run on the helper thread, or None if it is gone.

    At interpreter exit concurrent.futures refuses new work before non-daemon threads
    (our async writer) are joined; that save must still finish, hashing inline.
    """
    try:
        return _hash_executor().submit(fn, *args)
    except RuntimeError:
        return None


@dataclass(frozen=True)
class FileDigest:
    """What a sidecar records about a file: its sha256 and, for large files, per-chunk sha256s."""

    sha256: str
    size: int | None = None
    chunk_size: int = 0
    chunks: tuple[str, ...] = ()

    @property
    def chunked(self) -> bool:
        return bool(self.chunks)


class ChunkedSha256:
    """The sha256 of a byte stream and of each ``chunk_size`` piece of it."""

    def __init__(self, chunk_size: int | None = None) -> None:
        self.whole = hashlib.sha256()
        self.chunk_size = chunk_size or CHUNK_SIZE
        self.size = 0
        self._chunk = hashlib.sha256()
        self._chunk_fill = 0
        self._chunks: list[str] = []

    def update_chunks(self, data: memoryview) -> None:
        offset = 0
        while offset < data.nbytes:
            take = min(self.chunk_size - self._chunk_fill, data.nbytes - offset)
            self._chunk.update(data[offset:offset + take])
            self._chunk_fill += take
            offset += take
            if self._chunk_fill == self.chunk_size:
                self._chunks.append(self._chunk.hexdigest())
                self._chunk, self._chunk_fill = hashlib.sha256(), 0
        self.size += data.nbytes

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Both digests; the file's on a helper thread for large buffers. Returns once both are done."""
        view = memoryview(data).cast("B")
        pending = submit(self.whole.update, view) if view.nbytes >= _PARALLEL_MIN else None
        if pending is None:
            self.whole.update(view)
        self.update_chunks(view)
        if pending is not None:
            pending.result()

    def digest(self) -> FileDigest:
        sha = self.whole.hexdigest()
        if self.size <= self.chunk_size:
            return FileDigest(sha, self.size)  # one chunk would repeat the file's digest
        chunks = self._chunks + ([self._chunk.hexdigest()] if self._chunk_fill else [])
        return FileDigest(sha, self.size, self.chunk_size, tuple(chunks))


class HashingWriter:
    """File-object wrapper that sha256-hashes every byte written through it.

    Pass it to ``torch.save``; ``digest()`` afterwards holds the sha256 of the file (and
    of each chunk) without reading it back. ``on_write(total_bytes)`` is called after each
    write (the fault-injection tests use it to stop a save at chosen byte offsets).
    """

    def __init__(self, raw: BinaryIO, on_write: Callable[[int], None] | None = None,
                 chunk_size: int | None = None) -> None:
        self._raw = raw
        self._hasher = ChunkedSha256(chunk_size)
        self._on_write = on_write
        self.bytes_written = 0
        self.error: OSError | None = None  # the first failed write (a serializer may report it otherwise)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        # torch hands us views of memory it may free once write() returns, so the hashes
        # must finish before we return; they run beside the write, each a leaf task (a
        # task that waited on another could deadlock the pool when two saves overlap).
        jobs = (self._hasher.whole.update, self._hasher.update_chunks)
        pending = [(job, submit(job, view) if size >= _PARALLEL_MIN else None) for job in jobs]
        try:
            written = self._raw.write(data)
        except OSError as e:
            self.error = self.error or e
            raise
        finally:
            for _, future in pending:
                if future is not None:
                    future.result()
        for job, future in pending:
            if future is None:
                job(view)  # small buffer, or the pool is gone (interpreter exit)
        if written is not None and written != size:
            raise OSError(f"short write: {written} of {size} bytes")
        self.bytes_written += size
        if self._on_write is not None:
            try:
                self._on_write(self.bytes_written)
            except OSError as e:  # e.g. a flush of what was buffered
                self.error = self.error or e
                raise
        return size

    def flush(self) -> None:
        self._raw.flush()

    def hexdigest(self) -> str:
        return self._hasher.whole.hexdigest()

    def digest(self) -> FileDigest:
        return self._hasher.digest()


__all__ = ["CHUNK_SIZE", "ChunkedSha256", "FileDigest", "HashingWriter", "submit", "verify_pool", "verify_workers"]
