"""A run's lineage: which checkpoints make up the timeline a run continues, and setting others aside.

Every checkpoint records its lineage in ``meta``: ``run_id`` (the run, kept across relaunches),
``parent_sha256`` (the sha256 of the file the launch that wrote it resumed from; ``""`` after a
fresh start) and ``origin_sha256`` (that of the file its timeline was started from by an explicit
resume, kept by later resumes; ``""`` after a fresh start). The rules, applied by :func:`~linnaeus.checkpoint.resume.find_resume_point`:

- The **current lineage** of a checkpoint directory is the files at its top level. ``latest``,
  auto-resume and retention look nowhere else.
- A **branch** (a run restarted on purpose from a checkpoint older than its newest) moves every
  file with more progress than its starting point into ``abandoned-<UTC time>-from-<stem>/``:
  data and sidecar, never deleted, never overwritten. A folder is never listed as a checkpoint.
- A **fresh start** in a directory that holds checkpoints is refused
  (:class:`CheckpointsPresentError`): starting over would overwrite them and mix two runs.
  :func:`set_aside` (``linnaeus-ckpt set-aside``) moves them into ``set-aside-<UTC time>/``.
- A checkpoint **without a sidecar** (copied by hand, restored from a backup) is not provably
  ours: nothing resumes past it, overwrites or deletes it (:class:`UnadoptedCheckpointsError`)
  until :func:`adopt` (``linnaeus-ckpt adopt``) has checked it and written its sidecar.
"""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..disk import SIDECAR_SUFFIX, acquire, dir_lock, fsync_dir
from ..errors import CheckpointIncompatibleError
from ..formats import LATEST, CheckpointInfo, format_of, read_latest, write_latest
from .catalog import list_checkpoints

logger = logging.getLogger("linnaeus.checkpoint")

_SHOWN = 8  # files named in a message before "and N more"


@dataclass
class RunLineage:
    """What a saver records of its run in every checkpoint, and keeps: the run id and the run's start
    (``{run_timestamp}``), both taken over from the checkpoint a relaunch resumes, the identity of
    that checkpoint (``parent_sha256``; "" after a fresh start), and the names retention never
    deletes (the checkpoint resumed from). Savers of one run share one lineage object."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    run_timestamp: str = field(default_factory=lambda: datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    parent_sha256: str = ""
    # The identity of the checkpoint this timeline started from by an explicit resume (TRAIN.RESUME), kept by
    # every later resume: a restart command relaunched as-is continues the timeline that descends from it.
    origin_sha256: str = ""
    protect: set[str] = field(default_factory=set)
    resumed: tuple[str, int] | None = None  # (name, step) of the checkpoint resumed from, until a newer one commits

    def meta_fields(self) -> dict[str, str]:
        """What every checkpoint's ``meta`` records of the lineage (``make_meta``'s keywords)."""
        return {"run_id": self.run_id, "run_timestamp": self.run_timestamp, "parent_sha256": self.parent_sha256,
                "origin_sha256": self.origin_sha256}


# ----------------------------------------------------------------------------- what a directory holds
def held_checkpoints(directory: Path) -> list[CheckpointInfo]:
    """Files a fresh start must not overwrite: committed ones, and readable ones without a sidecar."""
    return [i for i in list_checkpoints(directory) if i.committed or i.readable]


def unadopted(directory: Path) -> list[CheckpointInfo]:
    """Readable checkpoints without a sidecar: not provably ours, so never judged."""
    return [i for i in list_checkpoints(directory) if not i.committed and i.readable]


def parent_sha256(path: Path) -> str:
    """The digest recorded as a checkpoint's parent: its format's identity of it (a file's sha256;
    a sharded directory's manifest's, which holds every file's)."""
    fmt = format_of(path)
    if fmt is None:
        raise FileNotFoundError(f"no checkpoint at {path}")
    return fmt.identity(path)


def _shown(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


class CheckpointsPresentError(CheckpointIncompatibleError):
    """A fresh start was asked for in a directory that holds checkpoints."""

    def __init__(self, directory: Path, found: list[CheckpointInfo]) -> None:
        self.directory, self.names = directory, [i.name for i in found]
        self.newest = found[-1].name  # list_checkpoints: oldest first
        super().__init__(
            f"refusing to start fresh in {directory}: it holds {len(found)} checkpoint(s) ({_shown(self.names)}), "
            "which a fresh start would overwrite and mix with a second run. Either resume from them "
            f"(auto-resume, or {self.newest} as the explicit target), or move them aside (nothing is deleted) with "
            f"`linnaeus-ckpt set-aside {directory}` and start again.", path=directory / self.newest)


class UnadoptedCheckpointsError(CheckpointIncompatibleError):
    """The directory holds checkpoints without a sidecar (copied, restored from a backup)."""

    def __init__(self, directory: Path, found: list[CheckpointInfo]) -> None:
        self.directory, self.paths = directory, [i.path for i in found]
        shown = "\n".join(f"  - {i.path} (epoch {i.epoch}, step {i.step})" if i.step >= 0 else f"  - {i.path}"
                          for i in found[:_SHOWN])
        more = f"\n  ... and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
        super().__init__(
            f"cannot use {directory}: it holds {len(found)} checkpoint(s) with no {SIDECAR_SUFFIX} sidecar "
            f"(copied without it, or restored from a backup?):\n{shown}{more}\n"
            "Nothing proves they are intact and this run's, so they are neither resumed from, nor overwritten, "
            f"nor deleted. Check them and write their sidecars with `linnaeus-ckpt adopt {directory}` (it adopts "
            "files that load with weights_only=True and have a linnaeus checkpoint's structure, and refuses the "
            f"others with the reason), or move them out of {directory}.", path=found[0].path)


# ----------------------------------------------------------------------------- moving files aside
def _utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _new_folder(directory: Path, name: str) -> Path:
    for n in range(1000):
        folder = directory / (name if n == 0 else f"{name}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        fsync_dir(directory)
        return folder
    raise FileExistsError(f"cannot create a folder named like {directory / name}")


def move_aside(directory: Path, infos: Iterable[CheckpointInfo], folder_name: str) -> Path:
    """Move each checkpoint of ``infos`` from ``directory`` into the new folder ``folder_name``
    (``-1``, ``-2``, ... appended if it exists), each committed at every instant (its format's
    :meth:`~linnaeus.checkpoint.formats.CheckpointFormat.move`); returns the folder's path."""
    directory = Path(directory)
    with dir_lock(directory):
        folder = _new_folder(directory, folder_name)
        for info in infos:
            fmt = format_of(info.path)
            if fmt is not None:
                fmt.move(info.path, folder)
        fsync_dir(directory)
    return folder


def branch(directory: Path, target: Path, step: int) -> Path | None:
    """A run restarts from ``target`` (stored step ``step``) on purpose: move the directory's files
    with more progress (the abandoned timeline) aside; the folder, or None if there were none."""
    moved = _move_newer(Path(directory), target, step, abandoned_folder_name(target))
    if moved is None:
        return None
    folder, names = moved
    logger.warning("Restarting from %s (step %d), older than this run's newest checkpoint: moved the %d newer "
                   "checkpoint(s) of the abandoned timeline (%s) to %s (nothing was deleted).", target, step,
                   len(names), _shown(names), folder)
    return folder


def _move_newer(directory: Path, target: Path, step: int, folder_name: str) -> tuple[Path, list[str]] | None:
    newer = [i for i in list_checkpoints(directory) if i.committed and (i.readable or i.too_new) and i.step > step]
    if not newer:
        return None
    latest = read_latest(directory)
    # Files first, then ``latest``: a crash in between leaves a pointer to a missing file, which
    # resume ignores with a warning, and a top level that already is the new lineage.
    folder = move_aside(directory, newer, folder_name)
    if latest in {i.name for i in newer}:
        if target.parent.resolve() == directory.resolve():
            write_latest(directory, target.name)
        else:
            (directory / LATEST).unlink(missing_ok=True)
            fsync_dir(directory)
    return folder, [i.name for i in newer]


def abandoned_folder_name(target: Path) -> str:
    """``abandoned-<UTC>-from-<target stem>``: where a restart from ``target`` sets the newer timeline aside."""
    stem = target.name.rsplit(".", 1)[0] if "." in target.name[1:] else target.name
    return f"abandoned-{_utc_stamp()}-from-{_safe(stem)}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:80]


def set_aside(directory: Path, *, after: Path | None = None, folder_name: str = "") -> tuple[Path, list[str]] | None:
    """Move every checkpoint of ``directory`` (with sidecars and ``latest``) into ``folder_name``
    (default ``set-aside-<UTC time>``); with ``after`` (a checkpoint of the directory), only those with
    more progress than it, ``latest`` then naming it. (folder, names), or None if there was nothing to
    move. Holds the directory's writer lock: raises DirectoryLockedError beside a live run."""
    directory = Path(directory)
    folder_name = folder_name or set_aside_folder_name()
    with acquire(directory):
        if after is not None:
            info = next((i for i in list_checkpoints(directory) if i.path == after and i.committed and i.readable), None)
            if info is None:
                raise CheckpointIncompatibleError(f"{after} is no committed, readable checkpoint of {directory}: "
                                                  "set-aside --after takes one of its checkpoints (see `ls`).")
            return _move_newer(directory, after, info.step, folder_name)
        found = held_checkpoints(directory)
        if not found:
            return None
        folder = move_aside(directory, found, folder_name)
        if (directory / LATEST).exists():
            os.rename(directory / LATEST, folder / LATEST)
            fsync_dir(folder)
            fsync_dir(directory)
    return folder, [i.name for i in found]


def set_aside_folder_name() -> str:
    return f"set-aside-{_utc_stamp()}"


# ----------------------------------------------------------------------------- adopting files without sidecars
@dataclass(frozen=True)
class Adoption:
    path: Path
    refused: str = ""  # why it was not adopted; "" = its sidecar was written


def adopt(directory: Path) -> list[Adoption]:
    """Commit the directory's checkpoints that have no marker (sidecar), after a structural check
    (:meth:`~linnaeus.checkpoint.formats.CheckpointFormat.adopt`). Holds the directory's writer
    lock: raises DirectoryLockedError beside a live run."""
    results = []
    with acquire(directory):
        for info in list_checkpoints(directory):
            fmt = format_of(info.path)
            if not info.committed and fmt is not None:
                results.append(Adoption(info.path, fmt.adopt(info.path)))
    return results


__all__ = ["Adoption", "CheckpointsPresentError", "RunLineage", "UnadoptedCheckpointsError", "abandoned_folder_name",
           "adopt", "branch", "held_checkpoints", "move_aside", "parent_sha256", "set_aside", "set_aside_folder_name",
           "unadopted"]
