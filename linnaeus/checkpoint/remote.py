"""A run's checkpoints in a bucket: layout, the remote ``latest`` marker, auto-resume.

Layout written by :class:`linnaeus.checkpoint.upload.BackgroundUploader`::

    REMOTE:NAME/PATH_PREFIX<experiment>/
        checkpoint_epoch_3.pth
        checkpoint_epoch_3.pth.sha256   uploaded after the data is confirmed remote
        latest                          file name of the newest checkpoint confirmed remote

A checkpoint counts as *committed remotely* when both its data file and its ``.sha256``
are listed. Ordering (used when ``latest`` is missing or names something unusable) parses
the file name: ``epoch_<E>`` and ``step_<S>`` (also ``ep<E>`` / ``st<S>`` / ``iter<S>``);
an end-of-epoch file ``..._epoch_E`` sorts before mid-epoch files ``..._epoch_E_step_S``
(saved during epoch E+1) which sort by step, and all of them before ``..._epoch_<E+1>``.
Names with no parseable number sort oldest, among themselves by the remote modification
time. Weights-only files (``weights_*``) are never resume candidates unless a ``name_filter``
says so.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from linnaeus.checkpoint.errors import CheckpointCorruptError, CheckpointNotFoundError
from linnaeus.checkpoint.resolve import BucketConfig
from linnaeus.checkpoint.sources import DownloadOptions, RcloneSource, download
from linnaeus.checkpoint.sources.rclone import list_files
from linnaeus.checkpoint.store import read_latest, write_latest

logger = logging.getLogger(__name__)

LATEST_MARKER = "latest"
SIDECAR_SUFFIX = ".sha256"
_EPOCH = re.compile(r"(?:^|[_\-.])(?:epoch|ep)[_\-]?(\d+)", re.IGNORECASE)
_STEP = re.compile(r"(?:^|[_\-.])(?:step|st|iter)[_\-]?(\d+)", re.IGNORECASE)
_CKPT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def default_name_filter(name: str) -> bool:
    """Full training checkpoints: a checkpoint suffix, not a weights-only export."""
    return name.endswith(_CKPT_SUFFIXES) and not name.startswith("weights_")


def checkpoint_sort_key(name: str, modtime: str = "") -> tuple:
    """Older < newer (see the module docstring)."""
    epoch = _EPOCH.search(name)
    step = _STEP.search(name)
    if epoch is None and step is None:
        return (0, -1, -1, -1, modtime, name)
    e = int(epoch.group(1)) if epoch else -1
    s = int(step.group(1)) if step else -1
    # With an epoch: end-of-epoch (no step) first, then mid-epoch saves of the next epoch by step.
    return (1, e, 0 if step is None else 1, s, modtime, name)


def run_folder(bucket_cfg: BucketConfig | Mapping[str, Any], experiment: str) -> str:
    """``REMOTE:NAME/PATH_PREFIX<experiment>/``."""
    if not experiment or "/" in experiment.strip("/") or experiment in (".", ".."):
        raise ValueError(f"experiment name {experiment!r} must be a single non-empty path component.")
    return BucketConfig.from_any(bucket_cfg).folder() + experiment.strip("/") + "/"


def list_remote_checkpoints(
    bucket_cfg: BucketConfig | Mapping[str, Any],
    experiment: str,
    name_filter: Callable[[str], bool] = default_name_filter,
) -> list[str]:
    """File names of the run's remotely committed checkpoints (data + ``.sha256``), newest first."""
    entries = list_files(run_folder(bucket_cfg, experiment))
    names = {e["Name"]: e.get("ModTime", "") for e in entries}
    committed = [n for n in names if name_filter(n) and n + SIDECAR_SUFFIX in names]
    return sorted(committed, key=lambda n: checkpoint_sort_key(n, names[n]), reverse=True)


def _read_marker(folder: str) -> str | None:
    data = RcloneSource(folder + LATEST_MARKER).read_small(4096)
    if data is None:
        return None
    name = data.decode("utf-8", "replace").strip()
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        logger.warning("Ignoring remote marker %s%s: expected a file name, found %r", folder, LATEST_MARKER, name[:80])
        return None
    return name


def find_remote_latest(bucket_cfg: BucketConfig | Mapping[str, Any], experiment: str) -> str | None:
    """rclone path of the run's newest remotely committed checkpoint, or None if it has none.

    The ``latest`` marker wins when the checkpoint it names is committed remotely; otherwise
    the newest committed checkpoint by name ordering.
    """
    candidates = _candidates(bucket_cfg, experiment, default_name_filter)
    return candidates[0][1] if candidates else None


def _candidates(bucket_cfg, experiment: str, name_filter: Callable[[str], bool]) -> list[tuple[str, str]]:
    folder = run_folder(bucket_cfg, experiment)
    listed = list_remote_checkpoints(bucket_cfg, experiment, name_filter)
    marker = _read_marker(folder)
    if marker is not None and marker not in listed:
        logger.warning(
            "Remote marker %s%s names %s, which is not committed remotely (data or .sha256 missing); "
            "using the newest committed checkpoint instead", folder, LATEST_MARKER, marker,
        )
    ordered = ([marker] if marker in listed else []) + [n for n in listed if n != marker]
    return [(n, folder + n) for n in ordered]


def download_remote_latest(
    bucket_cfg: BucketConfig | Mapping[str, Any],
    experiment: str,
    checkpoints_dir: str | os.PathLike,
    *,
    name_filter: Callable[[str], bool] = default_name_filter,
    retries: int = 3,
    progress: bool | None = None,
    local_rank: int | None = None,
) -> Path | None:
    """Download the run's newest good remote checkpoint into ``checkpoints_dir``.

    For a run relaunched on a fresh machine with an empty run dir. Tries the ``latest``
    target, then older committed checkpoints, each downloaded with the safe download (lock,
    temp file, sha256 checked against the remote ``.sha256``, atomic rename; the local
    ``.sha256`` is written too). A missing or corrupt one is logged and skipped. Writes
    ``checkpoints_dir/latest`` (atomically) when there is none yet. Call it from every
    process: one per machine transfers, the others wait on the file lock (no collectives).

    Returns the local path, or None when the bucket holds no usable checkpoint of the run.
    """
    options = DownloadOptions(retries=retries, progress=progress, local_rank=local_rank)
    dest_dir = Path(checkpoints_dir)
    for name, remote_path in _candidates(bucket_cfg, experiment, name_filter):
        try:
            path = download(RcloneSource(remote_path), dest_dir / name, options)
        except (CheckpointNotFoundError, CheckpointCorruptError) as e:
            logger.warning("Skipping remote checkpoint %s: %s", remote_path, e)
            continue
        _write_local_marker(dest_dir, name)
        logger.info("Fetched remote checkpoint %s -> %s", remote_path, path)
        return path
    return None


def _write_local_marker(dest_dir: Path, name: str) -> None:
    if read_latest(dest_dir) is None:
        write_latest(dest_dir, name)


__all__ = [
    "checkpoint_sort_key",
    "default_name_filter",
    "download_remote_latest",
    "find_remote_latest",
    "list_remote_checkpoints",
    "run_folder",
]
