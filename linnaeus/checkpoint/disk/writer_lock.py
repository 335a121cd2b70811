"""One writer per checkpoint directory: an exclusive OS lock on ``<dir>/.lock``; and, inside the
writing process, one change at a time (:func:`dir_lock`).

Two processes saving into one directory (a scheduler's requeue while the old job still runs, a
command typed twice) overwrite and delete each other's files, and each one's cleanup takes the
other's files in progress for leftovers. So the process that writes holds ``flock(LOCK_EX)`` on
``<dir>/.lock`` for as long as it may write, and a second one fails at once. The kernel drops the
lock when its holder exits, however it exits (``kill -9`` included): a lock never outlives its
process, and there is nothing to delete by hand. The holder records its host, pid and start time
in the file, so that the process turned away can say whom it met.

Holding the lock is also what makes cleanup safe: while a process holds it no other writer is
alive, so every temp file or pending sidecar of another process is a dead writer's leftover,
whatever its pid (pids are reused; in a container every relaunch is pid 1).

Within one process the lock is shared (two savers on one directory): every :func:`acquire`
returns a lease on the one ``flock`` (a second open of the file would conflict with the first),
and the lock is released with the last lease, by ``release()`` or when the lease is garbage.
Where the filesystem cannot lock at all, a warning says so and the lease is not ``exclusive``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from linnaeus.dist import get_rank, run_on_all_ranks

from ..errors import DirectoryLockedError

logger = logging.getLogger("linnaeus.checkpoint")

LOCK_NAME = ".lock"
# errnos of filesystems without flock (some FUSE mounts, NFS without a lock daemon)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@dataclass
class _Held:
    fd: int | None  # None: the filesystem cannot lock
    leases: int = 0


_held: dict[str, _Held] = {}
# Reentrant: a lease collected by the garbage collector inside acquire() releases under it.
_guard = threading.RLock()


class WriterLease:
    """This process's share of a directory's writer lock. ``release()`` is idempotent; a lease
    that is garbage-collected (or alive at interpreter exit) is released then."""

    def __init__(self, key: str, exclusive: bool) -> None:
        self.directory = Path(key)
        self.exclusive = exclusive  # False where the filesystem cannot lock
        self._finalizer = weakref.finalize(self, _release, key)

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        self._finalizer()

    def __enter__(self) -> "WriterLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def acquire(directory: str | os.PathLike) -> WriterLease:
    """A lease on ``directory``'s writer lock (created with the directory if missing).

    Raises :class:`DirectoryLockedError` naming the holder when another process holds it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = str(directory.resolve())
    with _guard:
        held = _held.get(key)
        if held is None:
            held = _held[key] = _Held(_lock(directory))
        held.leases += 1  # before allocating the lease (a collection there may release others)
        return WriterLease(key, held.fd is not None)


def acquire_on_writer_rank(directory: str | os.PathLike) -> WriterLease | None:
    """Rank 0 takes the lock (None elsewhere); if it cannot, every rank raises
    :class:`DirectoryLockedError` (a collective in DDP, so no rank is left waiting)."""
    return run_on_all_ranks(lambda: acquire(directory) if get_rank() == 0 else None,
                            f"locking checkpoint directory {directory}", DirectoryLockedError)


def read_holder(directory: str | os.PathLike) -> dict[str, Any] | None:
    """What the holder (or the last holder) recorded: ``{"host", "pid", "since"}``, or None."""
    try:
        record = json.loads((Path(directory) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"host", "pid"} <= set(record) else None


def _lock(directory: Path) -> int | None:
    path = directory / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DirectoryLockedError(_locked_message(directory)) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in _NO_LOCKS:
                raise
            logger.warning("The filesystem of %s cannot lock files (%s): a second process writing checkpoints "
                           "there would not be stopped. Keep to one run per directory, or use a filesystem with "
                           "flock support.", directory, os.strerror(e.errno))
            return None
        # Locked the file we opened; if it was deleted (and recreated) meanwhile, we hold a lock
        # nobody else will see: take the one on the current file instead.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            break
        os.close(fd)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd


def _locked_message(directory: Path) -> str:
    holder = None
    for _ in range(20):  # the holder writes its record right after locking: give it a moment
        holder = read_holder(directory)
        if holder is not None:
            break
        time.sleep(0.025)
    if holder is None:
        who, stop = "another process (it has not recorded its host and pid)", "stop it first"
    else:
        who = f"pid {holder['pid']} on host {holder['host']} (holding it since {holder.get('since', '?')})"
        stop = f"stop it first (e.g. `kill {holder['pid']}` on {holder['host']})"
    return (f"checkpoint directory {directory} is in use by {who}: one process at a time may write checkpoints "
            "into a directory, as two writers overwrite and delete each other's files. If that run should go on, "
            f"let it finish; if it is an older copy of this job (e.g. a scheduler requeued it while it still ran), "
            f"{stop}, then relaunch. Its lock ({directory / LOCK_NAME}) ends with that process, however it exits: "
            "there is nothing to delete by hand.")


def _release(key: str) -> None:
    with _guard:
        held = _held.get(key)
        if held is None:
            return
        held.leases -= 1
        if held.leases > 0:
            return
        del _held[key]
        if held.fd is not None:
            fcntl.flock(held.fd, fcntl.LOCK_UN)
            os.close(held.fd)


_dir_locks: dict[str, threading.Lock] = {}
_dir_locks_guard = threading.Lock()


@contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Serialise commits and cleanups within a process (two savers may share one dir)."""
    key = str(Path(directory).resolve())
    with _dir_locks_guard:
        lock = _dir_locks.setdefault(key, threading.Lock())
    with lock:
        yield


def _forget_after_fork() -> None:
    # A forked child shares the parent's lock (one open file description) but is not the writer:
    # drop its copies (closing them leaves the parent's lock in place, unlike LOCK_UN), so that a
    # child outliving a killed parent does not keep the directory locked.
    global _held, _guard, _dir_locks, _dir_locks_guard
    # Locks held by another thread at fork time would stay locked forever in the child.
    _dir_locks, _dir_locks_guard = {}, threading.Lock()
    for held in _held.values():
        if held.fd is not None:
            try:
                os.close(held.fd)
            except OSError:
                pass
    _held = {}
    _guard = threading.RLock()


os.register_at_fork(after_in_child=_forget_after_fork)
