"""A run whose checkpoint directory is node-local (each node its own disk, or CHECKPOINT.LOCAL_DIR):
what the runner sets up on every node at the start.

Every rank looks (:func:`~linnaeus.checkpoint.store.probe_sharing`). On node-local directories every
other node's lowest rank writes its node's directory too (copies of single-file checkpoints, its
part of sharded ones), so it holds that directory for the launch (the writer lock, and what a
killed save left there removed first: :func:`~linnaeus.checkpoint.store.hold_node_directory`); single-file checkpoints are copied to CHECKPOINT.REPLICAS other
nodes after each commit (:class:`~linnaeus.checkpoint.replicas.Replicator`), and the sharded
format copies each node's part itself (the policy's ``node_copies``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping

from yacs.config import CfgNode

from linnaeus.checkpoint.disk import WriterLease
from linnaeus.checkpoint.replicas import Replicator
from linnaeus.checkpoint.store import hold_node_directory, probe_sharing
from linnaeus.dist import broadcast_object, is_main_process

logger = logging.getLogger("linnaeus")


def set_up_node_local(cfg: CfgNode, directory: Path, format_name: str,
                      retain: Mapping[str, Callable[[], object]]) -> tuple[Replicator | None, WriterLease | None]:
    """(the copies on other nodes, this node's directory lock) for a node-local ``directory``; (None,
    None) when every rank sees one directory. A collective."""
    sharing = probe_sharing(directory)
    if sharing.shared:
        return None, None
    lock = hold_node_directory(sharing, directory)
    replicas = broadcast_object(cfg.CHECKPOINT.REPLICAS)  # rank 0's: every rank must take part alike
    if format_name != "file":  # sharded: the format copies each node's part (the policy's node_copies)
        if is_main_process():
            if replicas > 0:
                logger.info("Each node's part of every sharded checkpoint is copied after its commit to the next %d "
                            "node(s) (CHECKPOINT.REPLICAS)", replicas)
            else:
                logger.warning("CHECKPOINT.REPLICAS is 0: each node alone holds its ranks' shards of every sharded "
                               "checkpoint, and a node lost with its directory leaves none to resume.")
        return None, lock
    replicator = Replicator(sharing, directory, replicas, retain)
    if is_main_process():
        if replicator.active:
            logger.info("Each checkpoint is copied after its commit to the checkpoint directories of %s "
                        "(CHECKPOINT.REPLICAS %d)", replicator.describe(), replicas)
        else:
            logger.warning("The checkpoint directory %s is node-local and CHECKPOINT.REPLICAS is %d: checkpoints live "
                           "only on rank 0's node (and in the bucket, if one is set), and are lost with it.",
                           directory, replicas)
    return (replicator if replicator.active else None), lock


__all__ = ["set_up_node_local"]
