"""A run's folder in a bucket: list it, upload into it, move its marker, fetch its newest checkpoint.

Layout (``REMOTE:NAME/PATH_PREFIX<experiment>/``)::

    checkpoint_epoch_3.pth
    checkpoint_epoch_3.pth.sha256   uploaded after the data is confirmed remote
    checkpoint_epoch_4/             a sharded checkpoint: its files, each confirmed remote, then
        manifest.json               its manifest, uploaded last
    latest                          name of the newest checkpoint confirmed remote

A checkpoint counts as *committed remotely* when both its data file and its ``.sha256`` are
listed, and a sharded directory when its ``manifest.json`` is: the sidecar or manifest is the
remote commit marker, as the rename is the local one. A directory is fetched into a hidden temp
directory, every file checked against the manifest's size and sha256, then renamed into place. Everything
that reads or writes this layout — the background uploader, resume from the bucket,
``linnaeus-ckpt upload`` — goes through :class:`RemoteRun`, so the layout is defined here only.

Ordering is the local rule (:mod:`linnaeus.checkpoint.ordering`): most stored training progress
first, the ``latest`` marker breaking ties. The data is not downloaded to list it: each sidecar
carries the progress its file holds (a ``# linnaeus-progress`` comment line), and one rclone call
reads all of a folder's sidecars. Files whose sidecar has no such line (uploaded by hand, or by
an older linnaeus) rank below the others, among themselves by file name
(:func:`~linnaeus.checkpoint.ordering.progress_from_name`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .commit import read_latest, write_latest
from .errors import CheckpointCorruptError, CheckpointError, CheckpointNotFoundError
from .fsio import fsync_dir, pid_alive
from .ordering import default_name_filter, newest_first, progress_from_name
from .resolve import BucketConfig
from .sharded_manifest import MANIFEST, read_manifest, remove_tree, verify_all
from .sidecar import SidecarError, parse_sidecar, read_sidecar, sidecar_path, sidecar_progress
from .sources import DownloadOptions, RcloneSource, download
from .sources.base import TransientSourceError, redact
from .sources.download import lock_path_for, temp_path_for
from .sources.rclone import (
    cat_matching, copyto, list_files, move_within, rcat, rclone_args, run_rclone, run_rclone_bytes,
)

logger = logging.getLogger("linnaeus.checkpoint")

LATEST_MARKER = "latest"
SIDECAR_SUFFIX = ".sha256"
_LOCAL_HASHES = ("md5", "sha1", "sha256")  # remote hashes worth recomputing locally to verify
_MAX_MANIFEST = 64 << 20  # a manifest lists a few entries per rank: far below this


@dataclass(frozen=True)
class RemoteEntry:
    """A remotely committed checkpoint as a listing sees it (no data downloaded)."""

    name: str
    modtime: str
    progress: dict[str, int] | None  # from its sidecar's progress line; None for sidecars without one
    is_dir: bool = False  # a sharded checkpoint directory (committed by its manifest)

    @property
    def order_key(self) -> tuple[Any, ...]:
        # Stored progress as locally (step, epoch, position in the epoch); files whose sidecar
        # records none (uploaded by hand or by an older linnaeus) rank below, by their names.
        if self.progress is not None:
            p = self.progress
            return (1, p["step"], p.get("epoch", -1), p.get("epoch_step", 0))
        return (0, *progress_from_name(self.name, self.modtime))


class RemoteRun:
    """The folder holding one run's checkpoints in a bucket (an rclone path ending in ``/``).

    Build it with :meth:`in_bucket` from a bucket config and the run's name, or from any
    rclone folder string. Every method talks to the remote with the real rclone binary;
    nothing here ever deletes a remote object (``copyto``/``rcat`` only).
    """

    def __init__(self, folder: str, *, env: Mapping[str, str] | None = None) -> None:
        if not folder or ":" not in folder:
            raise ValueError(f"remote run folder {folder!r} is not an rclone path ('remote:bucket/prefix/').")
        self.folder = folder if folder.endswith((":", "/")) else folder + "/"
        # RCLONE_* defaults for every rclone child (an on-the-fly remote's settings, e.g. B2's credentials).
        self.env = dict(env or {})

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

    @property
    def display(self) -> str:
        return redact(self.folder)

    def source(self, name: str) -> RcloneSource:
        return RcloneSource(self.folder + name, env=self.env)

    # ------------------------------------------------------------------ reading
    def list(self, name_filter: Callable[[str], bool] = default_name_filter) -> list[str]:
        """File names of the remotely committed checkpoints (data + ``.sha256``), newest first."""
        return [e.name for e in newest_first(self._entries(name_filter))]

    def _entries(self, name_filter: Callable[[str], bool]) -> list[RemoteEntry]:
        listed = {e["Name"]: e.get("ModTime", "") for e in list_files(self.folder, env=self.env)}
        committed = [n for n in listed if name_filter(n) and n + SIDECAR_SUFFIX in listed]
        progress = _progress_by_name(cat_matching(self.folder, "*" + SIDECAR_SUFFIX, env=self.env)) if committed else {}
        return [RemoteEntry(n, listed[n], progress.get(n)) for n in committed] + self._dir_entries(name_filter)

    def _dir_entries(self, name_filter: Callable[[str], bool]) -> list[RemoteEntry]:
        """Sharded directories whose manifest is listed (a directory without one never committed).

        ``name_filter`` sees a directory as the file name it was saved under (``NAME.pth``)."""
        found = {}
        for e in self._lsjson(self.folder, "-R", "--max-depth", "2", "--include", "/*/" + MANIFEST):
            name = e.get("Path", "").split("/", 1)[0]
            if e.get("Path") == f"{name}/{MANIFEST}" and name_filter(name + ".pth"):
                found[name] = e.get("ModTime", "")
        if not found:
            return []
        # One rclone call reads every manifest; each names its directory in meta.file.
        progress: dict[str, dict[str, int]] = {}
        raw = run_rclone_bytes(rclone_args("cat", "--max-depth", "2", "--include", "/*/" + MANIFEST,
                                           paths=[self.folder]), env=self.env,
                               what=f"reading the manifests in {self.display}").decode("utf-8", "replace")
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
        return [RemoteEntry(n, mt, progress.get(n), is_dir=True) for n, mt in found.items()]

    def _lsjson(self, folder: str, *options: str) -> list[dict]:
        try:
            out = run_rclone(rclone_args("lsjson", "--files-only", *options, paths=[folder]), env=self.env,
                             what=f"listing {redact(folder)}")
        except TransientSourceError as e:
            if "not found" in str(e).lower():
                return []
            raise
        return json.loads(out)

    def is_committed_dir(self, name: str) -> bool:
        """Whether ``name/`` is a sharded checkpoint directory committed remotely (its manifest listed)."""
        listed = self._lsjson(self.folder + name + "/", "--include", "/" + MANIFEST)
        return any(e.get("Path") == MANIFEST for e in listed)

    def read_marker(self) -> str | None:
        """The name the remote ``latest`` marker holds, or None (absent or not a file name)."""
        data = self.source(LATEST_MARKER).read_small(4096)
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
        entries = self._entries(name_filter)
        marker = self.read_marker()
        if marker is not None and marker not in {e.name for e in entries}:
            logger.warning("Remote marker %s%s names %s, which is not committed remotely (data, .sha256 or "
                           "manifest missing); ordering by stored progress alone", self.display, LATEST_MARKER, marker)
        return list(newest_first(entries, marker))

    def newest(self) -> str | None:
        """rclone path of the newest remotely committed checkpoint, or None if there is none."""
        names = self.candidates()
        return self.folder + names[0] if names else None

    # ------------------------------------------------------------------ fetching
    def fetch(self, name: str, dest_dir: str | os.PathLike, options: DownloadOptions = DownloadOptions()) -> Path:
        """Download ``name`` into ``dest_dir`` with the safe download (lock, temp file, verified
        against the remote ``.sha256``, atomic rename, local sidecar); a committed sharded directory
        of that name with :meth:`fetch_dir`. Raises CheckpointNotFoundError when the folder has neither."""
        try:
            return download(self.source(name), Path(dest_dir) / name, options)
        except CheckpointNotFoundError:
            if not self.is_committed_dir(name):
                raise
        return self.fetch_dir(name, dest_dir, options)

    def fetch_dir(self, name: str, dest_dir: str | os.PathLike, options: DownloadOptions = DownloadOptions()) -> Path:
        """Download the sharded checkpoint directory ``name`` into ``dest_dir/name`` as the safe
        download does a file: under the file lock ``.<name>.lock`` (one process per machine
        transfers, the others wait and find it in place), into a hidden temp directory, every file
        checked against the remote manifest's size and sha256, then one rename into place.

        Raises CheckpointNotFoundError (no manifest: not committed remotely) or
        CheckpointCorruptError naming the remote file whose bytes do not match, after
        ``options.retries`` attempts."""
        from filelock import FileLock

        dest = Path(dest_dir).absolute() / name
        if dest.exists():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_path_for(dest), timeout=options.lock_timeout_s):
            if dest.exists():  # another process of this machine fetched it while we waited
                return dest
            _remove_stale_temp_dirs(dest, options.stale_temp_hours)
            for attempt in range(1, options.retries + 1):
                try:
                    return self._fetch_dir_once(name, dest)
                except (TransientSourceError, CheckpointCorruptError) as e:
                    if attempt == options.retries:
                        raise
                    wait = min(options.backoff_s * 2 ** (attempt - 1), options.max_backoff_s)
                    logger.warning("Download of %s%s/ failed (attempt %d/%d): %s; retrying in %.1f s", self.display,
                                   name, attempt, options.retries, e, wait)
                    time.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _fetch_dir_once(self, name: str, dest: Path) -> Path:
        remote_dir = self.folder + name + "/"
        raw = self.source(f"{name}/{MANIFEST}").read_small(_MAX_MANIFEST)
        if raw is None:
            raise CheckpointNotFoundError(f"{self.display}{name}/{MANIFEST}: no such object (the directory is not "
                                          "committed remotely).")
        tmp = temp_path_for(dest)
        started = time.monotonic()
        try:
            tmp.mkdir()
            (tmp / MANIFEST).write_bytes(raw)
            manifest, _ = read_manifest(tmp)
            args = rclone_args("copy", "--max-depth", "1", "--exclude", "/" + MANIFEST, paths=[remote_dir, str(tmp)])
            run_rclone(args, env=self.env, what=f"downloading {redact(remote_dir)} to {tmp}")
            try:
                verify_all(tmp, manifest)
            except CheckpointCorruptError as e:
                raise CheckpointCorruptError(f"{self.display}{name}/{e.path.name}", e.reason) from None
            for entry in os.scandir(tmp):
                if entry.name not in manifest["files"] and entry.name != MANIFEST:
                    os.unlink(entry.path)  # not part of the commit (a leftover of an interrupted upload)
                    continue
                fd = os.open(entry.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_dir(tmp)
            os.rename(tmp, dest)
            fsync_dir(dest.parent)
        finally:
            if tmp.exists():
                remove_tree(tmp)
        size = sum(int(e["size"]) for e in manifest["files"].values())
        logger.info("Downloaded %s%s/ -> %s (%d files, %.1f MB in %.1f s, each verified against its manifest)",
                    self.display, name, dest, len(manifest["files"]) + 1, size / 1e6, time.monotonic() - started)
        return dest

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
                path = self.fetch_dir(name, dest, options) if entry.is_dir else self.fetch(name, dest, options)
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
        """Upload one committed checkpoint (data, then ``.sha256``; a sharded directory's files,
        then its manifest) and verify the remote copy.

        Returns False when the remote already held an identical copy (nothing transferred).
        Raises CheckpointError (TransientSourceError for what a retry may fix); never deletes.
        """
        path = Path(local)
        if path.is_dir():
            return self._upload_dir(path)
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
        size = path.stat().st_size
        target = self.source(path.name)
        if _remote_matches(target, size, digest):
            return False
        copyto(path, target.path, env=self.env)
        _verify_remote_data(target, path, size)
        copyto(sidecar_path(path), target.sibling(SIDECAR_SUFFIX).path, env=self.env)
        remote_sidecar = target.sibling(SIDECAR_SUFFIX).read_small()
        if remote_sidecar is None or _remote_digest(remote_sidecar, target) != digest:
            raise TransientSourceError(f"{target.display}.sha256: read back does not match the local sidecar.")
        return True

    def _upload_dir(self, path: Path) -> bool:
        """A sharded checkpoint: every file the manifest lists, each checked remote (size, and the
        hash the remote reports), then the manifest, read back: from then on it is committed remotely."""
        manifest, digest = read_manifest(path)  # a directory without a manifest never committed
        verify_all(path, manifest)  # upload only bytes the manifest vouches for
        remote_dir = self.folder + path.name + "/"
        if self._dir_matches(remote_dir, manifest, digest):
            return False
        for name in sorted(manifest["files"]):
            copyto(path / name, remote_dir + name, env=self.env)
        listed = {e["Path"]: e for e in self._lsjson(remote_dir, "--hash")}
        for name, entry in sorted(manifest["files"].items()):
            _check_listed(listed.get(name), path / name, entry, self.display + path.name + "/" + name)
        copyto(path / MANIFEST, remote_dir + MANIFEST, env=self.env)
        back = self.source(f"{path.name}/{MANIFEST}").read_small(_MAX_MANIFEST)
        if back is None or hashlib.sha256(back).hexdigest() != digest:
            raise TransientSourceError(f"{self.display}{path.name}/{MANIFEST}: read back does not match the local "
                                       "manifest.")
        return True

    def _dir_matches(self, remote_dir: str, manifest: dict[str, Any], digest: str) -> bool:
        back = RcloneSource(remote_dir + MANIFEST, env=self.env).read_small(_MAX_MANIFEST)
        if back is None or hashlib.sha256(back).hexdigest() != digest:
            return False
        sizes = {e["Path"]: e.get("Size") for e in self._lsjson(remote_dir)}
        return all(sizes.get(n) == e["size"] for n, e in manifest["files"].items())

    def move_aside(self, names: list[str], folder_name: str) -> str:
        """Move committed checkpoints of this folder into the sub-folder ``folder_name``, the way the
        local directory sets an abandoned timeline aside; returns the sub-folder's rclone path.

        Nothing is deleted: each object is copied server-side before its source goes. The sidecar
        moves first, so the data left behind for a moment is uncommitted, never a stale commit.
        """
        dest = self.folder + folder_name.strip("/") + "/"
        dirs = {e.name for e in self._dir_entries(lambda _: True)}
        for name in names:
            if name in dirs:  # the manifest (commit marker) first, then the rest of the directory
                move_within(f"{self.folder}{name}/{MANIFEST}", f"{dest}{name}/{MANIFEST}", env=self.env)
                move_within(self.folder + name, dest + name, env=self.env)
                continue
            move_within(self.folder + name + SIDECAR_SUFFIX, dest + name + SIDECAR_SUFFIX, env=self.env)
            move_within(self.folder + name, dest + name, env=self.env)
        return dest

    def entries_after(self, step: int) -> list[str]:
        """Committed checkpoints whose sidecar records more progress than ``step`` (files whose
        sidecar records none cannot be placed on a timeline and are left alone)."""
        return [e.name for e in self._entries(default_name_filter) if e.progress and e.progress["step"] > step]

    def write_marker(self, name: str) -> None:
        """Point the remote ``latest`` at ``name`` (the caller makes sure it is committed remotely)."""
        rcat((name + "\n").encode(), self.folder + LATEST_MARKER, env=self.env)


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


def _remove_stale_temp_dirs(dest: Path, max_age_hours: float) -> None:
    """Remove the temp directories of killed downloads of ``dest`` (caller holds its lock): their
    writer (host and pid in the name, as :func:`temp_path_for` writes them) is this host and gone,
    or they have not changed for ``max_age_hours`` (another host, a recycled pid)."""
    suffix = ".partial"
    stem, host, _, _ = temp_path_for(dest).name[: -len(suffix)].rsplit(".", 3)  # .<name>.<host>.<pid>.<rand>
    prefix = stem + "."
    for entry in os.scandir(dest.parent):
        if not (entry.name.startswith(prefix) and entry.name.endswith(suffix)):
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue  # a file download's temp: cleanup_stale_temps handles those
        parts = entry.name[len(prefix): -len(suffix)].split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        age_h = (time.time() - entry.stat(follow_symlinks=False).st_mtime) / 3600
        if (parts[0] == host and not pid_alive(int(parts[1]))) or age_h > max_age_hours:
            remove_tree(entry.path)
            logger.info("Removed the temp directory of an interrupted download: %s", entry.path)


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _check_listed(listed: dict | None, local: Path, entry: dict[str, Any], shown: str) -> None:
    """A just-uploaded file of a directory, as the remote lists it: the manifest's size, and the
    remote's hash (where it reports one) equal to the local file's."""
    if listed is None or listed.get("Size") != entry["size"]:
        found = "nothing" if listed is None else f"{listed.get('Size')} bytes"
        raise TransientSourceError(f"{shown}: after upload the remote holds {found}, expected {entry['size']} bytes.")
    hashes = {k.lower(): v.lower() for k, v in (listed.get("Hashes") or {}).items() if v}
    algo = next((a for a in _LOCAL_HASHES if hashes.get(a)), None)
    if algo is None:
        return  # size only: this remote reports no hash we can recompute
    if algo == "sha256":
        local_digest = entry["sha256"]
    else:
        with open(local, "rb") as f:
            local_digest = hashlib.file_digest(f, algo).hexdigest()
    if local_digest != hashes[algo]:
        raise TransientSourceError(f"{shown}: remote {algo} {hashes[algo]} != local {local_digest}.")


def _remote_matches(target: RcloneSource, size: int, digest: str) -> bool:
    data = target.sibling(SIDECAR_SUFFIX).read_small()
    if data is None:
        return False
    remote_digest = _remote_digest(data, target)
    if remote_digest is None:
        return False  # a malformed remote sidecar is simply overwritten by a fresh upload
    info = target.stat()
    return remote_digest == digest and info is not None and info.size == size


def _remote_digest(sidecar: bytes, target: RcloneSource) -> str | None:
    try:
        return parse_sidecar(sidecar, target.name, target.display + SIDECAR_SUFFIX).sha256
    except SidecarError:
        return None


def _verify_remote_data(target: RcloneSource, path: Path, size: int) -> None:
    info = target.stat(with_hashes=True)
    if info is None or info.size != size:
        found = "nothing" if info is None else f"{info.size} bytes"
        raise TransientSourceError(f"{target.display}: after upload the remote holds {found}, expected {size} bytes.")
    algo = next((a for a in _LOCAL_HASHES if info.hashes.get(a)), None)
    if algo is None:
        return  # size only: this remote reports no hash we can recompute (rclone checked what it could)
    with open(path, "rb") as f:
        local = hashlib.file_digest(f, algo).hexdigest()
    if local != info.hashes[algo].lower():
        raise TransientSourceError(f"{target.display}: remote {algo} {info.hashes[algo]} != local {local}.")


__all__ = ["LATEST_MARKER", "RemoteRun"]
