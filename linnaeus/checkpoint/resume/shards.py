"""Which sharded checkpoint a relaunch on node-local directories may take, and the directory a node
without it gets first.

Each node's directory holds its own ranks' shards of a sharded checkpoint (and, with copies, its
partners' parts: :func:`~linnaeus.checkpoint.formats.sharded.exchange.copy_parts`). A checkpoint
counts for the relaunch when the nodes between them hold every rank's shard files under one manifest;
the newest such one is taken, and one committed on some nodes only (a save cut short between the
nodes' commits, parts lost with a node) is passed over. A node whose directory lacks the chosen one (a
replaced node) first gets its directory: rank 0's ``.metadata``, ``state.pt`` and manifest from a
node that has them; the shard files its ranks' load plans read follow at the restore
(:mod:`~linnaeus.checkpoint.formats.sharded.exchange`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from linnaeus.dist import all_gather_object, broadcast_object, get_rank, run_on_all_ranks

from .. import store
from ..disk import fsync_dir, temp_name
from ..errors import CheckpointError, CheckpointIncompatibleError
from ..formats import held_ranks, read_manifest, shared_bytes, write_shared
from ..state import KIND_FULL

logger = logging.getLogger("linnaeus.checkpoint")


def agree_sharded(sharing: store.DirectorySharing, directory: Path, saver: str) -> list[str]:
    """The names of sharded checkpoints newer than the newest one the nodes hold whole between them, which
    the resume passes over; nodes without that newest one get its directory (a collective). Raises on
    every rank when the nodes hold sharded checkpoints but none whole: a node's part is gone."""
    leaders = sorted({group[0] for group in sharing.groups})

    def listed() -> dict[str, Any] | None:
        if get_rank() not in leaders:
            return None
        out = {}
        for info in store.list_checkpoints(directory):
            if info.readable and info.committed and info.kind == KIND_FULL and info.saver == saver and info.path.is_dir():
                manifest, digest = read_manifest(info.path)
                every, held = held_ranks(info.path, manifest)
                out[info.name] = (info.step, digest, every, held)
        return out

    reports = all_gather_object(run_on_all_ranks(listed, f"listing the checkpoints in each node's {directory}",
                                                 CheckpointError))
    nodes = {r: reports[r] or {} for r in leaders}
    names = {n for held in nodes.values() for n in held}

    def whole(name: str) -> bool:
        holders = [held[name] for held in nodes.values() if name in held]
        return len({h[1] for h in holders}) == 1 and set(holders[0][2]) <= {r for h in holders for r in h[3]}

    complete = sorted((n for n in names if whole(n)), key=lambda n: next(h[n][0] for h in nodes.values() if n in h))
    step = next(h[complete[-1]][0] for h in nodes.values() if complete[-1] in h) if complete else -1
    passed = sorted(n for n in names if n not in complete and max(h[n][0] for h in nodes.values() if n in h) > step)
    where = "; ".join(f"rank {r} ({sharing.hosts[r]}): {', '.join(sorted(h)) or 'none'}" for r, h in nodes.items())

    def check() -> None:
        if names and not complete:
            raise CheckpointIncompatibleError(
                f"no sharded checkpoint of this run is whole on the nodes, so none can be resumed: each node's "
                f"directory holds its own ranks' shards (and copies of its partners' with CHECKPOINT.REPLICAS), and "
                f"the nodes hold {where}, none with every rank's shards between them. A node's directory was "
                "emptied or replaced and its shards are gone. Start over deliberately (`linnaeus-ckpt set-aside` on "
                "each node's directory), or give the node its directory back.", path=directory)

    run_on_all_ranks(check, f"choosing a sharded checkpoint in each node's {directory}", CheckpointError)
    if passed and get_rank() == 0:
        logger.warning("Passing over %s: not whole on the nodes (a save cut short between the nodes' commits, or "
                       "parts lost with a node). The nodes hold %s.", ", ".join(passed), where)
    if complete:
        _give_directory(directory, complete[-1], [r for r in leaders if complete[-1] in nodes[r]],
                        [r for r in leaders if complete[-1] not in nodes[r]])
    return passed


def _give_directory(directory: Path, name: str, holders: list[int], lacking: list[int]) -> None:
    """Each node in ``lacking`` gets ``name``'s directory with rank 0's shared files, from the lowest holder."""
    if not lacking:
        return
    source, rank = holders[0], get_rank()
    shared = broadcast_object(shared_bytes(directory / name) if rank == source else None, src=source)

    def receive() -> None:
        if rank not in lacking:
            return
        tmp = directory / temp_name(name)
        tmp.mkdir(parents=True)
        write_shared(tmp, shared)
        os.rename(tmp, directory / name)
        fsync_dir(directory)

    run_on_all_ranks(receive, f"giving {name} to the nodes without it", CheckpointError)
    if rank == 0:
        logger.info("Gave the directory of %s (its manifest, .metadata and state.pt) from rank %d to rank(s) %s, whose "
                    "nodes lacked it; their ranks' shards come from the other nodes as the load reads them.", name,
                    source, ", ".join(map(str, lacking)))


__all__ = ["agree_sharded"]
