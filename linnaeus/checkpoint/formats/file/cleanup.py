"""What interrupted single-file saves, overwrites and deletes leave behind, and how each is settled.

- a temp file ``.<name>.tmp-<writer>-<rand>`` (data or sidecar of a save that never committed):
  removed;
- a sidecar without its data file (a delete killed between the two unlinks, or a save killed
  after its sidecar and before the rename): removed;
- a pending sidecar ``.<name>.sha256.pending-<writer>`` of an interrupted overwrite: if the data
  already is the new file (it hashes to the pending digest) the overwrite committed, and the
  pending sidecar becomes the sidecar; otherwise it is dropped and the old pair stays.

The temp files of ``latest`` are the store's (:mod:`linnaeus.checkpoint.store.retention`).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from ...disk import SIDECAR_SUFFIX, fsync_dir, read_sidecar_digest, sha256_file_async, sidecar_path, temp_target
from ..base import Leftover
from ..directory import LATEST
from .names import pending_sidecar_target

TEMP = "temp file of an unfinished save"
ORPHAN = "sidecar without its data file"
PENDING = "pending sidecar of an interrupted overwrite (the data verifies against it or the old sidecar)"


def file_leftovers(directory: Path) -> list[Leftover]:
    found = []
    for entry in os.scandir(directory):
        if not entry.is_file(follow_symlinks=False):
            continue
        path, name = Path(entry.path), entry.name
        if (pending := pending_sidecar_target(name)) is not None:
            # Written and renamed under the in-process directory lock, which cleanup holds: one of
            # this process is never in progress while cleanup runs.
            found.append(Leftover(path, PENDING, pending[1], partial(finish_pending, path, directory / pending[0]),
                                  only_under_lock=True))
        elif (temp := temp_target(name)) is not None and temp[0] != LATEST:
            found.append(Leftover(path, TEMP, temp[1], partial(_unlink, path)))
        elif name.endswith(SIDECAR_SUFFIX) and not (directory / name[: -len(SIDECAR_SUFFIX)]).exists():
            found.append(Leftover(path, ORPHAN, None, partial(_unlink, path)))
    return found


def _unlink(path: Path) -> bool:
    path.unlink(missing_ok=True)
    return False


def finish_pending(pending: Path, data: Path) -> bool:
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


__all__ = ["file_leftovers", "finish_pending"]
