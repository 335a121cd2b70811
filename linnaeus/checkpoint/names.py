"""Names in a checkpoint directory, and the lock that serialises changes to one.

``<name>`` is a checkpoint, ``<name>.sha256`` its sidecar, ``latest`` the pointer to the
newest full checkpoint. Everything else the store writes is hidden (a leading dot), so it
never passes for a checkpoint: temp files ``.<name>.tmp-<writer>-<rand>`` (see
:mod:`linnaeus.checkpoint.fsio`; ``<writer>`` is ``<pid>-<token>``, unique per process), while a
committed file is overwritten its pending sidecar ``.<name>.sha256.pending-<writer>``, and the
writer lock ``.lock`` (:mod:`linnaeus.checkpoint.writer_lock`).
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .fsio import WRITER_ID, is_temp_name, temp_name, temp_writer, temp_writer_pid, writer_id
from .sidecar import SIDECAR_SUFFIX

__all__ = [
    "LATEST",
    "dir_lock",
    "is_checkpoint_name",
    "is_pending_sidecar_name",
    "is_temp_name",
    "pending_sidecar_name",
    "pending_sidecar_target",
    "pending_sidecars",
    "temp_name",
    "temp_writer",
    "temp_writer_pid",
]

LATEST = "latest"
_PENDING_RE = re.compile(r"^\.(.+)" + re.escape(SIDECAR_SUFFIX) + rf"\.pending-({WRITER_ID})$")


def is_checkpoint_name(name: str) -> bool:
    """Could ``name`` be a checkpoint file (as opposed to a temp, sidecar or pointer)?"""
    return not (name.startswith(".") or name.endswith(SIDECAR_SUFFIX) or name == LATEST)


def pending_sidecar_name(final_name: str) -> str:
    """Hidden name of the new sidecar while a committed file is overwritten; writer as in temp names."""
    return f".{final_name}{SIDECAR_SUFFIX}.pending-{writer_id()}"


def is_pending_sidecar_name(name: str) -> bool:
    return _PENDING_RE.match(name) is not None


def pending_sidecar_target(name: str) -> tuple[str, str] | None:
    """(data file name, writer identity) of a pending sidecar name, or None if ``name`` is not one."""
    m = _PENDING_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def pending_sidecars(path: str | Path) -> list[Path]:
    """Pending sidecars of ``path`` left by overwrites in progress or interrupted."""
    path = Path(path)
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    return sorted(path.parent / n for n in names
                  if (target := pending_sidecar_target(n)) is not None and target[0] == path.name)


_dir_locks: dict[str, threading.Lock] = {}
_dir_locks_guard = threading.Lock()


@contextmanager
def dir_lock(directory: Path) -> Iterator[None]:
    """Serialise commits and cleanups within a process (two savers may share one dir)."""
    key = str(directory.resolve())
    with _dir_locks_guard:
        lock = _dir_locks.setdefault(key, threading.Lock())
    with lock:
        yield


def _reset_locks_after_fork() -> None:
    # Locks held by another thread at fork time would stay locked forever in the child.
    global _dir_locks, _dir_locks_guard
    _dir_locks = {}
    _dir_locks_guard = threading.Lock()


os.register_at_fork(after_in_child=_reset_locks_after_fork)
