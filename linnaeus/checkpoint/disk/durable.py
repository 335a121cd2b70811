"""Durable writes: small files replaced atomically, fsync of files and directories, background
flushes, temp names that carry their writer, tree removal.

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
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

# Steps of :func:`write_durably`, reported to its ``on_step`` callback (the store turns them
# into the fault-injection phases ``<file>-temp`` and ``<file>``).
TEMP_SYNCED = "temp-synced"  # the temp file is on disk; the final name still holds the old file
REPLACED = "replaced"  # the rename is on disk

# A writer identity is ``<pid>-<token>``: the token is random per process (renewed in a forked
# child), so a relaunch that gets the same pid (pid 1 in a container, every time) still tells its
# own files from a killed predecessor's. Names written before tokens existed carry the pid alone.
WRITER_ID = r"\d+(?:-[0-9a-f]{12})?"
_TEMP_RE = re.compile(rf"^\.(.+)\.tmp-({WRITER_ID})-[0-9a-f]+$")
_process_token = secrets.token_hex(6)


def _renew_process_token() -> None:
    global _process_token
    _process_token = secrets.token_hex(6)


os.register_at_fork(after_in_child=_renew_process_token)


def writer_id() -> str:
    """This process's identity in the names of its temp files and pending sidecars."""
    return f"{os.getpid()}-{_process_token}"


def writer_pid(identity: str) -> int:
    return int(identity.split("-", 1)[0])


def temp_name(final_name: str) -> str:
    """``.<final_name>.tmp-<pid>-<token>-<rand>``: hidden, so it never ends like a checkpoint (or
    any name a lookup matches); the :func:`writer_id` lets a cleanup tell another process's files."""
    return f".{final_name}.tmp-{writer_id()}-{secrets.token_hex(4)}"


def is_temp_name(name: str) -> bool:
    return _TEMP_RE.match(name) is not None


def temp_target(name: str) -> tuple[str, str] | None:
    """(the final name, the writer identity) a :func:`temp_name` encodes, or None if ``name`` is not one."""
    m = _TEMP_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def temp_writer(name: str) -> str | None:
    """The writer identity encoded in a :func:`temp_name`, or None if ``name`` is not one."""
    target = temp_target(name)
    return target[1] if target else None


def temp_writer_pid(name: str) -> int | None:
    """The pid encoded in a :func:`temp_name`, or None if ``name`` is not one."""
    identity = temp_writer(name)
    return writer_pid(identity) if identity is not None else None


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


def fsync_file(path: str | os.PathLike) -> None:
    """Make a file written by someone else (DCP, rclone) durable before it is committed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a directory that is no longer part of any checkpoint (a temp or a renamed-away one).
    Errors are ignored: what is left is a hidden leftover that the next cleanup removes."""
    shutil.rmtree(path, ignore_errors=True)


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


class ErrorRecordingStream:
    """A file object that keeps the first ``OSError`` its writes raised (ENOSPC, EFBIG, EIO).

    ``torch.save`` reports a failed write of its own as a position mismatch ("unexpected pos
    ..."), which says nothing about a full disk; whoever catches that failure raises ``error``.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._raw.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class BackgroundFlush:
    """``fdatasync`` running behind the writes to a file, one call in flight at a time.

    A checkpoint or download must be on disk before its rename. Flushing only at the end
    makes the writer wait for the whole file to reach the disk after it has produced the
    last byte; here that final wait is as long as serialising the file. Calling
    :meth:`kick` every few MiB lets the disk work on the other core while the writer
    keeps serialising and hashing, so the closing fsync only waits for the tail.

    Each flush runs on a thread of its own, not on a ``concurrent.futures`` executor: at
    interpreter exit those refuse new work while an async save is still being written (the
    exit waits for it), and a refused flush would abort that save. Where no thread can be
    started the flush runs inline: slower, never lost.

    Usage: ``kick()`` after ``flush()``-ing Python's buffer; ``close()`` before the file is
    closed (the fd must stay valid while a flush runs), then the usual final ``fsync``.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def kick(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return  # the disk is still busy with the last batch: no queue of flushes
        self._thread = threading.Thread(target=self._flush, name="linnaeus-flush", daemon=True)
        try:
            self._thread.start()
        except RuntimeError:  # "can't create new thread" (interpreter finalizing, thread limit)
            self._thread = None
            self._flush()

    def _flush(self) -> None:
        try:
            os.fdatasync(self._fd)
        except BaseException as e:  # noqa: BLE001 - re-raised by close() on the writer's thread
            if self._error is None:
                self._error = e

    def close(self) -> None:
        """Wait for the flush in flight and re-raise its error: the kernel reports a
        writeback error to one sync call only, and it may have been this thread's."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error
