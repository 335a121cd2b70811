"""Copies of committed checkpoints on other nodes, for node-local checkpoint directories: the
:class:`Replicator` that sends each one after its commit, and the verified, committed receipt of
a file from another node (:class:`IncomingFile`), which a resume's peer copy uses too."""

from .incoming import IncomingFile
from .replicator import Replicator, ring_partners
from .stream import CHUNK_BYTES, move_chunks, read_exactly

__all__ = ["CHUNK_BYTES", "IncomingFile", "Replicator", "move_chunks", "read_exactly", "ring_partners"]
