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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from linnaeus.dist import all_gather_object, broadcast_object, get_rank, run_on_all_ranks

from .. import store
from ..disk import fsync_dir, temp_name
from ..errors import CheckpointError, CheckpointIncompatibleError
from ..formats import (
    MANIFEST,
    fill_from_bucket,
    held_ranks,
    read_info,
    read_manifest,
    remote_manifest,
    shared_bytes,
    write_shared,
)
from ..remote import RemoteRun
from ..state import KIND_FULL

logger = logging.getLogger("linnaeus.checkpoint")


@dataclass(frozen=True)
class Agreed:
    """What the nodes agreed on. ``passed``: newer sharded checkpoints the resume passes over; ``partial``:
    every one not whole on the nodes (nothing uploads those); ``tier``: where this rank's node got the
    chosen one from, in words, when not from its own directory alone."""

    passed: list[str]
    partial: list[str]
    tier: str = ""


def agree_sharded(sharing: store.DirectorySharing, directory: Path, saver: str, *, remote: RemoteRun | None = None,
                  newer_in_bucket: Callable[[int], bool] = lambda step: False) -> Agreed:
    """The newest sharded checkpoint the nodes hold whole between them, or the bucket's newest when
    ``newer_in_bucket(step)`` (a collective: the same on every rank) says ``remote`` holds one with more
    progress; nodes without it get its directory (a collective). Raises on every rank when the nodes
    hold sharded checkpoints, none whole, and the bucket none newer: a node's part is gone."""
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

    def step_of(name: str) -> int:
        return max(h[name][0] for h in nodes.values() if name in h)

    complete = sorted((n for n in names if whole(n)), key=step_of)
    step = step_of(complete[-1]) if complete else -1
    where = "; ".join(f"rank {r} ({sharing.hosts[r]}): {', '.join(sorted(h)) or 'none'}" for r, h in nodes.items())
    if remote is not None and newer_in_bucket(step):
        chosen, tier = _from_bucket(sharing, directory, remote)
        step = step_of(chosen) if chosen in names else broadcast_object(
            read_info(directory / chosen).step if get_rank() == 0 else None)
        partial = sorted(n for n in names if n != chosen and not whole(n))
        passed = sorted(n for n in partial if step_of(n) > step)
        _warn_passed(passed, where)
        return Agreed(passed, partial, tier)
    partial = sorted(n for n in names if not whole(n))
    passed = sorted(n for n in partial if step_of(n) > step)

    def check() -> None:
        if names and not complete:
            raise CheckpointIncompatibleError(
                f"no sharded checkpoint of this run is whole on the nodes, so none can be resumed: each node's "
                f"directory holds its own ranks' shards (and copies of its partners' with CHECKPOINT.REPLICAS), and "
                f"the nodes hold {where}, none with every rank's shards between them"
                f"{', and the run has no bucket folder' if remote is None else ', nor does the bucket folder hold one'}"
                ". A node's directory was emptied or replaced and its shards are gone. Start over deliberately "
                "(`linnaeus-ckpt set-aside` on each node's directory), or give the node its directory back.",
                path=directory)

    run_on_all_ranks(check, f"choosing a sharded checkpoint in each node's {directory}", CheckpointError)
    _warn_passed(passed, where)
    if complete:
        _give_directory(directory, complete[-1], [r for r in leaders if complete[-1] in nodes[r]],
                        [r for r in leaders if complete[-1] not in nodes[r]])
    return Agreed(passed, partial)


def _from_bucket(sharing: store.DirectorySharing, directory: Path, remote: RemoteRun) -> tuple[str, str]:
    """The bucket's newest checkpoint made whole on the nodes with one download of each file no node
    holds: by the node whose ranks saved it (else rank 0's), into that node's directory, which is made
    first where it lacks the checkpoint (with the shared files, as a node's part holds them). The load's
    exchange then moves shards between nodes as their plans read them. (its name, this rank's tier)."""
    leaders, rank = sorted({group[0] for group in sharing.groups}), get_rank()

    def plan() -> tuple[str, dict[str, Any]] | None:
        if rank != 0:
            return None
        name = remote.candidates()[0]
        return name, remote_manifest(remote, name)[0]

    name, manifest = broadcast_object(run_on_all_ranks(plan, f"reading {remote.display}", CheckpointError))

    def held() -> list[str]:
        entry = directory / name
        if rank not in leaders or not (entry / MANIFEST).exists():
            return []
        return [n for n in manifest["files"] if (entry / n).exists()]

    holdings = all_gather_object(run_on_all_ranks(held, f"looking for {name} on the nodes", CheckpointError))
    everywhere = {n for r in leaders for n in holdings[r]}
    owner = {r: group[0] for group in sharing.groups for r in group}
    mine = [n for n, e in manifest["files"].items()
            if n not in everywhere and e.get("rank") is not None and owner.get(e["rank"], 0) == rank]

    def take() -> list[str]:
        if rank not in leaders or (not mine and holdings[rank]):
            return []
        return fill_from_bucket(remote, name, directory, mine)

    got = run_on_all_ranks(take, f"taking {name} from {remote.display} on the nodes", CheckpointError)
    here = next(group[0] for group in sharing.groups if rank in group)  # this node's lowest rank
    got = all_gather_object(got)[here]
    shards = sum(n.endswith(".distcp") for n in got)
    if not got:
        tier = "this node's own part"
    elif not holdings[here]:
        tier = f"this node's part came from the run's bucket folder ({shards} shard file(s) and the shared files)"
    else:
        tier = f"{shards} shard file(s) of this node's part that no node held came from the run's bucket folder"
    return name, tier


def _warn_passed(passed: list[str], where: str) -> None:
    if passed and get_rank() == 0:
        logger.warning("Passing over %s: not whole on the nodes (a save cut short between the nodes' commits, or "
                       "parts lost with a node). The nodes hold %s.", ", ".join(passed), where)


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


__all__ = ["Agreed", "agree_sharded"]
