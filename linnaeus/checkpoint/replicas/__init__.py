"""Copies of committed checkpoints on other nodes, for node-local checkpoint directories: the
:class:`Replicator` that sends each one after its commit, and the verified, committed receipt of
a file from another node (:class:`IncomingFile`), which a resume's peer copy uses too. The bytes
move in chunks (:func:`~linnaeus.checkpoint.disk.move_chunks`)."""

from .incoming import IncomingFile
from .replicator import Replicator, ring_partners

__all__ = ["IncomingFile", "Replicator", "ring_partners"]
