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
from typing import Any, BinaryIO, Callable

import torch

from ...disk import (
    BackgroundFlush,
    HashingWriter,
    dir_lock,
    format_sidecar,
    fsync_dir,
    sidecar_path,
    temp_name,
    write_durably,
)
from ...errors import LatestUpdateError
from ...state import stored_progress
from ...testing import WRITE_PHASE_EVERY, phase
from ..base import SaveResult
from ..directory import durable_phases, write_latest
from .names import pending_sidecar_name

_FLUSH_EVERY = 32 << 20  # bytes serialised between background flushes (see disk.BackgroundFlush)


def commit_file(
    directory: str | Path,
    filename: str,
    state: Any,
    *,
    update_latest: bool,
    serialize: Callable[[Any, BinaryIO], None] = torch.save,
) -> SaveResult:
    """Write ``state`` to ``directory/filename`` transactionally (see module docstring).

    ``serialize(state, fileobj)`` writes the bytes (``torch.save`` by default; the CLI's
    safetensors export passes its own).
    """
    start = time.perf_counter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / filename
    tmp = directory / temp_name(filename)
    last_reported = [0]
    flushed = [0]

    def on_write(total: int) -> None:
        if total - flushed[0] >= _FLUSH_EVERY:
            # Let the disk work while we go on serialising and hashing, instead of
            # leaving all of it to the final fsync.
            raw.flush()
            flusher.kick()
            flushed[0] = total
        if total - last_reported[0] >= WRITE_PHASE_EVERY:
            last_reported[0] = total
            phase("write", total)

    sidecar_written = False
    try:
        with open(tmp, "xb") as raw:
            phase("open")
            writer = HashingWriter(raw, on_write=on_write)
            flusher = BackgroundFlush(raw.fileno())
            try:
                serialize(state, writer)
            except Exception as e:
                # torch.save reports a failed write of its own as a position mismatch
                # ("unexpected pos ..."); the OSError (ENOSPC, EFBIG, EIO) is the cause.
                if writer.error is not None and writer.error is not e:
                    raise writer.error from e
                raise
            finally:
                flusher.close()
            raw.flush()
            phase("written", writer.bytes_written)
            os.fsync(raw.fileno())
            phase("fsynced", writer.bytes_written)
        digest = writer.digest()
        sidecar_text = format_sidecar(digest, filename, stored_progress(state))
        with dir_lock(directory):
            side = sidecar_path(final)
            if final.exists() and side.exists():
                _overwrite_committed(tmp, final, sidecar_text, writer.bytes_written)
            else:
                # Sidecar first: once the data file has its final name it is fully committed.
                sidecar_written = True
                write_durably(side, sidecar_text, on_step=durable_phases("sidecar"))
                os.replace(tmp, final)
                phase("renamed", writer.bytes_written)
                fsync_dir(directory)
                phase("dir-synced", writer.bytes_written)
            if update_latest:
                try:
                    write_latest(directory, filename)
                except OSError as e:
                    raise LatestUpdateError(final, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        if sidecar_written and not final.exists():
            sidecar_path(final).unlink(missing_ok=True)
        raise
    return SaveResult(final, digest.sha256, writer.bytes_written, time.perf_counter() - start)


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


__all__ = ["commit_file"]
