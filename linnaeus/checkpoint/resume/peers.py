"""A checkpoint file sent from one node's directory to the others over the process group, for runs
whose checkpoint directory is node-local (:func:`~linnaeus.checkpoint.store.probe_sharing`).

Saves are written where rank 0 sees them, so after a relaunch the other nodes lack the checkpoint
to resume from, and when rank 0 lands on another node (a replaced machine, another rendezvous
order) rank 0 lacks it too. Before the resume decision, the lowest rank of every directory
reports its newest full checkpoint; the one with the most progress is sent, with its sidecar, to
every directory that does not hold the same bytes. No bucket is read.

Each receiving node takes the bytes as they arrive (``dist.broadcast`` of 64 MiB chunks) into an
:class:`~linnaeus.checkpoint.replicas.IncomingFile`: hashed on the way, fsynced, checked against the
sender's sidecar and committed as a save commits, so a node killed in between leaves a temp file
and no checkpoint. A copy that does not match fails the resume on every rank.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from linnaeus.dist import all_gather_object, broadcast_object, get_rank, run_on_all_ranks

from .. import store
from ..disk import move_chunks, pair_mover, parse_sidecar, read_exactly, sidecar_path
from ..errors import CheckpointError, CheckpointIncompatibleError
from ..remote import RemoteRun
from ..replicas import IncomingFile
from ..sources import TransientSourceError
from ..state import KIND_FULL

logger = logging.getLogger("linnaeus.checkpoint")


@dataclass(frozen=True)
class Held:
    """A directory's newest full checkpoint of a saver, as its node reports it."""

    name: str
    step: int
    sha256: str


def newest_held(directory: Path, saver: str) -> Held | None:
    infos = [i for i in store.list_checkpoints(directory)
             if i.readable and i.committed and i.kind == KIND_FULL and i.saver == saver]
    if not infos:
        return None
    path = infos[-1].path
    return Held(path.name, infos[-1].step, parse_sidecar(sidecar_path(path).read_bytes(), path.name, path).sha256)


@dataclass(frozen=True)
class Spread:
    """What :func:`spread_newest` found and did, as this rank sees it."""

    newest: Held | None
    received_from: str = ""  # "rank 1 on host-b" when this rank's directory got its copy now; "" otherwise


def spread_newest(sharing: store.DirectorySharing, directory: Path, saver: str) -> Spread:
    """The newest full checkpoint any node holds, sent to every directory without the same bytes (a
    collective)."""
    leaders = {group[0] for group in sharing.groups}
    mine = run_on_all_ranks(lambda: newest_held(directory, saver) if get_rank() in leaders else None,
                            f"listing the checkpoints in each node's {directory}", CheckpointError)
    reports = all_gather_object(mine)
    held = [(r, h) for r, h in enumerate(reports) if h is not None]
    if not held:
        return Spread(None)
    source, newest = max(held, key=lambda rh: (rh[1].step, -rh[0]))  # ties: the lowest rank's
    receivers = sorted(r for r in leaders if reports[r] != newest)
    if not receivers:
        return Spread(newest)
    _send(sharing, directory, newest, source, receivers)
    leader = next(group[0] for group in sharing.groups if get_rank() in group)
    return Spread(newest, f"rank {source} on {sharing.hosts[source]}" if leader in receivers else "")


def _send(sharing: store.DirectorySharing, directory: Path, newest: Held, source: int, receivers: list[int]) -> None:
    rank, started = get_rank(), time.monotonic()
    dest = directory / newest.name
    receiving = rank in receivers

    def prepare() -> tuple[bytes, int] | None:
        if receiving and (dest.exists() or sidecar_path(dest).exists()):
            try:
                own = f"sha256 {parse_sidecar(sidecar_path(dest).read_bytes(), dest.name, dest).sha256}"
            except (OSError, CheckpointError):
                own = "no readable sidecar"
            raise CheckpointError(
                f"ranks would resume from different bytes: {dest} on rank {rank} ({socket.gethostname()}) has {own}, "
                f"but rank {source} holds {newest.name} with sha256 {newest.sha256} (step {newest.step}), the newest "
                "of any node. The checkpoint directories are node-local and hold different files of one name; every "
                "rank must load the same bytes. Move the one that is not this run's aside (`linnaeus-ckpt set-aside`) "
                "and relaunch.")
        return (sidecar_path(dest).read_bytes(), dest.stat().st_size) if rank == source else None

    sidecar, size = broadcast_object(run_on_all_ranks(prepare, f"sending {newest.name}", CheckpointError), src=source)
    incoming = IncomingFile(dest, sidecar, f"rank {source}") if receiving else None
    failure: BaseException | None = None  # raised on every rank once the last chunk has gone by
    src = open(dest, "rb") if rank == source else None

    def read(view: memoryview) -> None:
        nonlocal failure
        if failure is None:
            try:
                read_exactly(src, view)
            except OSError as e:
                failure = e

    try:
        if rank == source or receiving:  # point to point: the other ranks take no part
            move_chunks(size, pair_mover(source, receivers), read=read if src is not None else None,
                        take=incoming.write if incoming is not None else None)
    finally:
        if src is not None:
            src.close()

    def commit() -> None:
        if failure is not None:
            if incoming is not None:
                incoming.discard()
            raise failure
        if incoming is not None:
            incoming.commit()

    run_on_all_ranks(commit, f"receiving {newest.name} from rank {source}", CheckpointError)
    if rank == 0:
        logger.info("Sent %s (step %d, %.1f MB) from rank %d on %s to the directories of rank(s) %s over the process "
                    "group in %.1f s, verified: the checkpoint directories are node-local.", newest.name, newest.step,
                    size / 1e6, source, sharing.hosts[source], ", ".join(map(str, receivers)),
                    time.monotonic() - started)


def check_node_local(sharing: store.DirectorySharing, directory: Path, format_name: str) -> None:
    """Said once (rank 0); refused for formats other than the single file (sent between nodes) and the
    sharded one (each node keeps its ranks' shards)."""
    if get_rank() == 0:
        logger.warning("Checkpoint directory %s is %s. %s", directory, sharing.describe(), (
            "Each node's directory holds its own ranks' shards of every sharded checkpoint, committed on every "
            "node in two phases; a resume takes the newest committed on every node." if format_name == "sharded"
            else "Saves are written where rank 0 sees them (and copied to other nodes with CHECKPOINT.REPLICAS); "
            "before a resume, the newest checkpoint any node holds is sent to the others over the process group, "
            "and every rank reads it in its own node's directory."))
    if format_name not in ("file", "sharded"):
        raise CheckpointIncompatibleError(
            f"{format_name} checkpoints need one directory that every rank sees, but {directory} is "
            f"{sharing.describe()}. Give every rank the same directory on a shared filesystem.", path=directory)


def bucket_newer(remote: RemoteRun, step: int) -> list[str]:
    """The run's checkpoints in ``remote`` with more progress than ``step``, the newest any node holds (the
    same on every rank; rank 0 lists). Every node's newest is older when rank 0's node was lost with
    checkpoints no other node had (copies off, or behind): the bucket's is then fetched rather than
    that stretch trained again (and its uploads met, other bytes under the same names)."""

    def newer() -> list[str]:
        if get_rank() != 0:
            return []
        try:
            return remote.entries_after(step)
        except TransientSourceError as e:  # unreachable: resume from the nodes, and say so
            logger.warning("Could not list %s to compare with the nodes' newest checkpoint (step %d): %s",
                           remote.display, step, e)
            return []

    names = broadcast_object(run_on_all_ranks(newer, f"listing {remote.display}", CheckpointError))
    if names and get_rank() == 0:
        logger.warning("The run's bucket folder %s holds %s, newer than any node's newest checkpoint (step %d): "
                       "every node takes the newest from there.", remote.display, ", ".join(names), step)
    return names


__all__ = ["Held", "Spread", "bucket_newer", "check_node_local", "newest_held", "spread_newest"]
