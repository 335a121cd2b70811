"""A single-file checkpoint in a bucket folder: ``<name>`` and its ``<name>.sha256``, the marker.

The sidecar is uploaded after the data is confirmed remote, so a listed sidecar means a committed
remote copy. Each sidecar carries the progress its file holds (a ``# linnaeus-progress`` line):
one rclone call reads all of a folder's sidecars, so a listing orders checkpoints without
downloading them. A fetch is the safe download of :mod:`linnaeus.checkpoint.sources.download`
(lock, temp file, verified against the remote sidecar, local sidecar, rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ...disk import SIDECAR_SUFFIX, SidecarError, parse_sidecar, read_sidecar, sidecar_path, sidecar_progress
from ...errors import CheckpointError
from ...sources import DownloadOptions, cat_matching, download, list_files
from ..base import CommitFiles, Part, RemoteEntry, RemoteParts
from ..folder import RemoteFolder


def commit_files(path: Path) -> CommitFiles:
    """The data file, then its sidecar."""
    if not path.is_file():
        raise CheckpointError(f"cannot upload {path}: no such file.")
    try:
        digest = read_sidecar(path)
    except FileNotFoundError:
        raise CheckpointError(
            f"cannot upload {path}: its sidecar {sidecar_path(path)} is missing, so the file is not a "
            "committed checkpoint. Write it with `sha256sum NAME > NAME.sha256` in its folder if the file is good."
        ) from None
    except ValueError as e:
        raise CheckpointError(f"cannot upload {path}: {e}") from None
    side = sidecar_path(path)
    return CommitFiles(path.name, (Part(path, path.name, path.stat().st_size, digest),),
                       Part(side, side.name, side.stat().st_size, None), digest)


def marker_identity(entry: str, marker: bytes) -> str | None:
    try:
        return parse_sidecar(marker, entry, entry + SIDECAR_SUFFIX).sha256
    except SidecarError:
        return None  # a malformed remote sidecar verifies nothing: a fresh upload replaces it


def remote_entries(folder: RemoteFolder, name_filter: Callable[[str], bool]) -> list[RemoteEntry]:
    listed = {e["Name"]: e.get("ModTime", "") for e in list_files(folder.folder, env=folder.env)}
    committed = [n for n in listed if name_filter(n) and n + SIDECAR_SUFFIX in listed]
    if not committed:
        return []
    progress = _progress_by_name(cat_matching(folder.folder, "*" + SIDECAR_SUFFIX, env=folder.env))
    return [RemoteEntry(n, listed[n], progress.get(n), "file") for n in committed]


def _progress_by_name(sidecars: bytes) -> dict[str, dict[str, int]]:
    """Split concatenated sidecars (each starts with its ``<hex>  <name>`` line) into name -> progress."""
    found: dict[str, dict[str, int]] = {}
    name, lines = None, []
    for line in sidecars.decode("utf-8", "replace").splitlines() + [""]:
        if line.startswith("#"):
            lines.append(line)
            continue
        if name is not None and (progress := sidecar_progress("\n".join(lines))) is not None:
            found[name] = progress
        parts = line.split(None, 1)
        name = parts[1].lstrip("*").replace("\\", "/").rsplit("/", 1)[-1] if len(parts) == 2 else None
        lines = []
    return found


def fetch(folder: RemoteFolder, entry: str, directory: Path, options: DownloadOptions) -> Path:
    return download(folder.source(entry), directory / entry, options)


def remote_parts(entry: str) -> RemoteParts:
    return RemoteParts(entry + SIDECAR_SUFFIX, (entry,))


__all__ = ["commit_files", "fetch", "marker_identity", "remote_entries", "remote_parts"]
