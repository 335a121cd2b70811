"""Where a run continues from: the one place that decides it (detectron2's ``resume_or_load``).

:func:`find_resume_point` answers, on every rank alike, from these sources in this order:

1. an explicit target (``explicit``: a path, URI or bare name) — unless this run has already
   saved past it (the relaunch rule below);
2. the run's own newest checkpoint that verifies (``auto``);
3. the run's newest checkpoint in its bucket folder (``remote``), for a relaunch on a fresh machine;
4. nothing: a fresh start — refused when the run holds weights-only checkpoints of its main
   saver, since starting over would silently repeat and then overwrite that work.

Lineage (:mod:`.lineage`): checkpoints without a sidecar stop every path until adopted; an
explicit target with ``auto`` off is a deliberate restart, which moves the directory's files
with more progress aside (the abandoned timeline); ``auto`` off without a target (a fresh start)
is refused while the directory holds checkpoints.

The relaunch rule: a job launched with an explicit target saves checkpoints past it, dies and is
relaunched with the same command. Resuming the target again would repeat work, so when ``auto``
is on and the run (locally, else in its bucket folder) holds a full checkpoint with more
progress than the target, that one is taken and :attr:`ResumePoint.superseded` says so.

A bare name is looked up in the run's own checkpoint directory, then in its bucket folder, then
handed to ``resolve`` (cache, model-zoo bucket). Every file is verified and read once here; the
caller restores :attr:`ResumePoint.state`. Resuming has no other side effect (beyond a restart's
move aside): it queues no upload and deletes nothing. Newest means most stored progress (:mod:`.ordering`).

Errors are raised on every rank (:func:`linnaeus.dist.raise_on_all_ranks`), whatever their type,
so no rank is left waiting in a collective. Messages speak of this function's arguments; a
runner re-raises them with the names its users know (config keys).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from linnaeus.dist import barrier, broadcast_object, get_rank, is_main_process, run_on_all_ranks

from .catalog import CheckpointInfo, list_checkpoints, read_info
from .commit import read_latest
from . import lineage
from .errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointIncompatibleError,
    CheckpointNotFoundError,
    CheckpointUnreadableError,
)
from .ordering import newest_first
from .remote import RemoteRun
from .sources import DownloadOptions, is_uri, redact
from .state import KIND_FULL, KIND_WEIGHTS, newer_format_reason
from .verify import load_verified_digest, verify_checkpoint

if TYPE_CHECKING:
    from .manager import CheckpointManager

logger = logging.getLogger("linnaeus.checkpoint")

Resolver = Callable[[str], Path]


@dataclass(frozen=True)
class Superseded:
    """The explicit target that the relaunch rule passed over, and its stored step."""

    target: Path
    step: int


@dataclass
class ResumePoint:
    """A verified checkpoint, read once, ready to restore."""

    path: Path
    state: dict[str, Any]
    source: str  # "explicit" | "run" (own directory) | "bucket" (fetched from the run's folder)
    superseded: Superseded | None = None

    @property
    def step(self) -> int:
        return int(self.state.get("progress", {}).get("step", 0))


class WeightsOnlyRunError(CheckpointIncompatibleError):
    """The run holds weights-only checkpoints of its main saver and no full one to resume from."""

    def __init__(self, directory: Path, found: list[tuple[str, int]]) -> None:
        self.directory, self.found = directory, found
        newest, step = found[-1]
        shown = ", ".join(n for n, _ in found[-5:]) + (f" and {len(found) - 5} older" if len(found) > 5 else "")
        super().__init__(
            f"cannot resume this run: {directory} holds {len(found)} weights-only checkpoint(s) of its main saver "
            f"({shown}; newest {newest} at step {step}) but no full checkpoint. Weights-only files lack the "
            "optimizer, scheduler, sampler and RNG state needed to continue, and starting fresh would overwrite them.",
            path=directory / newest,
        )

    @property
    def newest(self) -> Path:
        return self.directory / self.found[-1][0]


def find_resume_point(
    manager: CheckpointManager,
    *,
    explicit: str = "",
    auto: bool = True,
    resolve: Resolver | None = None,
    remote: RemoteRun | None = None,
    download: DownloadOptions = DownloadOptions(),
) -> ResumePoint | None:
    """Where the run of ``manager`` (its main saver) continues from; None for a fresh start.

    A collective under torch.distributed: call it on every rank; every rank gets the same answer.
    Only ``manager.directory`` is read and written (downloads land there); nothing is restored.
    """
    return _Resume(manager, resolve, remote, download).choose(explicit, auto)


class _Resume:
    def __init__(self, manager: CheckpointManager, resolve: Resolver | None, remote: RemoteRun | None,
                 download: DownloadOptions) -> None:
        self.manager, self.directory = manager, manager.directory
        self.resolve, self.remote, self.download = resolve, remote, download

    def choose(self, explicit: str, auto: bool) -> ResumePoint | None:
        self._on_rank0(lambda: _refuse_if_any(self.directory, lineage.unadopted, lineage.UnadoptedCheckpointsError),
                       "looking for checkpoints without sidecars")
        if explicit:
            target = run_on_all_ranks(lambda: self._locate(explicit),
                                      f"locating resume target {redact(explicit)!r}", CheckpointError)
            newer = self._newer_own_checkpoint(target) if auto else None
            if newer is not None:
                return newer
            point = ResumePoint(target, self._load(target), "explicit")
            if not auto:  # a deliberate restart: a newer timeline in this directory is set aside (lineage.py)
                self._on_rank0(lambda: lineage.branch(self.directory, target, point.step), f"restarting from {target}")
            return point
        if not auto:
            self._on_rank0(lambda: _refuse_if_any(self.directory, lineage.held_checkpoints,
                                                  lineage.CheckpointsPresentError), "starting fresh")
            return None
        found = self._own_newest("run")
        if found is None and self.remote is not None:
            if self._fetch_newest_from_remote():
                found = self._own_newest("bucket")
            else:
                logger.info("No checkpoint of this run in its bucket folder %s either.", self.remote.display)
        if found is None:
            self._refuse_weights_only_restart()
        return found

    # ------------------------------------------------------------------ explicit target
    def _locate(self, identifier: str) -> Path:
        """The run's own file, then its bucket folder, then ``resolve`` (no collectives)."""
        looked: list[str] = []
        if is_bare_name(identifier):
            own = self.directory / identifier
            if own.is_file():
                return own
            looked.append(f"{own} (this run's checkpoints)")
            if self.remote is not None:
                try:
                    path = self.remote.fetch(identifier, self.directory, self.download)
                    logger.info("Fetched %s%s from this run's bucket folder -> %s", self.remote.display, identifier,
                                path)
                    return path
                except CheckpointNotFoundError:
                    looked.append(f"{self.remote.display}{identifier} (this run's bucket folder)")
            else:
                looked.append("this run's bucket folder: not searched (no remote configured for this run)")
        if self.resolve is None:
            if not looked:
                raise CheckpointNotFoundError(f"{redact(identifier)!r}: not found and no resolver was given.")
            raise CheckpointNotFoundError(f"{redact(identifier)!r} not found. Looked in:\n" +
                                          "\n".join(f"  - {p}" for p in looked))
        try:
            return self.resolve(identifier)
        except CheckpointNotFoundError as e:
            if not looked:
                raise
            places = "\n".join(f"  - {p}" for p in looked)
            raise CheckpointNotFoundError(
                f"{redact(identifier)!r} not found. Looked first in this run's own places:\n{places}\n"
                f"then resolved it as an identifier: {e}"
            ) from None

    def _newer_own_checkpoint(self, target: Path) -> ResumePoint | None:
        """The relaunch rule (module docstring): the run's newest full checkpoint, if past ``target``."""
        target_step = broadcast_object(self._stored_step(target) if is_main_process() else None)
        if target_step is None:
            return None
        newer = self._has_full_checkpoint_after(target_step)
        if not newer and self.remote is not None:
            self._fetch_newest_from_remote()
            newer = self._has_full_checkpoint_after(target_step)
        if not newer:
            return None
        found = self._own_newest("run")
        if found is None or found.step <= target_step:
            return None  # the newer ones failed verification (each was logged): the target it is
        found.superseded = Superseded(target, target_step)
        return found

    @staticmethod
    def _stored_step(path: Path) -> int | None:
        # Metadata only. A target that cannot be read is not compared: loading it fails with the reason.
        try:
            info = read_info(path)
        except OSError:
            return None
        return info.step if info.readable else None

    def _has_full_checkpoint_after(self, step: int) -> bool:
        newer = is_main_process() and any(i.kind == KIND_FULL and i.step > step for i in self.manager.checkpoints())
        return bool(broadcast_object(newer))

    # ------------------------------------------------------------------ own directory and bucket
    def _own_newest(self, source: str) -> ResumePoint | None:
        found = self.manager.load_resumable()  # verify and load in one read of the file
        return None if found is None else ResumePoint(found[0], found[1], source)

    def _fetch_newest_from_remote(self) -> bool:
        """Download the run's newest remote checkpoint into the directory; False if it has none.
        Every process calls it: one per machine transfers, the others wait on its file lock."""
        assert self.remote is not None
        remote = self.remote
        path = run_on_all_ranks(lambda: remote.fetch_newest(self.directory, self.download),
                                f"fetching this run's newest checkpoint from {remote.display}", CheckpointError)
        barrier()
        return bool(broadcast_object(path is not None))

    def _load(self, path: Path) -> dict[str, Any]:
        # Outside the run's directory a sidecar is optional (a file copied from elsewhere).
        inside = path.parent.resolve() == self.directory.resolve()
        loaded = run_on_all_ranks(
            lambda: load_verified_digest(path, require_sidecar=inside, hash_always=True) if is_main_process() else None,
            f"loading {path}", CheckpointError)
        return load_same_bytes(path, loaded, require_sidecar=inside)

    @staticmethod
    def _on_rank0(step: Callable[[], Any], what: str) -> None:
        """Rank 0 reads or moves the directory's files; every rank gets its error, or goes on after it."""
        run_on_all_ranks(lambda: step() if is_main_process() else None, what, CheckpointError)

    def _refuse_weights_only_restart(self) -> None:
        found: list[tuple[str, int]] = []
        if is_main_process():
            found = [(i.name, i.step) for i in self.manager.checkpoints() if i.kind == KIND_WEIGHTS]
        found = broadcast_object(found)
        if found:
            raise WeightsOnlyRunError(self.directory, found)


# ----------------------------------------------------------------------------- the run's own directory
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
        if not info.readable:
            _raise_if_inaccessible(info.path)  # not damage: falling back past it would lose its progress
            logger.warning("Skipping checkpoint %s: %s.", info.path, info.error)
        elif info.kind == KIND_FULL or (info.too_new and info.kind != KIND_WEIGHTS):
            usable.append(info)
    return sorted(newest_first(usable, latest), key=lambda i: not (i.too_new and i.step < 0))


def _raise_if_inaccessible(path: Path) -> None:
    try:
        with open(path, "rb"):
            pass
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


def load_newest(directory: Path, *, map_location: Any = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint in ``directory`` that verifies and loads, or None.

    Rank 0 tries the candidates in order, one read per file; the others then load its choice.
    A damaged file is skipped with a warning; a newer format stops with an error. A collective.
    """
    found = run_on_all_ranks(lambda: _first_loadable(directory, map_location) if is_main_process() else None,
                             f"resume in {directory}", CheckpointError)
    path = broadcast_object(None if found is None else str(found[0]))
    if path is None:
        return None
    return Path(path), load_same_bytes(Path(path), None if found is None else found[1], map_location=map_location)


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
        logger.warning("Skipping checkpoint %s: %s%s; trying the next older one.", info.path, result.reason,
                       _hash_detail(result.expected_sha256, result.actual_sha256))
    return None


def _first_loadable(directory: Path, map_location: Any) -> tuple[Path, tuple[dict[str, Any], str | None]] | None:
    for info in local_candidates(directory):
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


def _refuse_if_any(directory: Path, find: Callable[[Path], list[CheckpointInfo]],
                   error: Callable[[Path, list[CheckpointInfo]], CheckpointError]) -> None:
    found = find(directory)
    if found:
        raise error(directory, found)


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


def is_bare_name(identifier: str) -> bool:
    """A plain file name (no directory, not a URI or rclone path, not ``~``-relative)."""
    return (bool(identifier) and "/" not in identifier and os.sep not in identifier and not is_uri(identifier)
            and identifier not in (".", "..") and not identifier.startswith("~"))


__all__ = ["ResumePoint", "Superseded", "WeightsOnlyRunError", "find_resume_point", "is_bare_name", "load_newest",
           "local_candidates", "newest_verified"]
