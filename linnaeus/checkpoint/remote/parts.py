"""The uploader of every node's leader but rank 0's, for sharded checkpoints on node-local directories.

Each node's directory holds its own ranks' shards of every sharded checkpoint. Rank 0's
:class:`~.uploader.BackgroundUploader` sends its node's part and the shared files, and the manifest
(the remote commit marker) only once every other node's part is confirmed in the folder; this
uploader sends one other node's part and its confirmation
(:func:`~linnaeus.checkpoint.formats.upload_part`). It learns of new checkpoints by looking at its
node's directory (:meth:`NodePartUploader.enqueue_new`, called at each step): the commits on other
nodes than rank 0's call no hook. It moves no ``latest`` marker, and retention on its node follows
rank 0's, which deletes nothing before the manifest, and so every part, is confirmed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Collection

from ..formats import MANIFEST, read_info, upload_part
from ..disk import is_temp_name
from .folder import RemoteRun
from .uploader import BackgroundUploader


class NodePartUploader(BackgroundUploader):
    """Uploads the part of each sharded checkpoint that ``directory``'s node saved (this process is that
    node's lowest rank, ``rank``), in commit order, on a worker thread; failures as the
    :class:`BackgroundUploader` reports them."""

    def __init__(self, remote: RemoteRun, directory: Path, rank: int, **options: Any) -> None:
        super().__init__(remote, **options)
        self.directory, self.rank = Path(directory), rank
        self.noun = "this node's part of"
        # (name, inode) of every directory looked at: a save of the same name later (one passed over as not
        # whole, saved again) is a new directory, and is uploaded.
        self._seen: set[tuple[str, int]] = set()
        # With an upload interval (:class:`~.cadence.UploadCadence`): this launch's saves by step, whether each
        # goes up (rank 0's uploader decides alike), and the newest held back (the last one goes up at the end).
        self._due: dict[int, bool] = {}
        self._last_step: int | None = None
        self._held: tuple[int, Path] | None = None

    def _transfer(self, path: Path) -> bool:
        return upload_part(path, self.remote, self.rank)

    def _update_marker(self, confirmed: Path) -> None:
        """Rank 0's uploader moves ``latest``, once the manifest is up."""

    def enqueue_existing(self, checkpoints_dir: str | os.PathLike, skip: Collection[str] = ()) -> int:
        assert Path(checkpoints_dir) == self.directory, "one node's directory per part uploader"
        return self.enqueue_new(skip)

    def enqueue_new(self, skip: Collection[str] = ()) -> int:
        """Queue the sharded checkpoints committed in the directory since the last look, oldest first
        (a scan of the directory's names; only new ones are read). ``skip``: never these."""
        if not self.directory.is_dir():
            return 0
        found = [e for e in os.scandir(self.directory)
                 if e.is_dir(follow_symlinks=False) and not is_temp_name(e.name) and (e.name, e.inode()) not in self._seen
                 and (Path(e.path) / MANIFEST).exists()]
        self._seen.update((e.name, e.inode()) for e in found)
        new = [Path(e.path) for e in found]
        infos = [i for i in (read_info(p) for p in new) if i.readable and i.committed and i.name not in skip]
        queued = 0
        for info in sorted(infos, key=lambda i: (i.step, i.name)):
            if self._due.get(info.step, True):
                self.on_commit(info.path)
                queued += 1
            elif self._held is None or info.step >= self._held[0]:
                self._held = (info.step, info.path)
        return queued

    def decide(self, step: int, due: bool) -> None:
        """Whether the checkpoint this launch saves at ``step`` goes up (before it is saved)."""
        # The previous save's (it may commit, and be seen here, after this call) and this one's.
        self._due = {s: d for s, d in self._due.items() if s == self._last_step}
        self._due[step] = due
        self._last_step = step

    def release_last(self) -> None:
        """The last checkpoint of the launch goes up after all (held back by the interval)."""
        self.enqueue_new()
        step = self._last_step
        if step is not None and not self._due.get(step, True):
            self._due[step] = True
            if self._held is not None and self._held[0] == step:
                self.on_commit(self._held[1])
                self._held = None


__all__ = ["NodePartUploader"]
