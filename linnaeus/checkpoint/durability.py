"""Getting large files onto disk without paying for it all at the final fsync."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundFlush:
    """``fdatasync`` running behind the writes to a file, one call in flight at a time.

    A checkpoint or download must be on disk before its rename. Flushing only at the end
    makes the writer wait for the whole file to reach the disk after it has produced the
    last byte; here that final wait is as long as serialising the file. Calling
    :meth:`kick` every few MiB lets the disk work on the other core while the writer
    keeps serialising and hashing, so the closing fsync only waits for the tail.

    Usage: ``kick()`` after ``flush()``-ing Python's buffer; ``close()`` before the file is
    closed (the fd must stay valid while a flush runs), then the usual final ``fsync``.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="linnaeus-flush")
        self._pending: Future | None = None
        self._error: BaseException | None = None

    def kick(self) -> None:
        if self._pending is not None:
            if not self._pending.done():
                return  # the disk is still busy with the last batch: no queue of flushes
            self._note(self._pending)
        self._pending = self._pool.submit(os.fdatasync, self._fd)

    def _note(self, future: Future) -> None:
        if self._error is None and future.exception() is not None:
            self._error = future.exception()

    def close(self) -> None:
        """Wait for the flush in flight and re-raise its error: the kernel reports a
        writeback error to one sync call only, and it may have been this thread's."""
        self._pool.shutdown(wait=True)
        if self._pending is not None:
            self._note(self._pending)
        if self._error is not None:
            raise self._error
