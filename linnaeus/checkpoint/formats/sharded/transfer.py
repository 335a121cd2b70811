"""A sharded checkpoint in a bucket folder: ``<name>/`` with every file its manifest lists, and
``<name>/manifest.json``, the marker, uploaded last.

A fetch downloads the directory as the safe download does a file: under the file lock
``.<name>.lock`` (one process per machine transfers, the others wait and find it in place), into a
hidden temp directory, every file checked against the remote manifest's size and digest, then one
rename into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

from filelock import FileLock

from ...disk import fsync_dir, fsync_file, pid_alive, remove_tree
from ...errors import CheckpointCorruptError, CheckpointNotFoundError
from ...sources import (
    DownloadOptions,
    TransientSourceError,
    lock_path_for,
    rclone_args,
    redact,
    run_rclone,
    run_rclone_bytes,
    temp_path_for,
)
from ..base import CommitFiles, Part, RemoteEntry, RemoteParts
from ..folder import RemoteFolder
from .bucket_parts import node_local_commit_files
from .manifest import MANIFEST, is_node_local, read_manifest, verify_all

logger = logging.getLogger("linnaeus.checkpoint")


def commit_files(path: Path) -> CommitFiles:
    """Every file the manifest lists (verified: only bytes the manifest vouches for leave), then the manifest."""
    manifest, digest = read_manifest(path)  # a directory without a manifest never committed
    if is_node_local(manifest):  # each node uploads its own part (:mod:`.bucket_parts`), checked there
        return node_local_commit_files(path, manifest, digest)
    verify_all(path, manifest)
    parts = tuple(Part(path / name, f"{path.name}/{name}", int(entry["size"]), entry["sha256"])
                  for name, entry in sorted(manifest["files"].items()))
    marker = path / MANIFEST
    return CommitFiles(path.name, parts, Part(marker, f"{path.name}/{MANIFEST}", marker.stat().st_size, digest),
                       digest)


def marker_identity(entry: str, marker: bytes) -> str | None:
    return hashlib.sha256(marker).hexdigest()


def remote_entries(folder: RemoteFolder, name_filter: Callable[[str], bool]) -> list[RemoteEntry]:
    """Directories whose manifest is listed; ``name_filter`` sees one as the file name it was saved
    under (``NAME.pth``)."""
    found = {}
    for e in folder.lsjson("", "-R", "--max-depth", "2", "--include", "/*/" + MANIFEST):
        name = e.get("Path", "").split("/", 1)[0]
        if e.get("Path") == f"{name}/{MANIFEST}" and name_filter(name + ".pth"):
            found[name] = e.get("ModTime", "")
    if not found:
        return []
    # One rclone call reads every manifest; each names its directory in meta.file.
    progress: dict[str, dict[str, int]] = {}
    raw = run_rclone_bytes(rclone_args("cat", "--max-depth", "2", "--include", "/*/" + MANIFEST,
                                       paths=[folder.folder]), env=folder.env,
                           what=f"reading the manifests in {folder.display}").decode("utf-8", "replace")
    decoder, at = json.JSONDecoder(), 0
    while (at := _skip_space(raw, at)) < len(raw):
        try:
            manifest, at = decoder.raw_decode(raw, at)
        except json.JSONDecodeError:
            break  # a damaged manifest: the ones after it rank by name; fetching it fails with the reason
        try:
            p = manifest["progress"]
            progress[str(manifest["meta"]["file"])] = {k: int(p[k]) for k in ("step", "epoch", "epoch_step")}
        except (KeyError, TypeError, ValueError):
            continue
    return [RemoteEntry(n, mt, progress.get(n), "sharded") for n, mt in found.items()]


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def fetch(folder: RemoteFolder, entry: str, directory: Path, options: DownloadOptions) -> Path:
    """Raises CheckpointNotFoundError (no manifest: not committed remotely) or CheckpointCorruptError
    naming the remote file whose bytes do not match, after ``options.retries`` attempts."""
    dest = Path(directory).absolute() / entry
    if dest.exists():
        return dest
    if folder.read(f"{entry}/{MANIFEST}") is None:
        raise CheckpointNotFoundError(f"{folder.display}{entry}/{MANIFEST}: no such object (the directory is not "
                                      "committed remotely).")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path_for(dest), timeout=options.lock_timeout_s):
        if dest.exists():  # another process of this machine fetched it while we waited
            return dest
        _remove_stale_temp_dirs(dest, options.stale_temp_hours)
        for attempt in range(1, options.retries + 1):
            try:
                return _fetch_once(folder, entry, dest)
            except (TransientSourceError, CheckpointCorruptError) as e:
                if attempt == options.retries:
                    raise
                wait = min(options.backoff_s * 2 ** (attempt - 1), options.max_backoff_s)
                logger.warning("Download of %s%s/ failed (attempt %d/%d): %s; retrying in %.1f s", folder.display,
                               entry, attempt, options.retries, e, wait)
                time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises


def _fetch_once(folder: RemoteFolder, entry: str, dest: Path) -> Path:
    remote_dir = folder.folder + entry + "/"
    raw = folder.read(f"{entry}/{MANIFEST}")
    if raw is None:
        raise CheckpointNotFoundError(f"{folder.display}{entry}/{MANIFEST}: no such object (the directory is not "
                                      "committed remotely).")
    tmp = temp_path_for(dest)
    started = time.monotonic()
    try:
        tmp.mkdir()
        (tmp / MANIFEST).write_bytes(raw)
        manifest, _ = read_manifest(tmp)
        # Neither the manifest (read above) nor the nodes' upload confirmations (.part.*.json) come down.
        args = rclone_args("copy", "--max-depth", "1", "--exclude", "/" + MANIFEST, "--exclude", "/.part.*.json",
                           paths=[remote_dir, str(tmp)])
        run_rclone(args, env=folder.env, what=f"downloading {redact(remote_dir)} to {tmp}")
        try:
            verify_all(tmp, manifest)
        except CheckpointCorruptError as e:
            raise CheckpointCorruptError(f"{folder.display}{entry}/{e.path.name}", e.reason) from None
        for item in os.scandir(tmp):
            if item.name not in manifest["files"] and item.name != MANIFEST:
                os.unlink(item.path)  # not part of the commit (a leftover of an interrupted upload)
                continue
            fsync_file(item.path)
        fsync_dir(tmp)
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            remove_tree(tmp)
    size = sum(int(e["size"]) for e in manifest["files"].values())
    logger.info("Downloaded %s%s/ -> %s (%d files, %.1f MB in %.1f s, each verified against its manifest)",
                folder.display, entry, dest, len(manifest["files"]) + 1, size / 1e6, time.monotonic() - started)
    return dest


def _remove_stale_temp_dirs(dest: Path, max_age_hours: float) -> None:
    """Remove the temp directories of killed downloads of ``dest`` (caller holds its lock): their
    writer (host and pid in the name, as :func:`temp_path_for` writes them) is this host and gone,
    or they have not changed for ``max_age_hours`` (another host, a recycled pid)."""
    suffix = ".partial"
    stem, host, _, _ = temp_path_for(dest).name[: -len(suffix)].rsplit(".", 3)  # .<name>.<host>.<pid>.<rand>
    prefix = stem + "."
    for item in os.scandir(dest.parent):
        if not (item.name.startswith(prefix) and item.name.endswith(suffix)):
            continue
        if not item.is_dir(follow_symlinks=False):
            continue  # a file download's temp: sources.cleanup_stale_temps handles those
        parts = item.name[len(prefix): -len(suffix)].split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        age_h = (time.time() - item.stat(follow_symlinks=False).st_mtime) / 3600
        if (parts[0] == host and not pid_alive(int(parts[1]))) or age_h > max_age_hours:
            remove_tree(item.path)
            logger.info("Removed the temp directory of an interrupted download: %s", item.path)


def remote_parts(entry: str) -> RemoteParts:
    return RemoteParts(f"{entry}/{MANIFEST}", (f"{entry}/",))


__all__ = ["commit_files", "fetch", "marker_identity", "remote_entries", "remote_parts"]
