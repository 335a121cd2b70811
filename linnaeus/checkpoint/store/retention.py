"""Removing files from a checkpoint directory: retention (which checkpoints to keep) and
cleanup of what interrupted saves left behind.

Retention is decided from what is on disk (the progress stored in each file), so it
survives restarts.
"""

from __future__ import annotations

import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from linnaeus.dist import get_rank, run_on_all_ranks

from ..disk import DirectorySharing, WriterLease, acquire, dir_lock, pid_alive, temp_target, writer_id, writer_pid
from ..errors import DirectoryLockedError, InvalidOperationError
from ..formats import LATEST, CheckpointInfo, Leftover, format_of, formats, read_latest
from ..ordering import oldest_first
from ..policy import CheckpointPolicy

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


def apply_retention(directory: Path, policy: CheckpointPolicy, infos: list[CheckpointInfo], *, protect: set[str],
                    can_delete: Callable[[Path], bool] | None) -> list[Path]:
    """Delete the checkpoints of ``infos`` (one saver's) that ``policy`` no longer keeps, never one
    ``protect`` names nor the one ``latest`` names; ``can_delete`` may keep one for now (its upload
    is not confirmed). Returns the deleted paths."""
    if not policy.prunes:
        return []
    if policy.keep_local_n >= 0 and can_delete is None:
        raise InvalidOperationError(
            f"keep_local_n={policy.keep_local_n} limits local copies whose upload is confirmed, but this manager "
            "has no can_delete hook to say which are: pass can_delete=uploader.can_delete (a BackgroundUploader), "
            "or keep_local_n=-1.")
    latest = read_latest(directory)
    doomed = plan_retention(infos, keep_last_n=policy.keep_last_n, keep_best_n=policy.keep_best_n,
                            monitor=policy.monitor, mode=policy.mode, protect=protect | ({latest} if latest else set()),
                            latest=latest, keep_local_n=policy.keep_local_n,
                            uploaded=None if can_delete is None else lambda info: can_delete(info.path))
    deleted = []
    for info in doomed:
        if can_delete is not None and not can_delete(info.path):
            logger.debug("Keeping %s for now: the deletion hook declined.", info.path)
            continue
        delete_checkpoint(info.path)
        deleted.append(info.path)
        logger.info("Deleted checkpoint %s (retention)", info.path)
    return deleted


def delete_checkpoint(path: str | Path) -> None:
    """Remove a checkpoint in its format's way (no reader ever sees half of one under its name).
    Holds the directory's writer lock (this process's own if it has one; else it raises
    :class:`DirectoryLockedError` while another process writes there)."""
    path = Path(path)
    with acquire(path.parent), dir_lock(path.parent):
        fmt = format_of(path)
        if fmt is not None:
            fmt.delete(path)


def leftovers(directory: Path) -> list[Leftover]:
    """Everything interrupted saves, overwrites and deletes left in ``directory``: each format's,
    and the temp files of ``latest``."""
    found = [left for fmt in formats() for left in fmt.leftovers(directory)]
    for entry in os.scandir(directory):
        target = temp_target(entry.name)
        if target is not None and target[0] == LATEST and entry.is_file(follow_symlinks=False):
            found.append(Leftover(Path(entry.path), "temp file of an unfinished update of latest", target[1],
                                  partial(_unlink, Path(entry.path))))
    return found


def _unlink(path: Path) -> bool:
    path.unlink(missing_ok=True)
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
    """Remove leftovers of interrupted saves (:func:`leftovers`) whose writer is gone; an interrupted
    overwrite whose new data is in place is finished instead.

    Runs holding the directory's writer lock (:mod:`linnaeus.checkpoint.disk.writer_lock`; shared
    with this process's managers), so it raises :class:`DirectoryLockedError` rather than touch a
    live writer's files. ``min_age_s`` spares files younger than that. Returns the paths removed (a
    finished pending sidecar counts: its name is gone).
    """
    directory = Path(directory)
    removed: list[Path] = []
    finished: list[Path] = []
    if not directory.is_dir():
        return removed
    now = time.time()
    with acquire(directory) as lease, dir_lock(directory):
        for left in leftovers(directory):
            if left.writer is not None and not (left.only_under_lock and left.writer == writer_id()) \
                    and not _dead_writer(left.writer, lease.exclusive):
                continue
            try:
                if now - left.path.stat().st_mtime < min_age_s:
                    continue
                (finished if left.settle() else removed).append(left.path)
            except FileNotFoundError:
                continue
    for path in removed:
        logger.info("Removed leftover of an interrupted save: %s", path)
    for path in finished:
        logger.info("Finished an interrupted overwrite: %s is now the sidecar of the new data", path)
    return removed + finished


def hold_node_directory(sharing: DirectorySharing, directory: str | Path) -> WriterLease | None:
    """On node-local directories (``sharing`` not shared), every other node's lowest rank writes its own
    node's directory too (copies, its part of sharded checkpoints): it takes that directory's writer
    lock, then removes what killed saves and copies left there. The lease (None on other ranks); a
    collective that raises :class:`DirectoryLockedError` on every rank when a directory is locked."""
    rank = get_rank()
    leads = not sharing.shared and rank != 0 and any(group[0] == rank for group in sharing.groups)

    def take() -> WriterLease | None:
        if not leads:
            return None
        lease = acquire(directory)
        cleanup_stale(directory)  # under the lock: nobody else writes here, so every leftover is a dead writer's
        return lease

    return run_on_all_ranks(take, f"locking checkpoint directory {directory}", DirectoryLockedError)


__all__ = ["apply_retention", "cleanup_stale", "hold_node_directory", "delete_checkpoint", "leftovers", "plan_retention"]
