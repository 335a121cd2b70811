"""Transactional writes into a checkpoint directory: a checkpoint exists under its final name
only when complete, and ``latest`` names the newest full one.

The commit protocol for a new name::

    .<name>.tmp-<pid>-<rand>   torch.save through a sha256-hashing writer, fsync
    <name>.sha256              sha256sum line, written durably (temp + fsync + rename + dir fsync)
    <name>                     rename of the data temp file, dir fsync      <- commit point
    latest                     file name of the newest full checkpoint, written durably

A crash leaves at worst a hidden temp file (never matches a checkpoint name) or a sidecar
without data; :func:`linnaeus.checkpoint.retention.cleanup_stale` removes both.

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

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from .catalog import read_info
from .errors import CheckpointError, LatestUpdateError
from .fsio import TEMP_SYNCED, BackgroundFlush, fsync_dir, write_durably
from .hashing import HashingWriter
from .names import LATEST, dir_lock, is_checkpoint_name, pending_sidecar_name, temp_name
from .sidecar import format_sidecar, sidecar_path
from .testing import WRITE_PHASE_EVERY, phase

logger = logging.getLogger("linnaeus.checkpoint")

_FLUSH_EVERY = 32 << 20  # bytes serialised between background flushes (see fsio.BackgroundFlush)


@dataclass(frozen=True)
class SaveResult:
    path: Path
    sha256: str
    size: int
    seconds: float


def _phases_of(name: str) -> Callable[[str], None]:
    """A durable write's steps as fault-hook phases: ``<name>-temp``, then ``<name>``."""
    return lambda step: phase(f"{name}-temp" if step == TEMP_SYNCED else name)


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
        sidecar_text = format_sidecar(digest, filename, _stored_progress(state))
        with dir_lock(directory):
            side = sidecar_path(final)
            if final.exists() and side.exists():
                _overwrite_committed(tmp, final, sidecar_text, writer.bytes_written)
            else:
                # Sidecar first: once the data file has its final name it is fully committed.
                sidecar_written = True
                write_durably(side, sidecar_text, on_step=_phases_of("sidecar"))
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


def commit_for_saver(directory: Path, filename: str, state: Any, *, saver: str, update_latest: bool) -> SaveResult:
    """:func:`commit_file` on behalf of the saver named ``saver``, its failures as
    :class:`CheckpointError` naming the file and whether it got committed."""
    target = directory / filename
    if target.exists():
        owner = read_info(target).saver
        if owner and owner != saver:
            raise CheckpointError(
                f"refusing to overwrite {target}: it belongs to saver {owner!r}, not {saver!r}. "
                "Give the two savers different FILENAME templates."
            )
    try:
        return commit_file(directory, filename, state, update_latest=update_latest)
    except LatestUpdateError:
        raise  # the data is committed; its message says so
    except Exception as e:
        raise CheckpointError(
            f"save of {target} failed, nothing was committed: {type(e).__name__}: {e}. "
            "Check that the checkpoint directory is writable and has free space."
        ) from e


def _stored_progress(state: Any) -> dict[str, int] | None:
    """The progress a checkpoint holds (its meta's epoch/step, the position inside the epoch),
    copied into its sidecar; None for states that are not linnaeus checkpoints."""
    meta = state.get("meta") if isinstance(state, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        return None
    progress = state.get("progress") if isinstance(state.get("progress"), dict) else {}
    return {"step": meta["step"], "epoch": int(meta.get("epoch", -1)), "epoch_step": int(progress.get("epoch_step", 0))}


def _overwrite_committed(tmp: Path, final: Path, sidecar_text: str, nbytes: int) -> None:
    """Replace committed ``final`` by the fsynced ``tmp`` so that ``final`` always verifies.

    Replacing the sidecar first (as for a new name) would leave the old data with the new
    hash if the process died before the data rename: the only copy of that checkpoint would
    then read as corrupt. The new hash waits in a pending sidecar, which verification also
    accepts, until the data has its name. Caller holds the directory lock.
    """
    pending = final.with_name(pending_sidecar_name(final.name))
    try:
        write_durably(pending, sidecar_text, on_step=_phases_of("pending"))
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


def write_latest(directory: str | Path, filename: str) -> None:
    """Point ``latest`` at ``filename`` (durably: a crash leaves the old pointer or the new one)."""
    write_durably(Path(directory) / LATEST, filename + "\n", on_step=_phases_of("latest"))


def read_latest(directory: str | Path) -> str | None:
    """File name recorded in ``latest``, or None if there is none (or it is unusable)."""
    path = Path(directory) / LATEST
    try:
        name = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not name or "/" in name or not is_checkpoint_name(name):
        logger.warning("Ignoring %s: expected a checkpoint file name, found %r.", path, name[:80])
        return None
    return name
