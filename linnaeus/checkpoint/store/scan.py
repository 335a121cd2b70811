"""The newest checkpoint of a directory that verifies, loaded once and agreed on by every rank.

Resume candidates are the directory's committed full checkpoints, newest first by stored
progress (:mod:`.ordering`). Rank 0 tries them in order, one read per file (the sha256 is
checked beside the ``weights_only`` load); a damaged file is skipped with a warning, a newer
format or an unreadable file stops. The other ranks then load rank 0's choice and must find the
same bytes: rank 0's sha256 travels with the path, so a same-named different file on a
node-local disk fails the resume on every rank instead of loading silently.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Collection, TypeVar

from linnaeus.dist import broadcast_object, get_rank, is_main_process, run_on_all_ranks

from ..errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointIncompatibleError,
    CheckpointNotFoundError,
    CheckpointUnreadableError,
)
from ..formats import CheckpointInfo, load_verified_digest, read_latest, verify_checkpoint
from ..ordering import newest_first
from ..state import KIND_FULL, KIND_WEIGHTS, newer_format_reason
from .catalog import list_checkpoints

logger = logging.getLogger("linnaeus.checkpoint")


def local_candidates(directory: Path) -> list[CheckpointInfo]:
    """Committed full checkpoints in ``directory``, newest first by stored progress (``latest`` wins ties).

    Files in a newer format are candidates too (unless marked weights-only), so that resume
    stops at them rather than silently going back past them; one whose progress cannot be read
    counts as the newest.
    """
    latest = read_latest(directory)
    if latest and not (directory / latest).exists():
        logger.warning("%s names %s, which does not exist; looking for older checkpoints.", directory / "latest",
                       latest)
    usable = []
    for info in list_checkpoints(directory):
        if not info.committed:
            continue  # never committed (no sidecar): not ours to resume from
        if info.unreadable:  # not damage: falling back past it would lose its progress
            raise CheckpointUnreadableError(info.path, PermissionError(info.error))
        if not info.readable:
            _raise_if_inaccessible(info.path)
            logger.warning("Skipping checkpoint %s: %s.", info.path, info.error)
        elif info.kind == KIND_FULL or (info.too_new and info.kind != KIND_WEIGHTS):
            usable.append(info)
    return sorted(newest_first(usable, latest), key=lambda i: not (i.too_new and i.step < 0))


def _raise_if_inaccessible(path: Path) -> None:
    try:
        os.close(os.open(path, os.O_RDONLY))  # a file or a directory: reading it is what a load does first
    except FileNotFoundError:
        return
    except OSError as e:
        raise CheckpointUnreadableError(path, e) from e


def newest_verified(directory: Path) -> Path | None:
    """Newest checkpoint in ``directory`` that verifies (sha256 + structure), or None.
    A collective: rank 0 checks, every rank gets its answer (or its error)."""
    found = run_on_all_ranks(lambda: _first_verified(directory) if is_main_process() else None,
                             f"resume in {directory}", CheckpointError)
    found = broadcast_object(found)
    return Path(found) if found else None


def load_newest(directory: Path, *, map_location: Any = "cpu",
                skip: Collection[str] = ()) -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint in ``directory`` that verifies and loads, or None.

    Rank 0 tries the candidates in order, one read per file; the others then load its choice.
    A damaged file is skipped with a warning; a newer format stops with an error. Names in
    ``skip`` are passed over (found damaged at restore: :func:`restore_newest`). A collective.
    """
    found = run_on_all_ranks(lambda: _first_loadable(directory, map_location, skip) if is_main_process() else None,
                             f"resume in {directory}", CheckpointError)
    name = broadcast_object(None if found is None else found[0].name)
    if name is None:
        return None
    # Each rank's own directory: one path on a shared filesystem; with node-local directories, where
    # each node may give its own path, the file of that name on this rank's node (same bytes, checked).
    path = directory / name
    return path, load_same_bytes(path, None if found is None else found[1], map_location=map_location)


def nothing_to_load_error(directory: Path) -> CheckpointNotFoundError:
    """Why ``directory`` gave no checkpoint to load: the places looked and, per file there, why it
    was passed over (fairseq2's ``load_last_checkpoint`` raises rather than returning nothing)."""
    latest = read_latest(directory)
    looked = [f"{directory}{'' if directory.is_dir() else ' (does not exist)'}",
              f"{directory / 'latest'} ({f'names {latest}' if latest else 'absent'})"]
    passed = []
    for info in list_checkpoints(directory):
        if not info.committed:
            why = "no .sha256 sidecar: never committed"
        elif not info.readable:
            why = str(info.error)
        elif info.kind != KIND_FULL:
            why = f"a {info.kind} checkpoint, without the training state a resume needs"
        else:
            why = "did not verify (see the warning logged for it)"
        passed.append(f"{info.name}: {why}")
    message = f"no checkpoint to load in {directory}. Looked in:\n" + "\n".join(f"  - {p}" for p in looked)
    if passed:
        message += "\nFiles passed over:\n" + "\n".join(f"  - {p}" for p in passed)
    return CheckpointNotFoundError(message)


def load_same_bytes(path: Path, rank0: tuple[dict[str, Any], str | None] | None, *, map_location: Any = "cpu",
                    require_sidecar: bool = True) -> dict[str, Any]:
    """Every rank's state of ``path``, which rank 0 has loaded as ``rank0`` (state, sha256).

    A collective. Rank 0 broadcasts the sha256 of the bytes it loaded; each other rank loads
    ``path`` and checks its bytes hash the same, since with node-local directories one path can
    name different files. A rank whose bytes differ fails the load on every rank.
    """
    digest = broadcast_object(rank0[1] if rank0 is not None else None)

    def load() -> dict[str, Any]:
        if rank0 is not None:
            return rank0[0]  # rank 0, with the state it already holds
        state, actual = load_verified_digest(path, map_location=map_location, require_sidecar=require_sidecar,
                                             hash_always=digest is not None)
        if digest is not None and actual != digest:
            rank = get_rank()
            raise CheckpointError(
                f"ranks would resume from different bytes: {path} has sha256 {actual} on rank {rank}, but rank 0 "
                f"loaded sha256 {digest} from the same path. Every rank must load the same bytes; with node-local "
                "checkpoint directories, copy rank 0's file and its .sha256 to every node (or use a shared "
                "filesystem) and relaunch.")
        return state

    return run_on_all_ranks(load, f"loading {path}", CheckpointError)


def _first_verified(directory: Path) -> str | None:
    for info in local_candidates(directory):
        result = verify_checkpoint(info.path)
        if result.ok:
            return str(info.path)
        if result.incompatible:
            raise _newer_format_stop(directory, info.path, result.reason)
        if result.unreadable:  # no verdict on its bytes: resuming from an older file would lose its progress
            _raise_if_inaccessible(info.path)
            raise CheckpointUnreadableError(info.path, OSError(result.reason))
        logger.warning("Skipping checkpoint %s: %s%s; trying the next older one.", info.path, result.reason,
                       _hash_detail(result.expected_sha256, result.actual_sha256))
    return None


def _first_loadable(directory: Path, map_location: Any,
                    skip: Collection[str] = ()) -> tuple[Path, tuple[dict[str, Any], str | None]] | None:
    for info in local_candidates(directory):
        if info.path.name in skip:
            continue
        try:
            return info.path, load_verified_digest(info.path, map_location=map_location)
        except CheckpointCorruptError as e:
            logger.warning("Skipping checkpoint %s: %s%s; trying the next older one.", info.path, e.reason,
                           _hash_detail(e.expected_sha256, e.actual_sha256))
        except CheckpointNotFoundError:
            logger.warning("Skipping checkpoint %s: it was deleted while resume looked at it.", info.path)
        except CheckpointIncompatibleError as e:
            # Listing read the same file's meta; str(e) only if it changed in between.
            reason = newer_format_reason(info.format_version) if info.too_new else str(e)
            raise _newer_format_stop(directory, info.path, reason) from e
    return None


Point = TypeVar("Point")
Restored = TypeVar("Restored")


def restore_newest(choose: Callable[[frozenset[str]], Point | None], path_of: Callable[[Point], Path],
                   restore: Callable[[Point], Restored]) -> tuple[Point, Restored] | None:
    """Restore the newest checkpoint that restores intact: ``choose(skip)`` picks one (None: there is
    none), ``restore`` loads it into the live objects. A sharded checkpoint's shards are hashed while
    they are read (by the ranks that read them), so damage can surface in ``restore`` instead of
    ``choose``: that checkpoint is then skipped with a warning, as a damaged file is at the choice,
    and the next older one restored over whatever the failed load left. A collective when ``choose``
    and ``restore`` are (both raise on every rank alike).

    When a failed restore leaves nothing older, the error is raised: the live objects hold part of
    the damaged load, so the caller must not start fresh with them.
    """
    skipped: list[str] = []
    failure: CheckpointCorruptError | None = None
    while (point := choose(frozenset(skipped))) is not None:
        path = path_of(point)
        try:
            return point, restore(point)
        except CheckpointCorruptError as e:
            if path.name in skipped:
                raise  # chosen again despite the skip: never loop
            logger.warning("Skipping checkpoint %s: %s%s; trying the next older one.", path, e.reason,
                           _hash_detail(e.expected_sha256, e.actual_sha256))
            skipped.append(path.name)
            failure = e
    if failure is None:
        return None
    raise CheckpointError(
        f"{failure} No older checkpoint is left to fall back to ({', '.join(skipped)} failed at restore), and the "
        "model and optimizer now hold part of that failed load, so this run does not start fresh with them either. "
        "Replace the damaged file, or move the damaged checkpoint(s) aside (`linnaeus-ckpt verify` lists them) and "
        "relaunch to start fresh.") from failure


def _newer_format_stop(directory: Path, path: Path, reason: str) -> CheckpointIncompatibleError:
    return CheckpointIncompatibleError(
        f"auto-resume stopped at {path}: {reason}. It is the newest checkpoint in {directory} that is "
        "not damaged, so resuming from an older one would silently lose the progress it holds. "
        f"Upgrade linnaeus; or, to restart from an older checkpoint on purpose, move {path.name} "
        f"(and {path.name}.sha256) out of {directory}.",
        path=path,
    )


def _hash_detail(expected: str | None, actual: str | None) -> str:
    return f" (expected sha256 {expected}, actual {actual})" if expected and actual and expected != actual else ""


__all__ = ["load_newest", "load_same_bytes", "local_candidates", "newest_verified", "nothing_to_load_error",
           "restore_newest"]
