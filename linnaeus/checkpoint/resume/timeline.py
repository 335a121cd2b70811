"""The one step of a resume that writes: starting the timeline the chosen point continues.

:func:`~linnaeus.checkpoint.resume.find_resume_point` only decides (and downloads). The caller then
restores the point, which is where every refusal happens (a config change it cannot honour, another
taxonomy, a component the checkpoint lacks), and only then calls :func:`start_timeline`: a refused
resume has moved nothing, so the advice of its error can still be followed.
"""

from __future__ import annotations

import logging

from linnaeus.dist import get_rank, is_main_process, run_on_all_ranks

from .. import store
from ..disk import known_sharing
from ..errors import CheckpointError
from ..formats import read_latest, write_latest
from ..manager import CheckpointManager
from ..remote import RemoteRun
from ..sources import redact
from .point import ResumePoint

logger = logging.getLogger("linnaeus.checkpoint")


def start_timeline(manager: CheckpointManager, point: ResumePoint | None, *, remote: RemoteRun | None = None) -> None:
    """After ``manager.restore(point.state, path=point.path, ...)`` succeeded: record where the timeline
    started and, for a deliberate restart (:attr:`ResumePoint.restart`), move the newer checkpoints of the
    abandoned timeline aside, in the directory and in the run's bucket folder ``remote``.

    A collective under torch.distributed (call it on every rank); rank 0 moves the files.
    """
    if point is None:
        return
    if point.passed:
        _drop_passed(manager, point)
    if point.source == "explicit":
        # restore() set parent_sha256 to the target's identity on the writer, the only rank whose meta is saved.
        manager.lineage.origin_sha256 = manager.lineage.parent_sha256
    if not point.restart:
        return
    step = point.step

    def move() -> None:
        if not is_main_process():
            return
        store.branch(manager.directory, point.path, step)
        if remote is not None:
            _branch_remote(remote, point, step)

    run_on_all_ranks(move, f"restarting from {point.path}", CheckpointError)


def _drop_passed(manager: CheckpointManager, point: ResumePoint) -> None:
    """Node-local sharded checkpoints newer than ``point`` that the nodes do not hold whole (a save cut short
    between the nodes' commits, parts lost with a node): removed from every node's directory, as the
    leftovers they are, so that neither retention nor ``latest`` counts them; the run saves them again."""
    directory = manager.directory

    def drop() -> list[str]:
        sharing = known_sharing(directory)
        if sharing is None or not any(group[0] == get_rank() for group in sharing.groups):
            return []
        dropped = [name for name in point.passed if (directory / name).is_dir()]
        for name in dropped:
            manager.format.delete(directory / name)
        if read_latest(directory) in dropped:
            write_latest(directory, point.path.name)
        return dropped

    dropped = run_on_all_ranks(drop, f"removing what the nodes do not hold whole in {directory}", CheckpointError)
    if dropped:
        logger.warning("Removed %s from this node's %s: not whole on the nodes, passed over by the resume from %s; "
                       "the run saves them again.", ", ".join(dropped), directory, point.path.name)


def _branch_remote(remote: RemoteRun, point: ResumePoint, step: int) -> None:
    """The bucket folder's side of a restart: its checkpoints with more progress than the target move
    to a sub-folder, so that a relaunch on a fresh machine cannot pick the abandoned timeline."""
    newer = remote.entries_after(step)
    if newer:
        folder = remote.move_aside(newer, store.abandoned_folder_name(point.path))
        logger.warning("Restarting from %s (step %d): moved %d newer checkpoint(s) of the abandoned timeline in "
                       "the bucket (%s) to %s (nothing was deleted).", point.path, step, len(newer), ", ".join(newer),
                       redact(folder))


__all__ = ["start_timeline"]
