"""Where a run continues from: the one place that decides it (detectron2's ``resume_or_load``).

:func:`find_resume_point` answers, on every rank alike, from these sources in this order:

1. an explicit target (``explicit``: a path, URI or bare name, or ``latest`` / ``step:N`` for the
   run's own checkpoints, :mod:`.target`) — unless this run has already saved past it
   (the relaunch rule below);
2. the run's own newest checkpoint that verifies (``auto``);
3. the run's newest checkpoint in its bucket folder (``remote``), for a relaunch on a fresh machine;
4. nothing: a fresh start — refused when the run holds weights-only checkpoints of its main
   saver, since starting over would silently repeat and then overwrite that work.

Lineage (:mod:`linnaeus.checkpoint.store.lineage`): checkpoints without a sidecar stop every path until adopted; an
explicit target with ``auto`` off is a deliberate restart (:attr:`ResumePoint.restart`): once the
caller has restored it, :func:`~.timeline.start_timeline` moves the directory's files with more
progress aside (the abandoned timeline). The same restart relaunched as-is continues instead when
the run's newest full checkpoint descends from the target (its ``origin_sha256``). ``auto`` off
without a target (a fresh start) is refused while the directory holds checkpoints.

The relaunch rule: a job launched with an explicit target saves checkpoints past it, dies and is
relaunched with the same command. Resuming the target again would repeat work, so when ``auto``
is on and the run (locally, else in its bucket folder) holds a full checkpoint with more
progress than the target, that one is taken and :attr:`ResumePoint.superseded` says so.

A bare name is looked up in the run's own checkpoint directory, then in its bucket folder, then
handed to ``resolve`` (cache, model-zoo bucket). Every file is verified and read once here; the
caller restores :attr:`ResumePoint.state`. Choosing writes nothing but downloads: it moves, queues
and deletes nothing, so every refusal of the restore comes before any move. Newest means most stored progress (:mod:`linnaeus.checkpoint.ordering`).

Errors are raised on every rank (:func:`linnaeus.dist.raise_on_all_ranks`), whatever their type,
so no rank is left waiting in a collective. Messages speak of this function's arguments; a
runner re-raises them with the names its users know (config keys).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

from linnaeus.dist import barrier, broadcast_object, is_main_process, run_on_all_ranks

from .. import store
from ..errors import (
    CheckpointError,
    CheckpointIncompatibleError,
    CheckpointNotFoundError,
    NotATrainingCheckpointError,
)
from ..formats import CheckpointInfo, load_verified_digest, read_info
from ..manager import CheckpointManager
from ..remote import RemoteRun
from ..sources import DownloadOptions, TransientSourceError, is_uri, redact
from ..state import KIND_FULL, KIND_WEIGHTS, describe_foreign
from ..store import find_checkpoint, load_same_bytes
from .peers import bucket_newer, check_node_local, spread_newest
from .shards import agree_sharded
from .target import locate_run_target, parse_run_target

logger = logging.getLogger("linnaeus.checkpoint")

Resolver = Callable[[str], Path]


@dataclass(frozen=True)
class Superseded:
    """The explicit target that the relaunch rule passed over, and its stored step. ``restart``: the
    target was a deliberate restart's (auto off), whose timeline the run already continues."""

    target: Path
    step: int
    restart: bool = False


@dataclass
class ResumePoint:
    """A verified checkpoint, read once, ready to restore."""

    path: Path
    state: dict[str, Any]
    source: str  # "explicit" | "run" (own directory) | "bucket" (fetched from the run's folder)
    superseded: Superseded | None = None
    restart: bool = False  # a deliberate restart: start_timeline moves the newer timeline aside
    # With node-local checkpoint directories, where this rank's copy came from, in words ("" otherwise).
    tier: str = ""
    # Sharded checkpoints on node-local directories that the nodes do not hold whole: never uploaded; and of
    # those, the ones newer than this point, which start_timeline removes from every node.
    partial: tuple[str, ...] = ()
    passed: tuple[str, ...] = ()
    step: int = field(init=False)  # its stored progress, kept when the caller drops ``state`` after restoring

    def __post_init__(self) -> None:
        self.step = int(self.state.get("progress", {}).get("step", 0))


class RemoteCheckpointsPresentError(CheckpointIncompatibleError):
    """A fresh start was asked for while the run's bucket folder holds committed checkpoints."""

    def __init__(self, remote: RemoteRun, names: list[str]) -> None:
        self.remote, self.names = remote, names
        super().__init__(
            f"refusing to start fresh: this run's bucket folder {remote.display} holds {len(names)} checkpoint(s) "
            f"({', '.join(names[:8])}{' ...' if len(names) > 8 else ''}), which a fresh start would mix with a second "
            "run (a relaunch on another machine would resume from them). Resume from them (auto-resume), or give the "
            "new run its own name.")


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
    skip: Collection[str] = (),
) -> ResumePoint | None:
    """Where the run of ``manager`` (its main saver) continues from; None for a fresh start.

    A collective under torch.distributed: call it on every rank; every rank gets the same answer.
    Only ``manager.directory`` is read and written (downloads land there); nothing is restored.
    ``skip``: names of the run's own checkpoints to pass over (found damaged while restoring; see
    :func:`~linnaeus.checkpoint.store.restore_newest`).
    """
    return _Resume(manager, resolve, remote, download, skip).choose(explicit, auto)


class _Resume:
    def __init__(self, manager: CheckpointManager, resolve: Resolver | None, remote: RemoteRun | None,
                 download: DownloadOptions, skip: Collection[str] = ()) -> None:
        self.manager, self.directory = manager, manager.directory
        self.resolve, self.remote, self.download, self.skip = resolve, remote, download, skip

    def choose(self, explicit: str, auto: bool) -> ResumePoint | None:
        sharing = store.probe_sharing(self.directory)
        if sharing.shared:
            return self._choose(explicit, auto)
        check_node_local(sharing, self.directory, self.manager.format.name)
        received, fetched, partial, passed, shard_tier = "", False, [], [], ""
        if self.manager.format.name == "sharded":  # each node holds its part: the newest on every node
            remote = self.remote if not explicit else None
            agreed = agree_sharded(sharing, self.directory, self.manager.name, remote=remote,
                                   newer_in_bucket=lambda step: bool(remote and bucket_newer(remote, step)))
            self.skip, partial, passed, shard_tier = ({*self.skip, *agreed.passed}, agreed.partial, agreed.passed,
                                                      agreed.tier)
        elif not (explicit and not auto):  # a deliberate restart resumes its target, whatever else a node holds
            # Saves land on rank 0's node (and its copies): every node gets the newest any holds (:mod:`.peers`).
            spread = spread_newest(sharing, self.directory, self.manager.name)
            received = spread.received_from
            if not explicit and spread.newest is not None and self.remote is not None:
                fetched = self._fetch_if_bucket_newer(spread.newest.step)
        point = self._choose(explicit, auto)
        if point is not None:
            point.partial, point.passed = tuple(partial), tuple(passed)
        if point is not None and point.path.parent.resolve() == self.directory.resolve():
            point.tier = ("this node fetched it from the run's bucket folder" if point.source == "bucket" or fetched
                          else f"this node's copy came from {received} over the process group" if received
                          else shard_tier if shard_tier else "this node's part (the shards it lacks come from the other nodes as the load reads "
                          "them)" if self.manager.format.name == "sharded" else "this node's own copy")
        return point

    def _fetch_if_bucket_newer(self, step: int) -> bool:
        """Fetch the bucket's newest into every node's directory when it is newer than ``step``, the
        nodes' newest (:func:`.peers.bucket_newer`); whether it did."""
        assert self.remote is not None
        return bool(bucket_newer(self.remote, step)) and self._fetch_newest_from_remote()

    def _choose(self, explicit: str, auto: bool) -> ResumePoint | None:
        if self.remote is not None:  # a move aside that a kill interrupted ends before the folder is read
            self._on_rank0(self._finish_moves, f"finishing a move aside in {self.remote.display}")
        self._on_rank0(lambda: _refuse_if_any(self.directory, store.unadopted, store.UnadoptedCheckpointsError),
                       "looking for checkpoints without sidecars")
        if explicit:
            target = run_on_all_ranks(lambda: self._locate(explicit),
                                      f"locating resume target {redact(explicit)!r}", CheckpointError)
            newer = self._newer_own_checkpoint(target) if auto else None
            if newer is not None:
                return newer
            continued = None if auto else self._continued_restart(target)
            if continued is not None:
                return continued
            # Without auto, a deliberate restart: start_timeline sets a newer timeline aside, once restored.
            return ResumePoint(target, self._load(target), "explicit", restart=not auto)
        if not auto:
            self._on_rank0(lambda: _refuse_if_any(self.directory, store.held_checkpoints,
                                                  store.CheckpointsPresentError), "starting fresh")
            self._on_rank0(self._refuse_fresh_over_remote, "starting fresh")
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
        """The run's own file, then its bucket folder, then ``resolve`` (no collectives).
        ``latest`` and ``step:N`` name the run's own checkpoints only (:mod:`.target`)."""
        run_target = parse_run_target(identifier)
        if run_target is not None:
            return locate_run_target(run_target, self.directory, self.remote, self.download)
        looked: list[str] = []
        if is_bare_name(identifier):
            own = find_checkpoint(self.directory, identifier)  # with or without its suffix, in any layout
            if own is not None:
                return own
            looked.append(f"{self.directory / identifier} (this run's checkpoints, with or without its suffix)")
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

    def _continued_restart(self, target: Path) -> ResumePoint | None:
        """A restart command relaunched as-is: the run's newest full checkpoint already descends from
        ``target`` (its ``origin_sha256`` is the target's identity), so that timeline continues."""
        target_step = broadcast_object(self._stored_step(target) if is_main_process() else None)
        if target_step is None:
            return None
        if not self._has_full_checkpoint_after(target_step) and self.remote is not None:
            self._fetch_newest_from_remote()  # a fresh machine: the timeline may live in the bucket only
        origin = None
        if is_main_process() and any(i.kind == KIND_FULL and i.step > target_step for i in self.manager.checkpoints()):
            origin = store.parent_sha256(target)  # only now: a foreign file without a sidecar is hashed for it
        if broadcast_object(origin) is None:
            return None
        found = self._own_newest("run")
        descends = found is not None and found.step > target_step and \
            found.state.get("meta", {}).get("origin_sha256") == origin
        if not broadcast_object(descends):  # rank 0's verdict, on the bytes it verified
            return None  # the newest verified checkpoint is another timeline's: this launch restarts
        found.superseded = Superseded(target, target_step, restart=True)
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
        found = self.manager.load_resumable(skip=self.skip)  # verify and load in one read of the file
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

        def load() -> tuple[dict[str, Any], str | None] | None:
            if not is_main_process():
                return None
            loaded = load_verified_digest(path, require_sidecar=inside, hash_always=True)
            if loaded[0].get("meta", {}).get("kind") == KIND_WEIGHTS:  # intact, but nothing to resume training from
                raise NotATrainingCheckpointError(path, describe_foreign(loaded[0]))
            return loaded

        return load_same_bytes(path, run_on_all_ranks(load, f"loading {path}", CheckpointError), require_sidecar=inside)

    def _finish_moves(self) -> None:
        assert self.remote is not None
        try:
            self.remote.finish_moves()
        except TransientSourceError as e:  # unreachable: whatever reads the folder next fails loudly, or finishes it
            logger.warning("Could not check %s for an interrupted move aside: %s", self.remote.display, e)

    def _refuse_fresh_over_remote(self) -> None:
        if self.remote is None:
            return
        try:
            held = self.remote.list()
        except CheckpointError as e:  # an unreachable bucket fails the uploads later, loudly; don't block on it
            logger.warning("Could not check %s for checkpoints of an earlier run before a fresh start: %s",
                           self.remote.display, e)
            return
        if held:
            raise RemoteCheckpointsPresentError(self.remote, held)

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


def _refuse_if_any(directory: Path, find: Callable[[Path], list[CheckpointInfo]],
                   error: Callable[[Path, list[CheckpointInfo]], CheckpointError]) -> None:
    found = find(directory)
    if found:
        raise error(directory, found)


def is_bare_name(identifier: str) -> bool:
    """A plain file name (no directory, not a URI or rclone path, not ``~``-relative)."""
    return (bool(identifier) and "/" not in identifier and os.sep not in identifier and not is_uri(identifier)
            and identifier not in (".", "..") and not identifier.startswith("~"))


__all__ = ["RemoteCheckpointsPresentError", "ResumePoint", "Superseded", "WeightsOnlyRunError", "find_resume_point",
           "is_bare_name"]
