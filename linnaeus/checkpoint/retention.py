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
from typing import Iterable

from .catalog import CheckpointInfo, forget_info
from .fsio import fsync_dir, pid_alive
from .hashing import sha256_file_async
from .names import dir_lock, pending_sidecar_target, temp_writer_pid
from .ordering import oldest_first
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
) -> list[CheckpointInfo]:
    """Which of ``infos`` (one saver's committed, readable files) to delete.

    Keeps the ``keep_last_n`` newest, the ``keep_best_n`` best by ``monitor`` (ranking only
    files whose metrics hold ``monitor``; ties keep the older), the newest one in any case, and
    every protected file name. ``keep_last_n == 0`` keeps everything.
    Newest is the library's one ordering (:mod:`.ordering`), ``latest`` breaking ties.
    """
    ordered = oldest_first(infos, latest)
    if keep_last_n <= 0 or not ordered:
        return []
    keep = {i.name for i in ordered[-keep_last_n:]} | {ordered[-1].name} | set(protect)
    if keep_best_n > 0 and monitor:
        # Only files with metrics measured at their own step are rated; on a tie the older file
        # wins (it was best first, and a newer equal one adds nothing worth deleting it for).
        rated = [i for i in ordered if i.metric(monitor) is not None]
        sign = -1.0 if mode == "max" else 1.0
        rated.sort(key=lambda i: (sign * i.metric(monitor), i.order_key))
        keep |= {i.name for i in rated[:keep_best_n]}
    return [i for i in ordered if i.name not in keep]


def delete_checkpoint(path: str | Path) -> None:
    """Data first, then sidecar: a crash in between leaves an orphan sidecar, which cleanup removes."""
    path = Path(path)
    with dir_lock(path.parent):
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


def cleanup_stale(directory: str | Path, *, min_age_s: float = 0.0) -> list[Path]:
    """Remove leftovers of interrupted saves: temp files of dead writers, sidecars without data,
    and pending sidecars of interrupted overwrites (finished when the data already is the new file).

    ``min_age_s`` spares files younger than that (for tools run beside a live writer).
    Returns the paths removed (a finished pending sidecar counts: its name is gone).
    """
    directory = Path(directory)
    removed: list[Path] = []
    finished: list[Path] = []
    if not directory.is_dir():
        return removed
    now = time.time()
    with dir_lock(directory):
        for entry in os.scandir(directory):
            if not entry.is_file():
                continue
            name = entry.name
            writer = temp_writer_pid(name)
            pending = pending_sidecar_target(name)
            if pending is not None:
                # Written and renamed under the directory lock, so one with our own pid is
                # not in progress; another live process may be mid-overwrite.
                data_name, pid = pending
                if (pid != os.getpid() and pid_alive(pid)) or now - entry.stat().st_mtime < min_age_s:
                    continue
                try:
                    done = _finish_pending(Path(entry.path), directory / data_name)
                except FileNotFoundError:
                    continue
                (finished if done else removed).append(Path(entry.path))
                continue
            if writer is not None:
                stale = writer != os.getpid() and not pid_alive(writer)
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
