"""Background upload of a run's committed checkpoints into its :class:`~linnaeus.checkpoint.remote.RemoteRun`.

Per committed checkpoint, in commit order, on one worker thread (:meth:`RemoteRun.upload`):

1. skip if the remote already holds it (its marker records the same checkpoint, every file
   its size);
2. ``rclone copyto`` each of its files (a single file's data; every file a sharded directory's
   manifest lists), then check the remote sizes and, where the remote reports one, the hashes
   against the local files;
3. ``rclone copyto`` its marker (the ``.sha256`` sidecar; the ``manifest.json``) and read it
   back — from now on the checkpoint is *committed remotely* and
   :meth:`BackgroundUploader.is_confirmed` (so :meth:`~BackgroundUploader.can_delete`) says so;
4. move the remote ``latest`` marker, but only to a checkpoint that is confirmed remote.

Failures of any kind are retried with exponential backoff. After the last attempt, by the
uploader's ``on_failure`` policy:

- ``"stop"`` (the default): the failure is logged and kept, and :meth:`~BackgroundUploader.poll`
  (and :meth:`~BackgroundUploader.close`) raise :class:`UploadError` for it;
- ``"warn"``: training goes on. The failure is logged once, with how many checkpoints (and bytes)
  are not uploaded yet, and the checkpoint is tried again every ``retry_after_s`` in the background,
  in commit order, for as long as the run lasts. Once the run closes the uploader, they get
  ``final_wait_s`` more; what is still not uploaded then is raised by :meth:`close`.

Either way nothing is silently lost: an unconfirmed checkpoint is never reported deletable (so the
local disk holds at most the unconfirmed checkpoints on top of what retention keeps), and no error
can stop the worker with uploads still queued. Nothing is ever deleted remotely.

Plugging into the checkpoint manager::

    uploader = BackgroundUploader(RemoteRun.in_bucket(bucket_cfg, experiment))
    uploader.enqueue_existing(ckpt_dir)        # after a relaunch: finish what the last launch did not
    manager = CheckpointManager(..., on_commit=uploader.on_commit, can_delete=uploader.can_delete)
    ... train; call uploader.poll() now and then to surface failures ...
    uploader.close()                           # waits for pending uploads; raises if any failed
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Collection

from ..errors import BucketConflictError, CheckpointError
from ..formats import read_info, read_latest
from ..ordering import oldest_first
from ..state import KIND_FULL
from ..store import list_checkpoints
from .folder import RemoteRun
from .lease import BucketLease

logger = logging.getLogger("linnaeus.checkpoint")


class UploadError(CheckpointError):
    """One or more checkpoint uploads failed after all retries; the local files are kept."""


class BackgroundUploader:
    """Uploads each committed checkpoint of a run on a worker thread (see the module docstring).

    Args:
        remote: the run's folder in the bucket.
        retries: attempts per checkpoint before the failure is reported.
        backoff_s / max_backoff_s: exponential backoff between attempts.
        on_failure: ``"stop"`` (raise from poll/close) or ``"warn"`` (log, retry in the background).
        retry_after_s / final_wait_s: ``"warn"``: the pause between background retries, and how long
            :meth:`close` waits for them before it raises.
    """

    def __init__(self, remote: RemoteRun, *, retries: int = 5, backoff_s: float = 2.0,
                 max_backoff_s: float = 120.0, lease: BucketLease | None = None, on_failure: str = "stop",
                 retry_after_s: float = 120.0, final_wait_s: float = 900.0) -> None:
        if retries < 1:
            raise ValueError(f"retries must be >= 1, got {retries}.")
        if on_failure not in ("stop", "warn"):
            raise ValueError(f"on_failure must be 'stop' or 'warn', got {on_failure!r}.")
        self.on_failure, self.retry_after_s, self.final_wait_s = on_failure, retry_after_s, final_wait_s
        self._deferred: list[Path] = []  # "warn": failed after every attempt, tried again later, in commit order
        self._closing_since: float | None = None
        self.remote = remote
        self.noun = "checkpoint"  # in the log lines: what one upload sends
        self.lease = lease  # checked before every upload: a launch that lost the folder uploads nothing more
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._confirmed: set[Path] = set()
        self._held: set[Path] = set()  # committed, skipped by the upload interval: deletable, not uploaded
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

    def hold_back(self, path: str | os.PathLike) -> None:
        """A just-committed checkpoint that uploads skip (they follow their own interval:
        :class:`~.cadence.UploadCadence`): retention may delete it; :meth:`release` sends it after all."""
        with self._cond:
            self._held.add(Path(path).absolute())

    def release(self, path: str | os.PathLike) -> None:
        """Queue a held-back checkpoint after all (the run's last one, at its end)."""
        p = Path(path).absolute()
        with self._cond:
            if p not in self._held:
                return
            self._held.discard(p)
        self.on_commit(p)

    def can_delete(self, path: str | os.PathLike) -> bool:
        """Retention hook: a local checkpoint may go only once its upload is confirmed, or when it is
        held back from uploads."""
        p = Path(path).absolute()
        with self._cond:
            return p in self._confirmed or p in self._held

    def is_confirmed(self, path: str | os.PathLike) -> bool:
        with self._cond:
            return Path(path).absolute() in self._confirmed

    def enqueue_existing(self, checkpoints_dir: str | os.PathLike, skip: Collection[str] = ()) -> int:
        """Queue every committed checkpoint in ``checkpoints_dir``, in commit order (the one
        ``latest`` names last). Ones already remote are only confirmed, not re-sent.

        The way a relaunch finishes what the last launch did not upload; it also lets
        retention delete an earlier launch's files once they are confirmed remote (confirmation
        lives in this object's memory). ``skip``: names never to upload (sharded checkpoints the nodes do
        not hold whole). Returns how many were queued.
        """
        directory = Path(checkpoints_dir)
        infos = [i for i in list_checkpoints(directory) if i.committed and i.name not in skip]
        for info in oldest_first(infos, read_latest(directory)):
            self.on_commit(info.path, full=info.kind == KIND_FULL)
        return len(infos)

    # ------------------------------------------------------------------ status
    @property
    def display(self) -> str:
        return self.remote.display

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
                "Fix the remote, then upload them with `linnaeus-ckpt upload`."
            )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued upload has finished (confirmed or failed); False on timeout.

        Raises UploadError if the worker thread is gone with uploads still queued (it catches
        every error of an upload, so only an interpreter shutdown can do that): waiting for it
        would never end.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending:
                if not self._thread.is_alive():
                    raise UploadError(f"the upload worker for {self.display} stopped with {self._pending} "
                                      "upload(s) queued; the local files are kept. Upload them with "
                                      "`linnaeus-ckpt upload`.")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                # Wake now and then to notice a dead worker, which never notifies.
                self._cond.wait(1.0 if left is None else min(left, 1.0))
        return True

    def begin_close(self) -> None:
        """No more checkpoints will come: deferred retries (``"warn"``) get ``final_wait_s`` from now."""
        with self._cond:
            self._closed = True
            if self._closing_since is None:
                self._closing_since = time.monotonic()
            self._cond.notify_all()
        self._queue.put(_WAKE)

    @property
    def unconfirmed(self) -> list[Path]:
        """Checkpoints whose upload failed every attempt so far and is tried again (``"warn"``)."""
        with self._cond:
            return list(self._deferred)

    def close(self, timeout: float | None = None) -> None:
        """Finish pending uploads (up to ``timeout``), stop the worker, raise pending failures."""
        self.begin_close()
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
        retry_at = 0.0
        while True:
            try:
                path = self._queue.get(timeout=max(0.05, retry_at - time.monotonic()) if self._deferred else None)
            except queue.Empty:
                path = _WAKE
            if path is None:
                return
            if path is _WAKE:
                # Closing tries the deferred ones at once: the bucket may be back, and the run is waiting.
                if self._deferred and (time.monotonic() >= retry_at or self._closing_since is not None):
                    self._retry_deferred()
                    retry_at = time.monotonic() + self.retry_after_s
                continue
            if not self._deferred:
                retry_at = time.monotonic() + self.retry_after_s
            self._attempt(path, self.retries, first=True)

    def _attempt(self, path: Path, attempts: int, *, first: bool) -> None:
        """Upload ``path``; settle its pending count unless "warn" defers it for a later retry."""
        deferred = False
        try:
            deferred = self._upload_with_retries(path, attempts, first=first)
        except Exception as e:  # noqa: BLE001 - the worker must outlive any item: it is kept for poll()
            logger.error("Upload of %s to %s failed: %s: %s", path, self.display, type(e).__name__, e)
            with self._cond:
                self._failures.append((path, f"{type(e).__name__}: {e}"))
        finally:
            if not deferred:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def _retry_deferred(self) -> None:
        """One attempt for each deferred checkpoint, oldest first; after ``final_wait_s`` of closing,
        what still fails becomes a failure that :meth:`close` raises."""
        with self._cond:
            todo, self._deferred = self._deferred, []
            given_up = self._closing_since is not None and time.monotonic() - self._closing_since > self.final_wait_s
        for path in todo:
            if given_up:
                with self._cond:
                    self._failures.append((path, f"not uploaded {self.final_wait_s:g} s after the run ended "
                                                 "(ENV.OUTPUT.BUCKET.ON_FAILURE warn)"))
                    self._pending -= 1
                    self._cond.notify_all()
                continue
            self._attempt(path, 1, first=False)
        uploaded = [p for p in todo if self.is_confirmed(p)]
        if uploaded:
            logger.info("Uploaded %d checkpoint(s) after earlier failures (%s); %d not uploaded yet", len(uploaded),
                        ", ".join(p.name for p in uploaded), len(self.unconfirmed))

    def _upload_with_retries(self, path: Path, attempts: int, *, first: bool = True) -> bool:
        """True when the upload failed every attempt and is deferred ("warn") instead of kept as a failure."""
        conflict = False
        for attempt in range(1, attempts + 1):
            try:
                if self.lease is not None:
                    self.lease.check()
                sent = self._transfer(path)
                with self._cond:
                    self._confirmed.add(path)
                self._update_marker(path)
                logger.info("%s %s %s -> %s%s", "Uploaded" if sent else "Already remote:", self.noun, path,
                            self.display, path.name)
                return False
            except BucketConflictError as e:  # another writer's state: no retry can help
                error, conflict = str(e), True
                break
            except Exception as e:  # noqa: BLE001 - any failure is retried, then kept and raised by poll()
                error = f"{type(e).__name__}: {e}" if not isinstance(e, CheckpointError) else str(e)
            if attempt < attempts:
                wait = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
                logger.warning("Upload of %s failed (attempt %d/%d): %s; retrying in %.1f s", path, attempt,
                               attempts, error, wait)
                if self._stop.wait(wait):
                    break
        if self.on_failure == "warn" and not conflict and not self._stop.is_set():
            with self._cond:
                self._deferred.append(path)
                waiting = list(self._deferred)
            if first:
                size = sum(_size_of(p) for p in waiting)
                logger.warning("Upload of %s to %s failed after %d attempts: %s. Training goes on "
                               "(ENV.OUTPUT.BUCKET.ON_FAILURE warn): %d checkpoint(s), %.1f MB, not uploaded yet and "
                               "kept locally until they are (retention deletes none of them); retrying every %g s",
                               path, self.display, attempt, error, len(waiting), size / 1e6, self.retry_after_s)
            return True
        logger.error("Upload of %s to %s failed after %d attempts: %s", path, self.display, attempt, error)
        with self._cond:
            self._failures.append((path, error))
        return False

    def _transfer(self, path: Path) -> bool:
        """One attempt at sending ``path``, checked; False when the remote held it already."""
        return self.remote.upload(path)

    def _update_marker(self, confirmed: Path) -> None:
        """Point the remote ``latest`` at the newest checkpoint that is confirmed remote."""
        wanted = read_latest(confirmed.parent)
        with self._cond:
            newest = self._newest
            target = confirmed.parent / wanted if wanted else newest
            if target is None or target not in self._confirmed or target.name == self._marker:
                return
        self.remote.write_marker(target.name)
        with self._cond:
            self._marker = target.name


_WAKE = Path("\0wake")  # queued to make the worker look at its deferred retries (never a checkpoint's path)


def _size_of(path: Path) -> int:
    """Bytes of a checkpoint, as its format counts them, for a log line (0 if it cannot be read now)."""
    try:
        return read_info(path).size
    except (OSError, CheckpointError):
        return 0


__all__ = ["BackgroundUploader", "UploadError"]
