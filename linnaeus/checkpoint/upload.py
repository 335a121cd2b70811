"""Background upload of a run's committed checkpoints to ``REMOTE:NAME/PATH_PREFIX<experiment>/``.

Per committed checkpoint, in commit order, on one worker thread:

1. skip if the remote already holds it (same size and the same ``.sha256`` content);
2. ``rclone copyto`` the data file, then check the remote size and, where the remote
   reports one, its md5/sha1 against the local file;
3. ``rclone copyto`` the ``.sha256`` sidecar and read it back — from now on the checkpoint
   is *committed remotely* and :meth:`BackgroundUploader.is_confirmed` says so;
4. upload the ``latest`` marker, but only naming a checkpoint that is confirmed remote.

Failures are retried with exponential backoff; after the last attempt the failure is logged
and kept, and :meth:`~BackgroundUploader.poll` (and :meth:`~BackgroundUploader.close`) raise
:class:`UploadError` for it — nothing is silently lost, and an unconfirmed checkpoint is never
reported deletable. Nothing is ever deleted remotely (``copyto`` only, no ``sync``).

Plugging into the checkpoint manager::

    uploader = BackgroundUploader(cfg.ENV.OUTPUT.BUCKET, cfg.EXPERIMENT.NAME)
    uploader.enqueue_existing(ckpt_dir)        # after a relaunch: finish what the last run did not
    manager = CheckpointManager(..., on_commit=uploader.on_commit, can_delete=uploader.can_delete)
    ... train; call uploader.poll() now and then to surface failures ...
    uploader.close()                           # waits for pending uploads; raises if any failed
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from linnaeus.checkpoint.errors import CheckpointError
from linnaeus.checkpoint.hashing import read_sidecar, sidecar_path
from linnaeus.checkpoint.remote import LATEST_MARKER, default_name_filter, run_folder
from linnaeus.checkpoint.resolve import BucketConfig
from linnaeus.checkpoint.sources.base import TransientSourceError, redact
from linnaeus.checkpoint.sources.download import parse_sha256_sidecar
from linnaeus.checkpoint.sources.rclone import RcloneSource, copyto, rcat
from linnaeus.checkpoint.store import read_latest

logger = logging.getLogger(__name__)

_LOCAL_HASHES = ("md5", "sha1", "sha256")  # remote hashes worth recomputing locally to verify


class UploadError(CheckpointError):
    """One or more checkpoint uploads failed after all retries; the local files are kept."""


def upload_checkpoint(local: str | os.PathLike, remote_folder: str) -> bool:
    """Upload one committed checkpoint (data, then ``.sha256``) into ``remote_folder`` and verify.

    Returns False if the remote already held an identical copy (nothing transferred).
    Raises CheckpointError/TransientSourceError on failure; never deletes anything.
    """
    path = Path(local)
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
    target = RcloneSource(remote_folder + path.name)
    if _remote_matches(target, size, digest):
        return False
    copyto(path, target.path)
    _verify_remote_data(target, path, size)
    copyto(sidecar_path(path), target.sibling(".sha256").path)
    remote_digest = target.sibling(".sha256").read_small()
    if remote_digest is None or parse_sha256_sidecar(remote_digest, target.display + ".sha256", path.name) != digest:
        raise TransientSourceError(f"{target.display}.sha256: read back does not match the local sidecar.")
    return True


def _remote_matches(target: RcloneSource, size: int, digest: str) -> bool:
    data = target.sibling(".sha256").read_small()
    if data is None:
        return False
    try:
        remote_digest = parse_sha256_sidecar(data, target.display + ".sha256", target.name)
    except CheckpointError:
        return False  # a malformed remote sidecar is simply overwritten by a fresh upload
    info = target.stat()
    return remote_digest == digest and info is not None and info.size == size


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


class BackgroundUploader:
    """Uploads each committed checkpoint of a run on a worker thread (see the module docstring).

    Args:
        remote_spec: ``ENV.OUTPUT.BUCKET`` (yacs node / dict / BucketConfig; ENABLED is not
            consulted) or an rclone folder string ``remote:bucket/prefix/``.
        experiment: run name; uploads go to ``<folder><experiment>/``.
        retries: attempts per checkpoint before the failure is reported.
        backoff_s / max_backoff_s: exponential backoff between attempts.
    """

    def __init__(
        self,
        remote_spec: BucketConfig | Mapping[str, Any] | str,
        experiment: str,
        *,
        retries: int = 5,
        backoff_s: float = 2.0,
        max_backoff_s: float = 120.0,
    ) -> None:
        if isinstance(remote_spec, str):
            self.folder = remote_spec.rstrip("/") + "/" + experiment.strip("/") + "/"
        else:
            spec = BucketConfig.from_any(remote_spec)
            self.folder = run_folder(spec, experiment)
        if retries < 1:
            raise ValueError(f"retries must be >= 1, got {retries}.")
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._confirmed: set[Path] = set()
        self._failures: list[tuple[Path, str]] = []
        self._reported = 0
        self._pending = 0
        self._marker: str | None = None
        self._newest: Path | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="linnaeus-uploader", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ manager hooks
    def on_commit(self, path: str | os.PathLike, *, full: bool = True) -> None:
        """Queue a just-committed checkpoint (``CheckpointManager(on_commit=...)``).

        ``full=False`` for weights-only files: they are uploaded like any other, but the remote
        ``latest`` never falls back to naming one, since it must name something to resume from.
        """
        p = Path(path).absolute()
        with self._cond:
            if self._closed:
                raise CheckpointError(f"uploader for {self.display} is closed; cannot queue {p}.")
            self._pending += 1
            if full:
                self._newest = p
        self._queue.put(p)

    def can_delete(self, path: str | os.PathLike) -> bool:
        """Retention hook: a local checkpoint may go only once its upload is confirmed."""
        return self.is_confirmed(path)

    def is_confirmed(self, path: str | os.PathLike) -> bool:
        with self._cond:
            return Path(path).absolute() in self._confirmed

    def enqueue_existing(self, checkpoints_dir: str | os.PathLike) -> int:
        """Queue every committed local checkpoint (oldest first); ones already remote are only
        confirmed, not re-sent. Use after a relaunch. Returns how many were queued."""
        from linnaeus.checkpoint.remote import checkpoint_sort_key

        directory = Path(checkpoints_dir)
        names = [
            p.name
            for p in directory.iterdir()
            if p.is_file() and default_name_filter(p.name) and sidecar_path(p).is_file()
        ] if directory.is_dir() else []
        latest = read_latest(directory)
        names.sort(key=lambda n: (n == latest, checkpoint_sort_key(n)))
        for n in names:
            self.on_commit(directory / n)
        return len(names)

    # ------------------------------------------------------------------ status
    @property
    def display(self) -> str:
        return redact(self.folder)

    def poll(self) -> None:
        """Raise :class:`UploadError` for failures not reported yet (each is reported once)."""
        with self._cond:
            new = self._failures[self._reported :]
            self._reported = len(self._failures)
        if new:
            lines = "\n".join(f"  - {p}: {err}" for p, err in new)
            raise UploadError(
                f"{len(new)} checkpoint upload(s) to {self.display} failed after {self.retries} attempts; "
                f"the local files are kept (not deletable):\n{lines}\n"
                "Fix the remote, then upload them with `linnaeus-ckpt upload` or tools/scripts/upload_checkpoints.sh."
            )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued upload has finished (confirmed or failed); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Finish pending uploads (up to ``timeout``), stop the worker, raise pending failures."""
        with self._cond:
            self._closed = True
        finished = self.wait(timeout)
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=5 if finished else 0.1)
        if not finished:
            with self._cond:
                left = self._pending
            raise UploadError(
                f"{left} checkpoint upload(s) to {self.display} still pending after {timeout} s; the local "
                "files are kept. Upload them later with `linnaeus-ckpt upload`."
            )
        self.poll()

    def __enter__(self) -> "BackgroundUploader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            path = self._queue.get()
            if path is None:
                return
            try:
                self._upload_with_retries(path)
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def _upload_with_retries(self, path: Path) -> None:
        for attempt in range(1, self.retries + 1):
            try:
                sent = upload_checkpoint(path, self.folder)
                with self._cond:
                    self._confirmed.add(path)
                self._update_marker(path)
                logger.info("%s checkpoint %s -> %s%s", "Uploaded" if sent else "Already remote:", path, self.display, path.name)
                return
            except CheckpointError as e:
                error = str(e)
            if attempt < self.retries:
                wait = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
                logger.warning("Upload of %s failed (attempt %d/%d): %s; retrying in %.1f s", path, attempt, self.retries, error, wait)
                if self._stop.wait(wait):
                    break
        logger.error("Upload of %s to %s failed after %d attempts: %s", path, self.display, attempt, error)
        with self._cond:
            self._failures.append((path, error))

    def _update_marker(self, confirmed: Path) -> None:
        """Point the remote ``latest`` at the newest checkpoint that is confirmed remote."""
        wanted = read_latest(confirmed.parent)
        with self._cond:
            newest = self._newest
            target = confirmed.parent / wanted if wanted else newest
            if target is None or target not in self._confirmed or target.name == self._marker:
                return
        rcat((target.name + "\n").encode(), self.folder + LATEST_MARKER)
        with self._cond:
            self._marker = target.name
