"""Removing files from a checkpoint directory: retention (which checkpoints to keep) and
cleanup of what interrupted saves left behind.

Retention is decided from what is on disk (the progress stored in each file), so it
survives restarts.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable

from . import writer_lock
from .catalog import CheckpointInfo, forget_info
from .fsio import fsync_dir, pid_alive, writer_id, writer_pid
from .hashing import sha256_file_async
from .names import dir_lock, pending_sidecar_target, temp_writer
from .ordering import oldest_first
from .sharded_manifest import remove_checkpoint_dir, remove_tree
from .sidecar import SIDECAR_SUFFIX, read_sidecar_digest, sidecar_path
from .testing import phase

logger = logging.getLogger("linnaeus.checkpoint")


def plan_retention(
    infos: Iterable[CheckpointInfo],
    *,
    keep_last_n: int,
    keep_best_n: int = 0,
    monitor: str = "",
    mode: str = "max",
    protect: Iterable[str] = (),
    latest: str | None = None,
    keep_local_n: int = -1,
    uploaded: Callable[[CheckpointInfo], bool] | None = None,
) -> list[CheckpointInfo]:
    """Which of ``infos`` (one saver's committed, readable files) to delete.

    Keeps the ``keep_last_n`` newest and the ``keep_best_n`` best by ``monitor`` (ranking only
    files whose metrics hold ``monitor``; ties keep the older); either alone selects, and with
    neither (both 0) everything is kept. What a resume needs is kept in any case: the newest
    file and every protected name (the caller protects the file resumed from and ``latest``).
    ``keep_local_n >= 0`` (with ``uploaded``, which says whose upload is confirmed) then keeps
    only the ``keep_local_n`` newest of the kept files whose upload is confirmed (Composer's
    ``save_num_checkpoints_to_keep``): the bucket holds the others. Unconfirmed files stay.
    Newest is the library's one ordering (:mod:`.ordering`), ``latest`` breaking ties.
    """
    ordered = oldest_first(infos, latest)
    if not ordered:
        return []
    needed = {ordered[-1].name} | set(protect)
    keep = {i.name for i in ordered}
    if keep_last_n > 0 or (keep_best_n > 0 and monitor):
        keep = needed | {i.name for i in ordered[-keep_last_n:]} if keep_last_n > 0 else set(needed)
    if keep_best_n > 0 and monitor:
        # Only files with metrics measured at their own step are rated; on a tie the older file
        # wins (it was best first, and a newer equal one adds nothing worth deleting it for).
        rated = [i for i in ordered if i.metric(monitor) is not None]
        sign = -1.0 if mode == "max" else 1.0
        rated.sort(key=lambda i: (sign * i.metric(monitor), i.order_key))
        keep |= {i.name for i in rated[:keep_best_n]}
    if keep_local_n >= 0 and uploaded is not None:
        confirmed = [i.name for i in ordered if i.name in keep and uploaded(i)]
        keep -= set(confirmed[:max(0, len(confirmed) - keep_local_n)]) - needed
    return [i for i in ordered if i.name not in keep]


def delete_checkpoint(path: str | Path) -> None:
    """Data first, then sidecar: a crash in between leaves an orphan sidecar, which cleanup removes.
    Holds the directory's writer lock (this process's own if it has one; else it raises
    :class:`DirectoryLockedError` while another process writes there)."""
    path = Path(path)
    with writer_lock.acquire(path.parent), dir_lock(path.parent):
        if path.is_dir():  # a sharded checkpoint (no sidecar: its manifest is inside)
            remove_checkpoint_dir(path)
        path.unlink(missing_ok=True)
        phase("deleted-data")
        sidecar_path(path).unlink(missing_ok=True)
    forget_info(path)


def _finish_pending(pending: Path, data: Path) -> bool:
    """Settle a dead writer's pending sidecar; True if it became ``data``'s sidecar.

    The data was renamed (its hash is the pending one): the overwrite committed, so the
    pending sidecar replaces the old one. Otherwise the data is still the old file (or gone)
    and the pending sidecar is dropped.
    """
    try:
        new = read_sidecar_digest(data, sidecar=pending)
    except ValueError:
        new = None
    if new is not None and data.is_file() and sha256_file_async(data, new).result() == new.sha256:
        os.replace(pending, sidecar_path(data))
        fsync_dir(data.parent)
        return True
    pending.unlink()
    return False


def _dead_writer(identity: str, exclusive: bool) -> bool:
    """Whether the process that named a temp file or pending sidecar ``identity`` is gone."""
    if identity == writer_id():
        return False  # this process's own save, possibly in progress on another thread
    if exclusive:
        return True  # we hold the writer lock: no other writer is alive, whatever its pid
    # A filesystem without locks: our pid under another token is a dead predecessor (a pid names
    # one live process at a time); another live pid may be a writer.
    pid = writer_pid(identity)
    return pid == os.getpid() or not pid_alive(pid)


def cleanup_stale(directory: str | Path, *, min_age_s: float = 0.0) -> list[Path]:
    """Remove leftovers of interrupted saves: temp files of dead writers, sidecars without data,
    and pending sidecars of interrupted overwrites (finished when the data already is the new file).

    Runs holding the directory's writer lock (:mod:`.writer_lock`; shared with this process's
    managers), so it raises :class:`DirectoryLockedError` rather than touch a live writer's files.
    ``min_age_s`` spares files younger than that. Returns the paths removed (a finished pending
    sidecar counts: its name is gone).
    """
    directory = Path(directory)
    removed: list[Path] = []
    finished: list[Path] = []
    if not directory.is_dir():
        return removed
    now = time.time()
    with writer_lock.acquire(directory) as lease, dir_lock(directory):
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False) and (owner := temp_writer(entry.name)) is not None:
                # An interrupted sharded save's temp directory (or an overwritten one set aside).
                if _dead_writer(owner, lease.exclusive) and now - entry.stat().st_mtime >= min_age_s:
                    remove_tree(entry.path)
                    removed.append(Path(entry.path))
                continue
            if not entry.is_file():
                continue
            name = entry.name
            writer = temp_writer(name)
            pending = pending_sidecar_target(name)
            if pending is not None:
                # Written and renamed under dir_lock, so one of this process is not in progress.
                data_name, identity = pending
                if identity != writer_id() and not _dead_writer(identity, lease.exclusive):
                    continue
                if now - entry.stat().st_mtime < min_age_s:
                    continue
                try:
                    done = _finish_pending(Path(entry.path), directory / data_name)
                except FileNotFoundError:
                    continue
                (finished if done else removed).append(Path(entry.path))
                continue
            if writer is not None:
                stale = _dead_writer(writer, lease.exclusive)
            elif name.endswith(SIDECAR_SUFFIX):
                stale = not (directory / name[: -len(SIDECAR_SUFFIX)]).exists()
            else:
                continue
            try:
                if stale and now - entry.stat().st_mtime >= min_age_s:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except FileNotFoundError:
                continue
    for path in removed:
        logger.info("Removed leftover of an interrupted save: %s", path)
    for path in finished:
        logger.info("Finished an interrupted overwrite: %s is now the sidecar of the new data", path)
    return removed + finished
