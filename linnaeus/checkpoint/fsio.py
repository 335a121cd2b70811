"""The filesystem layer: durable small-file writes, directory fsync, background flushes, temp names.

Every file a user relies on (a checkpoint's ``.sha256`` sidecar, ``latest``, ``config.yaml``,
``load_report.json``, the resolver's cache index, a download's sidecar) is written by
:func:`write_durably`: the bytes go to a hidden temp file in the same directory, are fsynced,
renamed over the final name, and the directory is fsynced. A reader sees the old file or the
new one, never half of one, and after a power cut the new one is there once the call returned.
"""

from __future__ import annotations

import os
import re
import secrets
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

# Steps of :func:`write_durably`, reported to its ``on_step`` callback (the store turns them
# into the fault-injection phases ``<file>-temp`` and ``<file>``).
TEMP_SYNCED = "temp-synced"  # the temp file is on disk; the final name still holds the old file
REPLACED = "replaced"  # the rename is on disk

_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")


def temp_name(final_name: str) -> str:
    """``.<final_name>.tmp-<pid>-<rand>``: hidden, so it never ends like a checkpoint (or any
    name a lookup matches); the pid lets a cleanup tell a dead writer's leftovers."""
    return f".{final_name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def is_temp_name(name: str) -> bool:
    return _TEMP_RE.match(name) is not None


def temp_writer_pid(name: str) -> int | None:
    """The pid encoded in a :func:`temp_name`, or None if ``name`` is not one."""
    m = _TEMP_RE.match(name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a pid of another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the renames and unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(
    path: str | os.PathLike,
    data: str | bytes,
    *,
    temp: str | os.PathLike | None = None,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """Replace ``path`` by ``data`` (str is written as UTF-8) atomically and durably.

    ``temp`` overrides the temp file's path (it must be in ``path``'s directory and must not
    exist), for callers whose own cleanup recognises another pattern. On any failure before the
    rename the temp file is removed and ``path`` is untouched. ``on_step`` is called with
    :data:`TEMP_SYNCED`, then :data:`REPLACED`.
    """
    path = Path(path)
    tmp = Path(temp) if temp is not None else path.with_name(temp_name(path.name))
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "xb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if on_step is not None:
            on_step(TEMP_SYNCED)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    if on_step is not None:
        on_step(REPLACED)
    return path


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
