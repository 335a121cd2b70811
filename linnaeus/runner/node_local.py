"""A run whose checkpoint directory is node-local (each node its own disk, or CHECKPOINT.LOCAL_DIR):
what the runner sets up on every node at the start.

Every rank looks (:func:`~linnaeus.checkpoint.store.probe_sharing`). On node-local directories every
other node's lowest rank writes its node's directory too (copies of single-file checkpoints, its
part of sharded ones), so it holds that directory for the launch (the writer lock, and what a
killed save left there removed first: :func:`~linnaeus.checkpoint.store.hold_node_directory`); single-file checkpoints are copied to CHECKPOINT.REPLICAS other
nodes after each commit (:class:`~linnaeus.checkpoint.replicas.Replicator`), and the sharded
format copies each node's part itself (the policy's ``node_copies``). With a bucket folder, each such
leader uploads its node's part of every sharded checkpoint
(:class:`~linnaeus.checkpoint.remote.NodePartUploader`); rank 0's uploader sends the manifest last.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

from yacs.config import CfgNode

from linnaeus.checkpoint.disk import WriterLease
from linnaeus.checkpoint.remote import NodePartUploader, RemoteRun
from linnaeus.checkpoint.replicas import Replicator
from linnaeus.checkpoint.store import hold_node_directory, probe_sharing
from linnaeus.dist import broadcast_object, get_rank, is_main_process

logger = logging.getLogger("linnaeus")


class NodeLocal(NamedTuple):
    replicas: Replicator | None  # single-file checkpoints' copies on other nodes (rank 0 sends)
    lock: WriterLease | None  # this node's directory, held by its lowest rank (not rank 0's node)
    part_uploader: NodePartUploader | None  # this node's part of each sharded checkpoint, to the bucket


def set_up_node_local(cfg: CfgNode, directory: Path, format_name: str, retain: Mapping[str, Callable[[], object]],
                      remote: RemoteRun | None, **upload_options: Any) -> NodeLocal:
    """What a node-local ``directory`` needs on this rank (nothing when every rank sees one directory).
    A collective."""
    sharing = probe_sharing(directory)
    if sharing.shared:
        return NodeLocal(None, None, None)
    lock = hold_node_directory(sharing, directory)
    replicas = broadcast_object(cfg.CHECKPOINT.REPLICAS)  # rank 0's: every rank must take part alike
    if format_name != "file":  # sharded: the format copies each node's part (the policy's node_copies)
        rank = get_rank()
        leads = rank != 0 and any(group[0] == rank for group in sharing.groups)
        parts = NodePartUploader(remote, directory, rank, **upload_options) if remote is not None and leads else None
        if is_main_process():
            if remote is not None:
                logger.info("Each node uploads its own ranks' shards of every sharded checkpoint to %s; rank 0 "
                            "uploads the manifest once every node's part is confirmed there", remote.display)
            if replicas > 0:
                logger.info("Each node's part of every sharded checkpoint is copied after its commit to the next %d "
                            "node(s) (CHECKPOINT.REPLICAS)", replicas)
            else:
                logger.warning("CHECKPOINT.REPLICAS is 0: each node alone holds its ranks' shards of every sharded "
                               "checkpoint, and a node lost with its directory leaves none to resume.")
        return NodeLocal(None, lock, parts)
    replicator = Replicator(sharing, directory, replicas, retain)
    if is_main_process():
        if replicator.active:
            logger.info("Each checkpoint is copied after its commit to the checkpoint directories of %s "
                        "(CHECKPOINT.REPLICAS %d)", replicator.describe(), replicas)
        else:
            logger.warning("The checkpoint directory %s is node-local and CHECKPOINT.REPLICAS is %d: checkpoints live "
                           "only on rank 0's node (and in the bucket, if one is set), and are lost with it.",
                           directory, replicas)
    return NodeLocal(replicator if replicator.active else None, lock, None)


__all__ = ["NodeLocal", "set_up_node_local"]
