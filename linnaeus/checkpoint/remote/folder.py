"""A run's folder in a bucket: list it, upload into it, move its marker, fetch its newest checkpoint.

Layout (``REMOTE:NAME/PATH_PREFIX<experiment>/``)::

    checkpoint_epoch_3.pth
    checkpoint_epoch_3.pth.sha256   uploaded after the data is confirmed remote
    checkpoint_epoch_4/             a sharded checkpoint: its files, each confirmed remote, then
        manifest.json               its manifest, uploaded last
    latest                          name of the newest checkpoint confirmed remote

A checkpoint counts as *committed remotely* when its format's marker is listed (the sidecar, the
manifest), as the rename is the local commit. How each format lists, uploads, fetches and moves
its entries is the format's (:mod:`linnaeus.checkpoint.formats`); everything that reads or writes
this folder — the background uploader, resume from the bucket, ``linnaeus-ckpt upload`` — goes
through :class:`RemoteRun`.

Ordering is the local rule (:mod:`linnaeus.checkpoint.ordering`): most stored training progress
first, the ``latest`` marker breaking ties. The data is not downloaded to list it: each marker
carries the progress its checkpoint holds, and one rclone call per format reads all of a folder's
markers. Entries whose marker records none (uploaded by hand, or by an older linnaeus) rank below
the others, among themselves by name (:func:`~linnaeus.checkpoint.ordering.progress_from_name`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import CheckpointCorruptError, CheckpointError, CheckpointNotFoundError
from ..formats import (
    RemoteEntry,
    RemoteFolder,
    checkpoint_stem,
    format_named,
    format_of,
    formats,
    read_latest,
    upload_entry,
    write_latest,
)
from ..ordering import default_name_filter, newest_first
from ..resolve import BucketConfig
from ..sources import DownloadOptions, rcat
from . import move

logger = logging.getLogger("linnaeus.checkpoint")

LATEST_MARKER = "latest"


class RemoteRun(RemoteFolder):
    """The folder holding one run's checkpoints in a bucket (an rclone path ending in ``/``).

    Build it with :meth:`in_bucket` from a bucket config and the run's name, or from any
    rclone folder string. Every method talks to the remote with the real rclone binary;
    nothing here deletes a remote object but the source of a checked copy (a move aside).
    """

    @classmethod
    def in_bucket(cls, bucket: BucketConfig | Mapping[str, Any], experiment: str) -> "RemoteRun":
        """``REMOTE:NAME/PATH_PREFIX<experiment>/``."""
        if not experiment or "/" in experiment.strip("/") or experiment in (".", ".."):
            raise ValueError(f"experiment name {experiment!r} must be a single non-empty path component.")
        cfg = BucketConfig.from_any(bucket)
        return cls(cfg.folder() + experiment.strip("/") + "/", env=cfg.rclone_env())

    @classmethod
    def bucket_root(cls, bucket: BucketConfig | Mapping[str, Any]) -> "RemoteRun":
        """``REMOTE:NAME/PATH_PREFIX`` itself: where bare names are resolved from (a model zoo)."""
        cfg = BucketConfig.from_any(bucket)
        return cls(cfg.folder(), env=cfg.rclone_env())

    # ------------------------------------------------------------------ reading
    def list(self, name_filter: Callable[[str], bool] = default_name_filter) -> list[str]:
        """Names of the remotely committed checkpoints (their markers listed), newest first."""
        return [e.name for e in newest_first(self.entries(name_filter))]

    def entries(self, name_filter: Callable[[str], bool] = default_name_filter) -> list[RemoteEntry]:
        """The remotely committed checkpoints of every format."""
        return [e for fmt in formats() for e in fmt.remote_entries(self, name_filter)]

    def read_marker(self) -> str | None:
        """The name the remote ``latest`` marker holds, or None (absent or not a file name)."""
        data = self.read(LATEST_MARKER, 4096)
        if data is None:
            return None
        name = data.decode("utf-8", "replace").strip()
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            logger.warning("Ignoring remote marker %s%s: expected a file name, found %r",
                           self.display, LATEST_MARKER, name[:80])
            return None
        return name

    def candidates(self, name_filter: Callable[[str], bool] = default_name_filter) -> list[str]:
        """Resume candidates, best first: newest by stored progress, the marker breaking ties."""
        return [e.name for e in self._candidate_entries(name_filter)]

    def _candidate_entries(self, name_filter: Callable[[str], bool]) -> list[RemoteEntry]:
        entries = self.entries(name_filter)
        marker = self.read_marker()
        if marker is not None and marker not in {e.name for e in entries}:
            logger.warning("Remote marker %s%s names %s, which is not committed remotely (data, .sha256 or "
                           "manifest missing); ordering by stored progress alone", self.display, LATEST_MARKER, marker)
        return list(newest_first(entries, marker))

    def newest(self) -> str | None:
        """rclone path of the newest remotely committed checkpoint, or None if there is none."""
        names = self.candidates()
        return self.folder + names[0] if names else None

    def entries_after(self, step: int) -> list[str]:
        """Committed checkpoints whose marker records more progress than ``step`` (entries whose
        marker records none cannot be placed on a timeline and are left alone)."""
        return [e.name for e in self.entries(default_name_filter) if e.progress and e.progress["step"] > step]

    # ------------------------------------------------------------------ fetching
    def fetch(self, name: str, dest_dir: str | os.PathLike, options: DownloadOptions = DownloadOptions()) -> Path:
        """Download the committed checkpoint ``name``, whatever its format, into ``dest_dir``, verified
        and committed as a local save is. Raises CheckpointNotFoundError when the folder lacks it."""
        misses = []
        for fmt in reversed(formats()):  # the single file first: one rclone call tells it is there
            try:
                return fmt.fetch(self, name, Path(dest_dir), options)
            except CheckpointNotFoundError as e:
                misses.append(str(e))
        # The same save in another layout (checkpoint_epoch_3.pth given, checkpoint_epoch_3/ committed).
        same = [e for e in self.entries(lambda _: True) if checkpoint_stem(e.name) == checkpoint_stem(name)]
        if len(same) == 1:
            return format_named(same[0].format).fetch(self, same[0].name, Path(dest_dir), options)
        raise CheckpointNotFoundError(f"{self.display}{name}: not committed in this folder, with or without its "
                                      "suffix (" + "; ".join(misses) + ").")

    def fetch_newest(self, dest_dir: str | os.PathLike, options: DownloadOptions = DownloadOptions(), *,
                     name_filter: Callable[[str], bool] = default_name_filter) -> Path | None:
        """Download the newest good checkpoint into ``dest_dir``; None when the folder has none.

        For a run relaunched on a fresh machine. Candidates are tried best first; a missing or
        corrupt one is logged and skipped. Writes ``dest_dir/latest`` when there is none yet.
        Call it from every process: one per machine transfers, the others wait on its file lock.
        """
        dest = Path(dest_dir)
        for entry in self._candidate_entries(name_filter):
            name = entry.name
            try:
                path = format_named(entry.format).fetch(self, name, dest, options)
            except (CheckpointNotFoundError, CheckpointCorruptError) as e:
                logger.warning("Skipping remote checkpoint %s%s: %s", self.display, name, e)
                continue
            if read_latest(dest) is None:
                write_latest(dest, name)
            logger.info("Fetched remote checkpoint %s%s -> %s", self.display, name, path)
            return path
        return None

    # ------------------------------------------------------------------ writing
    def upload(self, local: str | os.PathLike) -> bool:
        """Upload one committed checkpoint (its files in commit order, marker last) and verify the
        remote copy. Returns False when the remote already held an identical copy (nothing
        transferred). Raises CheckpointError (TransientSourceError for what a retry may fix)."""
        path = Path(local)
        fmt = format_of(path)
        if fmt is None:
            raise CheckpointError(f"cannot upload {path}: no such file, nor a checkpoint directory.")
        return upload_entry(fmt, path, self)

    def move_aside(self, names: list[str], folder_name: str) -> str:
        """Move committed checkpoints of this folder into the sub-folder ``folder_name``, the way the
        local directory sets an abandoned timeline aside; returns the sub-folder's rclone path.
        Each is copied and checked before its source goes, under a journal (:mod:`.move`)."""
        by_name = {e.name: e.format for e in self.entries(lambda _: True)}
        return move.move_aside(self, {name: by_name.get(name, "file") for name in names}, folder_name)

    def finish_moves(self) -> str | None:
        """Finish a move aside a killed process began here (before anything lists the folder)."""
        return move.finish_moves(self)

    def write_marker(self, name: str) -> None:
        """Point the remote ``latest`` at ``name`` (the caller makes sure it is committed remotely)."""
        rcat((name + "\n").encode(), self.folder + LATEST_MARKER, env=self.env)


__all__ = ["LATEST_MARKER", "RemoteRun"]
