"""sha256 while bytes stream by: the hashing file wrapper a save writes through, and the helper
threads every hash of this library runs on.

Hashing runs on helper threads, overlapped with the file I/O it accompanies
(``hashlib`` and file writes both release the GIL), so checksumming costs close to
nothing on top of the I/O instead of adding a second pass over the data.

For files larger than one chunk (``CHUNK_SIZE``) an xxh3-128 digest of every chunk is
computed too, from the same stream. One sha256 is inherently sequential (about 1.7 GB/s on one
core here); the chunk digests, recorded in the sidecar (:mod:`.sidecar`), let a reader verify
the same bytes on all cores at once (:mod:`.digests`). They are xxh3-128 (about 18 GB/s) rather
than sha256 because a save computes them on top of the file's sha256: sha256 chunks made every
byte pass through sha256 twice, which on two cores cost a save half its speed. 128 bits make an
undetected corruption as unlikely as sha256 does; neither protects against a deliberate edit of
a file together with its sidecar. The chunks are only an accelerator: when a chunk does not
match (or the block is absent, malformed, or bound to another digest), the whole file is hashed
with sha256 and compared with the sidecar's first line, exactly as without them. Sidecars of
older saves list sha256 chunks (block ``v1``); they verify as before.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

import xxhash

from .pages import write_in_pieces

# Unit of the per-chunk digests: small enough to balance over many cores, large enough
# that a 10 GB checkpoint's sidecar stays ~20 kB.
CHUNK_SIZE = 32 << 20
# What a save records per chunk (the sidecar's block v2); v1 blocks of older saves list sha256.
CHUNK_DIGEST = "xxh3_128"
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


def new_hasher(algorithm: str) -> Any:
    """A hashlib-style object for ``algorithm`` (``sha256``, ``xxh3_128``, or another hashlib name)."""
    return xxhash.xxh3_128() if algorithm == "xxh3_128" else hashlib.new(algorithm)


@dataclass(frozen=True)
class FileDigest:
    """What a sidecar records about a file: its sha256 and, for large files, a digest per chunk
    (by ``chunk_algorithm``: xxh3-128 for this version's saves, sha256 in older sidecars)."""

    sha256: str
    size: int | None = None
    chunk_size: int = 0
    chunks: tuple[str, ...] = ()
    chunk_algorithm: str = CHUNK_DIGEST

    @property
    def chunked(self) -> bool:
        return bool(self.chunks)


class StreamDigest:
    """The sha256 of a byte stream and the ``CHUNK_DIGEST`` of each ``chunk_size`` piece of it."""

    def __init__(self, chunk_size: int | None = None) -> None:
        self.whole = hashlib.sha256()
        self.chunk_size = chunk_size or CHUNK_SIZE
        self.size = 0
        self._chunk = new_hasher(CHUNK_DIGEST)
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
                self._chunk, self._chunk_fill = new_hasher(CHUNK_DIGEST), 0
        self.size += data.nbytes

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Both digests; the sha256 on a helper thread for large buffers. Returns once both are done."""
        view = memoryview(data).cast("B")
        pending = submit(self.whole.update, view) if view.nbytes >= _PARALLEL_MIN else None
        if pending is None:
            self.whole.update(view)
        self.update_chunks(view)
        if pending is not None:
            pending.result()

    def chunk_digests(self) -> tuple[str, ...]:
        """The digest of every chunk so far, a last partial one included (what :meth:`update_chunks` fed)."""
        return tuple(self._chunks + ([self._chunk.hexdigest()] if self._chunk_fill else []))

    def digest(self) -> FileDigest:
        sha = self.whole.hexdigest()
        if self.size <= self.chunk_size:
            return FileDigest(sha, self.size)  # one chunk would repeat the file's digest
        return FileDigest(sha, self.size, self.chunk_size, self.chunk_digests())


# What the tail hasher reads at a time: small enough to stay in the core's L2 cache, so both
# digests read what pread just copied there.
_TAIL_READ = 1 << 20


class FileTailHasher:
    """Hashes a file while another thread writes it, reading behind the writer from the page cache.

    The writer calls :meth:`advance` once the first ``n`` bytes are in the file (handed to the
    kernel, not necessarily on disk) and goes on; a thread of this object reads and hashes up to
    there. So the writer never waits for sha256 (1.7 GB/s, slower than serialising here): the
    save takes about as long as the slower of the two instead of their sum at every write. The
    cost is one copy of each byte out of the page cache, and what is hashed is what the file
    holds, not what was handed to ``write``. Where no thread can start (interpreter exit, a
    thread limit), :meth:`advance` hashes in the writer's thread instead: slower, never lost.
    """

    def __init__(self, path: str | os.PathLike[str], chunk_size: int | None = None) -> None:
        self._path = os.fspath(path)
        self._fd = os.open(self._path, os.O_RDONLY)
        self._digest = StreamDigest(chunk_size)
        self._cond = threading.Condition()
        self._ready = 0  # bytes the writer says are in the file
        self._done = 0  # bytes hashed
        self._closing = False  # no more advance(): hash up to _ready and stop
        self._abort = False
        self._error: BaseException | None = None
        self._view = memoryview(bytearray(_TAIL_READ))
        self._thread: threading.Thread | None = threading.Thread(target=self._run, name="linnaeus-sha256-tail",
                                                                 daemon=True)
        try:
            self._thread.start()
        except RuntimeError:  # "can't create new thread"
            self._thread = None

    def advance(self, nbytes: int) -> None:
        if self._thread is None:
            self._hash_to(nbytes)
            return
        with self._cond:
            self._ready = max(self._ready, nbytes)
            self._cond.notify()

    def _hash_to(self, limit: int) -> None:
        while self._done < limit and not self._abort:
            n = os.preadv(self._fd, [self._view[:min(_TAIL_READ, limit - self._done)]], self._done)
            if n == 0:
                raise OSError(f"{self._path} ends at {self._done} bytes while {limit} were written to it "
                              "(truncated by another process?)")
            self._digest.whole.update(self._view[:n])
            self._digest.update_chunks(self._view[:n])
            self._done += n

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._done >= self._ready and not (self._closing or self._abort):
                        self._cond.wait()
                    if self._abort or self._done >= self._ready:
                        return
                    limit = self._ready
                self._hash_to(limit)
        except BaseException as e:  # re-raised in the writer's thread by finish()
            self._error = e

    def _stop(self, *, abort: bool) -> None:
        with self._cond:
            if self._fd < 0:
                return  # stopped already (an abort after a failed finish)
            self._closing, self._abort = True, abort
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        with self._cond:
            os.close(self._fd)
            self._fd = -1

    def finish(self, nbytes: int) -> FileDigest:
        """The digests of the file's first ``nbytes`` (all of it is in the file now)."""
        try:
            self.advance(nbytes)
        finally:
            self._stop(abort=False)
        if self._error is not None:
            raise self._error
        if self._digest.size != nbytes:
            raise OSError(f"{self._path}: hashed {self._digest.size} bytes of the {nbytes} written")
        return self._digest.digest()

    def abort(self) -> None:
        """Stop without a result (the write failed)."""
        self._stop(abort=True)


class HashingWriter:
    """File-object wrapper for ``torch.save`` whose bytes ``tail`` (a :class:`FileTailHasher` on the
    file ``raw`` writes) hashes from the file behind the writes: ``write`` never waits for a hash,
    and ``digest()`` at the end holds the sha256 of the file and of each chunk.
    ``on_write(total_bytes)`` is called after each write (the fault-injection tests use it to stop
    a save at chosen byte offsets).
    """

    def __init__(self, raw: BinaryIO, tail: FileTailHasher, on_write: Callable[[int], None] | None = None) -> None:
        self._raw = raw
        self._tail = tail
        self._on_write = on_write
        self.bytes_written = 0
        self.error: OSError | None = None  # the first failed write (a serializer may report it otherwise)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return write_in_pieces(self._write_piece, data)  # see .pages: large writes can stall here

    def _write_piece(self, data: memoryview) -> int:
        size = data.nbytes
        try:
            written = self._raw.write(data)
            if size >= _PARALLEL_MIN:
                # Everything so far is in the file (the buffered writer holds at most the small
                # writes before this one): the tail hasher may read it. Small writes (zip
                # headers) wait in the buffer for the next large one.
                self._raw.flush()
        except OSError as e:
            self.error = self.error or e
            raise
        if written is not None and written != size:
            raise OSError(f"short write: {written} of {size} bytes")
        self.bytes_written += size
        if self._on_write is not None:
            try:
                self._on_write(self.bytes_written)
            except OSError as e:  # e.g. a flush of what was buffered
                self.error = self.error or e
                raise
        if size >= _PARALLEL_MIN:
            self._tail.advance(self.bytes_written)
        return size

    def flush(self) -> None:
        self._raw.flush()
        self._tail.advance(self.bytes_written)

    def digest(self) -> FileDigest:
        """The digests of everything written (flushes, then waits for the tail hasher)."""
        self.flush()
        return self._tail.finish(self.bytes_written)


__all__ = ["CHUNK_DIGEST", "CHUNK_SIZE", "FileDigest", "FileTailHasher", "HashingWriter", "StreamDigest", "new_hasher", "submit",
           "verify_pool", "verify_workers"]
