"""One local checkpoint directory as one saver sees it: its checkpoints in any format, the newest
that verifies, and verified loads. The base of :class:`~linnaeus.checkpoint.CheckpointManager`,
which adds saving, retention and restoring."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection

from ..formats import CheckpointInfo, load_verified
from .catalog import list_checkpoints
from .scan import load_newest, newest_verified, nothing_to_load_error


class LocalCheckpoints:
    """The checkpoints saver ``name`` keeps in ``directory``."""

    def __init__(self, directory: str | Path, name: str) -> None:
        self.directory = Path(directory)
        self.name = name

    def checkpoints(self) -> list[CheckpointInfo]:
        """This saver's committed, readable checkpoints on disk, oldest first.

        Checkpoints in a newer format are left out: this version cannot judge them, so retention
        never deletes them.
        """
        return [i for i in list_checkpoints(self.directory)
                if i.committed and i.readable and not i.too_new and i.saver == self.name]

    def find_resumable(self) -> Path | None:
        """Newest checkpoint here that verifies (every byte + structure), or None (all ranks agree).

        Damaged checkpoints are skipped with a warning; one in a newer format than this linnaeus
        reads raises :class:`CheckpointIncompatibleError` on every rank (see :mod:`.scan`).
        """
        return newest_verified(self.directory)

    def load(self, path: str | Path, *, map_location: Any = "cpu", require_sidecar: bool = True) -> dict[str, Any]:
        """Verify (streamed beside the load) and load with ``weights_only=True``, in any format."""
        return load_verified(path, map_location=map_location, require_sidecar=require_sidecar)

    def load_resumable(self, *, map_location: Any = "cpu",
                       skip: Collection[str] = ()) -> tuple[Path, dict[str, Any]] | None:
        """(path, state) of the newest valid checkpoint here, or None; one read pass per checkpoint
        tried. Skips and stops like :meth:`find_resumable`, and passes over the names in ``skip``."""
        return load_newest(self.directory, map_location=map_location, skip=skip)

    def load_last(self, *, map_location: Any = "cpu") -> tuple[Path, dict[str, Any]]:
        """:meth:`load_resumable` for a caller that needs a checkpoint (fairseq2's
        ``load_last_checkpoint``): raises :class:`CheckpointNotFoundError` listing the places
        looked and why each checkpoint there was passed over, instead of returning None."""
        found = self.load_resumable(map_location=map_location)
        if found is None:
            raise nothing_to_load_error(self.directory)
        return found


__all__ = ["LocalCheckpoints"]
