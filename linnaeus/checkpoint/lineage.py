"""A run's lineage: which checkpoints make up the timeline a run continues, and setting others aside.

Every checkpoint records its lineage in ``meta``: ``run_id`` (the run, kept across relaunches)
and ``parent_sha256`` (the sha256 of the file the launch that wrote it resumed from; ``""``
after a fresh start). The rules, applied by :func:`~linnaeus.checkpoint.resume.find_resume_point`:

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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from . import writer_lock
from .catalog import CheckpointInfo, first_line, forget_info, list_checkpoints
from .commit import read_latest, write_latest
from .errors import CheckpointIncompatibleError
from .fsio import fsync_dir, write_durably
from .hashing import digest_file, sha256_file
from .names import LATEST, dir_lock
from .sidecar import SIDECAR_SUFFIX, format_sidecar, read_sidecar_digest, sidecar_path
from .state import newer_format_reason, newer_format_version, validate_structure

logger = logging.getLogger("linnaeus.checkpoint")

_SHOWN = 8  # files named in a message before "and N more"


# ----------------------------------------------------------------------------- what a directory holds
def held_checkpoints(directory: Path) -> list[CheckpointInfo]:
    """Files a fresh start must not overwrite: committed ones, and readable ones without a sidecar."""
    return [i for i in list_checkpoints(directory) if i.committed or i.readable]


def unadopted(directory: Path) -> list[CheckpointInfo]:
    """Readable checkpoints without a sidecar: not provably ours, so never judged."""
    return [i for i in list_checkpoints(directory) if not i.committed and i.readable]


def parent_sha256(path: Path) -> str:
    """The sha256 recorded as a checkpoint's parent: its sidecar's (verified when it was loaded),
    else the hash of the file (a file from elsewhere, without a sidecar); for a sharded checkpoint
    directory, the sha256 of its manifest (which holds every file's)."""
    if path.is_dir():
        return sha256_file(path / "manifest.json")
    try:
        return read_sidecar_digest(path).sha256
    except (OSError, ValueError):
        return sha256_file(path)


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
    """Move each file of ``infos`` (and its sidecar) from ``directory`` into the new folder
    ``folder_name`` (``-1``, ``-2``, ... appended if it exists); returns its path.

    Per file, at every instant the data has its sidecar beside it: the sidecar is copied into
    the folder durably, the data renamed (atomic, same filesystem), and only then the old sidecar
    removed (a crash in between leaves a sidecar without data, which cleanup removes).
    """
    directory = Path(directory)
    with dir_lock(directory):
        folder = _new_folder(directory, folder_name)
        for info in infos:
            side = sidecar_path(info.path)
            if side.exists():
                write_durably(folder / side.name, side.read_bytes())
            os.rename(info.path, folder / info.name)
            fsync_dir(folder)
            fsync_dir(directory)
            side.unlink(missing_ok=True)
            forget_info(info.path)
        fsync_dir(directory)
    return folder


def branch(directory: Path, target: Path, step: int) -> Path | None:
    """A run restarts from ``target`` (stored step ``step``) on purpose: move the directory's files
    with more progress (the abandoned timeline) aside; the folder, or None if there were none."""
    directory = Path(directory)
    newer = [i for i in list_checkpoints(directory) if i.committed and (i.readable or i.too_new) and i.step > step]
    if not newer:
        return None
    latest = read_latest(directory)
    # Files first, then ``latest``: a crash in between leaves a pointer to a missing file, which
    # resume ignores with a warning, and a top level that already is the new lineage.
    folder = move_aside(directory, newer, abandoned_folder_name(target))
    if latest in {i.name for i in newer}:
        if target.parent.resolve() == directory.resolve():
            write_latest(directory, target.name)
        else:
            (directory / LATEST).unlink(missing_ok=True)
            fsync_dir(directory)
    logger.warning("Restarting from %s (step %d), older than this run's newest checkpoint: moved the %d newer "
                   "checkpoint(s) of the abandoned timeline (%s) to %s (nothing was deleted).", target, step,
                   len(newer), _shown([i.name for i in newer]), folder)
    return folder


def abandoned_folder_name(target: Path) -> str:
    """``abandoned-<UTC>-from-<target stem>``: where a restart from ``target`` sets the newer timeline aside."""
    stem = target.name.rsplit(".", 1)[0] if "." in target.name[1:] else target.name
    return f"abandoned-{_utc_stamp()}-from-{_safe(stem)}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:80]


def set_aside(directory: Path) -> tuple[Path, list[str]] | None:
    """Move every checkpoint of ``directory`` (with sidecars and ``latest``) into
    ``set-aside-<UTC time>/``; (folder, names), or None if there was nothing to move.
    Holds the directory's writer lock: raises DirectoryLockedError beside a live run."""
    directory = Path(directory)
    with writer_lock.acquire(directory):
        found = held_checkpoints(directory)
        if not found:
            return None
        folder = move_aside(directory, found, f"set-aside-{_utc_stamp()}")
        if (directory / LATEST).exists():
            os.rename(directory / LATEST, folder / LATEST)
            fsync_dir(folder)
            fsync_dir(directory)
    return folder, [i.name for i in found]


# ----------------------------------------------------------------------------- adopting files without sidecars
@dataclass(frozen=True)
class Adoption:
    path: Path
    refused: str = ""  # why it was not adopted; "" = its sidecar was written


def adopt(directory: Path) -> list[Adoption]:
    """Write sidecars for the directory's checkpoints that have none, after a structural check.

    Adopted: files that load with ``weights_only=True`` and have a linnaeus checkpoint's
    structure (:func:`~linnaeus.checkpoint.state.validate_structure`) in a format this version
    reads. The sidecar is written durably and records the hash of the bytes that were checked.
    Holds the directory's writer lock: raises DirectoryLockedError beside a live run.
    """
    results = []
    with writer_lock.acquire(directory):
        for info in list_checkpoints(directory):
            if not info.committed:
                results.append(_adopt_one(info.path))
    return results


def _adopt_one(path: Path) -> Adoption:
    before = path.stat()
    digest = digest_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any load failure is the reason it is refused
        return Adoption(path, f"cannot be loaded with weights_only=True: {type(e).__name__}: {first_line(e)}")
    newer = newer_format_version(obj)
    if newer is not None:
        return Adoption(path, newer_format_reason(newer))
    problems = validate_structure(obj)
    if problems:
        return Adoption(path, "not a linnaeus checkpoint: " + "; ".join(problems))
    after = path.stat()
    if (before.st_ino, before.st_size, before.st_mtime_ns) != (after.st_ino, after.st_size, after.st_mtime_ns):
        return Adoption(path, "it changed while it was checked; run adopt again once nothing writes it")
    with dir_lock(path.parent):
        if sidecar_path(path).exists():
            return Adoption(path, "a sidecar appeared meanwhile; verify it with `linnaeus-ckpt verify`")
        write_durably(sidecar_path(path), format_sidecar(digest, path.name, _progress(obj)))
    forget_info(path)
    return Adoption(path)


def _progress(obj: Mapping) -> dict[str, int] | None:
    meta, progress = obj.get("meta") or {}, obj.get("progress") or {}
    if not isinstance(meta.get("step"), int):
        return None
    return {"step": meta["step"], "epoch": int(meta.get("epoch", -1)), "epoch_step": int(progress.get("epoch_step", 0))}


__all__ = ["Adoption", "CheckpointsPresentError", "UnadoptedCheckpointsError", "adopt", "branch", "held_checkpoints",
           "move_aside", "parent_sha256", "set_aside", "unadopted"]
