"""Transactional writes into a checkpoint directory: a checkpoint exists under its final name
only when complete, and ``latest`` names the newest full one.

The commit protocol for a new name::

    .<name>.tmp-<pid>-<rand>   torch.save through a sha256-hashing writer, fsync
    <name>.sha256              sha256sum line, written durably (temp + fsync + rename + dir fsync)
    <name>                     rename of the data temp file, dir fsync      <- commit point
    latest                     file name of the newest full checkpoint, written durably

A crash leaves at worst a hidden temp file (never matches a checkpoint name) or a sidecar
without data; the store's cleanup removes both (:func:`.cleanup.leftovers`).

Overwriting a committed file (a fixed name such as ``last.pth``, or an epoch trained again)
must not pass through a state where ``<name>`` holds the old data and ``<name>.sha256`` the
new hash, so the new hash goes to a pending sidecar first::

    .<name>.tmp-<pid>-<rand>            data, fsynced (as above)
    .<name>.sha256.pending-<pid>        new sidecar, written durably
    <name>                              rename of the data, dir fsync   <- commit point
    <name>.sha256                       rename of the pending sidecar, dir fsync

At every instant ``<name>`` verifies against ``<name>.sha256`` or a pending sidecar, i.e. it
is the complete old or the complete new checkpoint; cleanup finishes (data matches the
pending sidecar) or drops (it does not) the pending sidecar of a dead writer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ...disk import (
    Serializer,
    Written,
    dir_lock,
    format_sidecar,
    fsync_dir,
    sidecar_path,
    temp_name,
    write_durably,
    write_hashed,
)
from ...errors import LatestUpdateError
from ...state import stored_progress
from ...testing import phase
from ..base import SaveResult
from ..directory import durable_phases, write_latest
from .names import pending_sidecar_name

# Creates, fills and fsyncs a temp file (the given path) with a state; returns what the commit records.
WriteFile = Callable[[Path, Any], Written]


def commit_file(
    directory: str | Path,
    filename: str,
    state: Any,
    *,
    update_latest: bool,
    serialize: Serializer = torch.save,
    write: WriteFile | None = None,
) -> SaveResult:
    """Write ``state`` to ``directory/filename`` transactionally (see module docstring).

    ``serialize(state, fileobj)`` writes the bytes (``torch.save`` by default; the CLI's
    safetensors export passes its own). ``write(temp_path, state)`` creates, fills and fsyncs the
    temp file (:func:`~linnaeus.checkpoint.disk.write_hashed` here by default; a background
    save may hand it to its writer process); the commit that follows is always this process's.
    """
    start = time.perf_counter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / filename
    tmp = directory / temp_name(filename)
    try:
        written = (write or (lambda path, obj: write_hashed(path, obj, serialize)))(tmp, state)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit_written(tmp, final, format_sidecar(written.digest, filename, stored_progress(state)), written.nbytes,
                   update_latest=update_latest)
    return SaveResult(final, written.digest.sha256, written.nbytes, time.perf_counter() - start)


def commit_written(tmp: Path, final: Path, sidecar_text: str, nbytes: int, *, update_latest: bool) -> None:
    """Commit the fsynced temp file ``tmp`` (a :func:`~linnaeus.checkpoint.disk.temp_name` beside
    ``final``) whose sidecar is ``sidecar_text``: a new name or an overwrite, as the module docstring
    says. A save calls it, and so does a node that received a copy of a committed file."""
    directory = final.parent
    sidecar_written = False
    try:
        with dir_lock(directory):
            side = sidecar_path(final)
            if final.exists() and side.exists():
                _overwrite_committed(tmp, final, sidecar_text, nbytes)
            else:
                # Sidecar first: once the data file has its final name it is fully committed.
                sidecar_written = True
                write_durably(side, sidecar_text, on_step=durable_phases("sidecar"))
                os.replace(tmp, final)
                phase("renamed", nbytes)
                fsync_dir(directory)
                phase("dir-synced", nbytes)
            if update_latest:
                try:
                    write_latest(directory, final.name)
                except OSError as e:
                    raise LatestUpdateError(final, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        if sidecar_written and not final.exists():
            sidecar_path(final).unlink(missing_ok=True)
        raise


def _overwrite_committed(tmp: Path, final: Path, sidecar_text: str, nbytes: int) -> None:
    """Replace committed ``final`` by the fsynced ``tmp`` so that ``final`` always verifies.

    Replacing the sidecar first (as for a new name) would leave the old data with the new
    hash if the process died before the data rename: the only copy of that checkpoint would
    then read as corrupt. The new hash waits in a pending sidecar, which verification also
    accepts, until the data has its name. Caller holds the directory lock.
    """
    pending = final.with_name(pending_sidecar_name(final.name))
    try:
        write_durably(pending, sidecar_text, on_step=durable_phases("pending"))
        os.replace(tmp, final)
    except BaseException:
        if tmp.exists():  # the data was not renamed: the old file and sidecar still match
            pending.unlink(missing_ok=True)
        raise
    phase("renamed", nbytes)
    fsync_dir(final.parent)
    phase("dir-synced", nbytes)
    # From here the pending sidecar is the truth; an error leaves it for cleanup_stale to finish.
    os.replace(pending, sidecar_path(final))
    phase("sidecar-replaced", nbytes)
    fsync_dir(final.parent)
    phase("sidecar-synced", nbytes)


__all__ = ["WriteFile", "commit_file", "commit_written"]
