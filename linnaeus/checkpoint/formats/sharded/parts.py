"""Sharded checkpoints on node-local directories: each node's directory holds its own ranks' shard
files, and the commit is two-phase across the nodes.

Whether the ranks share the checkpoint directory is found at the first save into it
(``probe_sharing``: a probe file per rank) and kept for the process. When they do not, every node's lowest rank (its *leader*) makes the temp
directory in its own directory, and each rank's DCP writer fills its node's. Then::

    rank 0            state.pt, .metadata fsynced, manifest.json (lists every node's files and
                      ``parts``: the ranks each node holds) -- as for one shared directory
    every leader      .metadata, state.pt, manifest.json: rank 0's bytes, written durably
                      <- phase 1: every node's part is complete and durable (agreed by all ranks)
    every leader      one rename of its temp directory to the final name, directory fsync, latest
                      <- phase 2: committed on every node

A kill between the two phases, or during the renames, leaves the step committed on some nodes
only; a relaunch takes the newest checkpoint the nodes hold whole and never another
(:func:`linnaeus.checkpoint.resume.shards.agree_sharded`). After each commit, each node's part is
copied to the next nodes (:func:`.exchange.copy_parts`), and every other node keeps the sharded
checkpoints rank 0's node keeps (its retention decides; the others follow it).

The collectives run in the default process group for a save in the training loop, in the background
group for an async save's job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Mapping

from ...disk import (
    DirectorySharing,
    fsync_dir,
    is_temp_name,
    known_sharing,
    probe_sharing,
    remove_tree,
    temp_name,
    write_durably,
)
from .manifest import DCP_METADATA, MANIFEST, STATE_FILE

SHARED_FILES = (DCP_METADATA, STATE_FILE, MANIFEST)  # written on every node, the manifest last


def sharing_of(directory: Path) -> DirectorySharing:
    """Which ranks see ``directory`` (created where missing): probed at the first save into it (a collective
    every rank makes at the same save), then the answer this process keeps (``known_sharing``); which
    nodes see a directory does not change in a run."""
    return known_sharing(directory) or probe_sharing(directory)


def delete_entry(path: Path) -> None:
    """Remove a sharded checkpoint so that no reader sees half of it under its name: one rename out of
    the checkpoint namespace (a hidden temp name), then the tree."""
    doomed = path.with_name(temp_name(path.name))
    os.rename(path, doomed)
    fsync_dir(path.parent)
    remove_tree(doomed)


def leader_of(groups: Collection[tuple[int, ...]], rank: int) -> int:
    return next(group[0] for group in groups if rank in group)


def shared_bytes(tmp: Path) -> dict[str, bytes]:
    """Rank 0's files that every node's part holds, from its committed-to-be temp directory."""
    return {name: (tmp / name).read_bytes() for name in SHARED_FILES}


def write_shared(tmp: Path, shared: Mapping[str, bytes]) -> None:
    """A leader of another node than rank 0's: rank 0's shared files into its temp directory, each
    durably, the manifest last (phase 1 of the commit)."""
    for name in SHARED_FILES:
        write_durably(tmp / name, shared[name])


def sharded_entries(directory: Path) -> list[str]:
    """The final-named sharded checkpoint directories in ``directory`` (committed ones hold a manifest)."""
    if not directory.is_dir():
        return []
    return sorted(e.name for e in os.scandir(directory)
                  if e.is_dir(follow_symlinks=False) and not is_temp_name(e.name) and (Path(e.path) / MANIFEST).exists())


def follow_retention(directory: Path, keep: Collection[str]) -> list[str]:
    """A leader of another node: delete the sharded checkpoints rank 0's node no longer keeps (``keep``
    is what it holds)."""
    dropped = [name for name in sharded_entries(directory) if name not in keep]
    for name in dropped:
        delete_entry(directory / name)
    return dropped


__all__ = ["SHARED_FILES", "delete_entry", "follow_retention", "leader_of", "shared_bytes", "sharded_entries",
           "sharing_of", "write_shared"]
