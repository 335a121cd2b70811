"""The one verified upload of a committed checkpoint into a bucket folder, whatever its format.

An upload sends a checkpoint's files in its commit order (:meth:`CheckpointFormat.commit_files`):
the payload, each checked remote (size, and the hash the remote reports where it reports one),
then the marker, read back. The marker's presence is the remote commit: a copy interrupted
before it is never listed, fetched or resumed from. Nothing here deletes a remote object, and a
committed checkpoint of another identity under the same name is never replaced.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BucketConflictError
from ..sources import TransientSourceError, copyto
from .base import CheckpointFormat, CommitFiles, Part
from .folder import RemoteFolder, check_listed


def upload_entry(fmt: CheckpointFormat, path: Path, folder: RemoteFolder) -> bool:
    """Upload the committed checkpoint ``path`` into ``folder`` and verify the remote copy; False when
    the folder already held an identical copy (nothing transferred). Raises CheckpointError
    (TransientSourceError for what a retry may fix)."""
    files = fmt.commit_files(path)
    if _already_there(fmt, files, folder, path):
        return False
    for part in files.parts:
        copyto(part.local, folder.folder + part.remote, env=folder.env)
    listed = _listing(files, folder)
    for part in files.parts:
        check_remote_copy(listed.get(part.remote), part, folder.display + part.remote)
    if files.before_marker is not None:
        files.before_marker(folder)
    copyto(files.marker.local, folder.folder + files.marker.remote, env=folder.env)
    back = folder.read(files.marker.remote)
    if back is None or fmt.marker_identity(files.entry, back) != files.identity:
        raise TransientSourceError(f"{folder.display}{files.marker.remote}: read back does not match the local "
                                   f"{files.marker.local.name}.")
    return True


def _already_there(fmt: CheckpointFormat, files: CommitFiles, folder: RemoteFolder, path: Path) -> bool:
    marker = folder.read(files.marker.remote)
    remote = None if marker is None else fmt.marker_identity(files.entry, marker)
    if remote is None:
        return False  # absent or malformed (commits nothing): a fresh upload goes there
    if remote != files.identity:
        # Names are unique per progress (templates hold {epoch} or {step}): another identity under this
        # name is another run's, or another timeline's, and replacing it would lose it.
        raise BucketConflictError(
            f"refusing to upload {path} to {folder.display}{files.entry}: the "
            f"folder already holds a committed checkpoint of that name with another identity ({remote} there, "
            f"{files.identity} here). Another run writes this bucket folder (one EXPERIMENT.NAME for two runs?), "
            "or this one restarted without setting that timeline aside. Nothing was replaced and the local "
            "checkpoint is kept. Give one run its own EXPERIMENT.NAME, or set the folder's checkpoints aside "
            "(`linnaeus-ckpt set-aside`).")
    listed = _listing(files, folder, hashes=False)
    return all(listed.get(p.remote, {}).get("Size") == p.size for p in files.parts)


def _listing(files: CommitFiles, folder: RemoteFolder, *, hashes: bool = True) -> dict[str, dict]:
    """The remote entries of ``files``' parts by their relative path: one listing of a directory's,
    a stat of a single file (names never become rclone options, not even filter patterns)."""
    top, nested = files.parts[0].remote.split("/", 1)[0], "/" in files.parts[0].remote
    if nested:
        return {f"{top}/{e['Path']}": e for e in folder.lsjson(top + "/", *(["--hash"] if hashes else []))}
    listed = {}
    for part in files.parts:
        info = folder.source(part.remote).stat(with_hashes=hashes)
        if info is not None:
            listed[part.remote] = {"Size": info.size, "Hashes": info.hashes}
    return listed


def check_remote_copy(listed: dict | None, part: Part, shown: str) -> None:
    """A just-uploaded file as the remote lists it: ``part``'s size, and the remote's hash (where it
    reports one we can recompute) equal to the local file's."""
    check_listed(listed, part.local, part.size, part.sha256, shown)



__all__ = ["check_remote_copy", "upload_entry"]
