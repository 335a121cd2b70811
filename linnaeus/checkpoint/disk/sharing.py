"""Whether every rank sees the same checkpoint directory, found by looking rather than assumed.

A multi-node run may be given a path that every node has but that is not shared: a node-local disk,
``/dev/shm``, a scratch directory of the same name on each machine. Nothing in the path says so.
:func:`probe_sharing` asks the files: every rank writes a probe named for a token rank 0 draws and
for its own rank, then lists which ranks' probes it sees. Ranks that see one another's probes share
a directory; one group of all ranks is a shared directory.

It is a collective (two all-gathers of a few bytes and a file per rank), run once per resume decision.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from linnaeus.dist import all_gather_object, broadcast_object, get_rank, get_world_size, is_dist, is_main_process

from ..errors import CheckpointError
from .durable import fsync_dir

_PROBE = ".sharing-{token}-{rank}"


@dataclass(frozen=True)
class DirectorySharing:
    """Which ranks see one copy of a directory: ``groups`` of ranks, each sorted, ordered by their
    lowest rank (rank 0's group first); ``hosts[r]`` and ``paths[r]``: rank r's host name and its
    absolute path of the directory."""

    groups: tuple[tuple[int, ...], ...]
    hosts: tuple[str, ...]
    paths: tuple[str, ...]

    @property
    def shared(self) -> bool:
        return len(self.groups) == 1

    def describe(self) -> str:
        if self.shared:
            return f"shared by all {len(self.hosts)} ranks"
        return "node-local: " + "; ".join(
            f"ranks {_ranks(g)} on {', '.join(sorted({self.hosts[r] for r in g}))} see {self.paths[g[0]]}"
            for g in self.groups)


def _ranks(group: tuple[int, ...]) -> str:
    return ",".join(map(str, group))


def probe_sharing(directory: Path) -> DirectorySharing:
    """Which ranks see the same ``directory`` (created where missing). A collective; a single process
    is a shared directory of one rank. Raises :class:`CheckpointError` on every rank when a rank
    cannot write its probe."""
    directory = Path(directory)
    if not is_dist() or get_world_size() == 1:
        return DirectorySharing(((0,),), (socket.gethostname(),), (str(directory.resolve()),))
    rank, world = get_rank(), get_world_size()
    token = broadcast_object(secrets.token_hex(8) if is_main_process() else None)
    mine = directory / _PROBE.format(token=token, rank=rank)
    error = ""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # This rank's probe of a launch killed between writing and removing it (the writer lock keeps
        # any other launch out of the directory, so no live probe of this rank number is touched).
        for stale in directory.glob(_PROBE.format(token="*", rank=rank)):
            stale.unlink(missing_ok=True)
        mine.write_bytes(b"")
        fsync_dir(directory)  # seen by the other ranks of a network filesystem once they look
    except OSError as e:
        error = f"rank {rank} on {socket.gethostname()} cannot write in {directory}: {e}"
    errors = [e for e in all_gather_object(error) if e]  # also the barrier: every probe written first
    if errors:
        mine.unlink(missing_ok=True)
        raise CheckpointError("; ".join(errors))
    seen = tuple(r for r in range(world) if (directory / _PROBE.format(token=token, rank=r)).exists())
    views = all_gather_object((seen, socket.gethostname(), str(directory.resolve())))  # and every look done
    mine.unlink(missing_ok=True)
    groups = sorted({view[0] for view in views}, key=lambda g: g[0] if g else world)
    found = DirectorySharing(tuple(groups), tuple(v[1] for v in views), tuple(v[2] for v in views))
    _KNOWN[(str(directory.resolve()), world, rank)] = found
    return found


# (directory, world size, rank) -> the last probe's answer in this process: which nodes see a directory does not
# change during a run, and the threads that must not run a collective (an upload) read it here.
_KNOWN: dict[tuple[str, int, int], DirectorySharing] = {}


def known_sharing(directory: Path) -> DirectorySharing | None:
    """The answer of this process's last :func:`probe_sharing` of ``directory`` at this world size and
    rank; None when none was made (a tool outside a run). No collective."""
    if not is_dist() or get_world_size() == 1:
        return None
    return _KNOWN.get((str(Path(directory).resolve()), get_world_size(), get_rank()))


__all__ = ["DirectorySharing", "known_sharing", "probe_sharing"]
