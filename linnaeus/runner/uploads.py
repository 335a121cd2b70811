"""The run's uploads to its bucket folder (ENV.OUTPUT.BUCKET), as the config asks for them.

Rank 0 takes the folder's writer lease (a second live run of the EXPERIMENT.NAME stops) and runs
the :class:`~linnaeus.checkpoint.remote.BackgroundUploader`; on node-local directories with sharded
checkpoints every other node's lowest rank runs a
:class:`~linnaeus.checkpoint.remote.NodePartUploader` for its node's part. With
ENV.OUTPUT.BUCKET.INTERVAL, only the main saver's checkpoints that the interval finds due go up
(:class:`~linnaeus.checkpoint.remote.UploadCadence`, asked on every rank at every save), the others
stay local and retention may delete them; the run's last checkpoint goes up at the end whatever the
interval.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from yacs.config import CfgNode

from linnaeus.checkpoint.errors import CheckpointError
from linnaeus.checkpoint.remote import (
    BackgroundUploader,
    BucketLease,
    NodePartUploader,
    RemoteRun,
    UploadCadence,
    UploadError,
    close_on_all_ranks,
    poll_on_all_ranks,
)
from linnaeus.checkpoint.sources import TransientSourceError
from linnaeus.dist import is_main_process, run_on_all_ranks

logger = logging.getLogger("linnaeus")

# How long a failed run waits for the uploads of the checkpoints it committed before it exits.
UPLOAD_WAIT_AFTER_ERROR_S = 900


class RunUploads:
    """The bucket folder's lease and this rank's uploader (None where this rank uploads nothing)."""

    def __init__(self, cfg: CfgNode, run_dir: Path) -> None:
        out = cfg.ENV.OUTPUT.BUCKET
        self.cfg = cfg
        self.remote = RemoteRun.in_bucket(out, cfg.EXPERIMENT.NAME) if out.ENABLED else None
        self.lease = self._lease_bucket_folder(run_dir)  # first: a second live run of this EXPERIMENT.NAME stops
        self.options = dict(on_failure=out.ON_FAILURE, retries=out.UPLOAD_RETRIES, retry_after_s=out.RETRY_AFTER_S)
        self.uploader: BackgroundUploader | None = (BackgroundUploader(self.remote, lease=self.lease, **self.options)
                                                    if self.lease is not None else None)
        self.parts: NodePartUploader | None = None  # set by :meth:`add_parts` on other nodes' lowest ranks
        self.cadence = UploadCadence(out.INTERVAL) if out.ENABLED and out.INTERVAL else None
        self._held: Path | None = None  # rank 0: the main saver's last checkpoint, when held back
        self._last_due = True  # the main saver's last save went up (or will)
        if self.cadence is not None and is_main_process():
            logger.info("Uploads to %s follow ENV.OUTPUT.BUCKET.INTERVAL %s: the checkpoints saved in between stay "
                        "local; the run's last checkpoint is uploaded at its end", self.remote.display, self.cadence)

    def add_parts(self, parts: NodePartUploader | None) -> None:
        if parts is not None:
            self.parts = self.uploader = parts

    @property
    def timed(self) -> bool:
        """Whether the interval counts training time (then every rank must read rank 0's clock)."""
        return self.cadence is not None and self.cadence.interval.by_time

    # ------------------------------------------------------------------ the savers' hooks
    def hooks(self, saver: str, *, full: bool, main: bool,
              also: Callable[[Path], None] = lambda path: None) -> dict[str, Any]:
        """A saver's hooks (rank 0): each commit queued for upload (or held back by the interval), then
        ``also``; retention deletes a local copy only once its upload is confirmed, or it is held back."""
        uploader = self.uploader

        def on_commit(path: Path) -> None:
            if uploader is not None:
                if main and not self._last_due:
                    uploader.hold_back(path)
                    self._held = path
                else:
                    uploader.on_commit(path, full=full)
            also(path)

        return {"on_commit": on_commit, **({"can_delete": uploader.can_delete} if uploader is not None else {})}

    def before_save(self, *, epoch: int, step: int, end_of_epoch: bool, elapsed_ms: int) -> None:
        """Before each save of the main saver, on every rank: whether it goes to the bucket."""
        if self.cadence is None:
            return
        self._last_due = self.cadence.due(epoch=epoch, step=step, end_of_epoch=end_of_epoch, elapsed_ms=elapsed_ms)
        if self.parts is not None:
            self.parts.decide(step, self._last_due)

    # ------------------------------------------------------------------ lifecycle
    def begin(self, directory: Path, *, skip: tuple[str, ...], epoch: int, step: int, elapsed_ms: int) -> None:
        """After the resume: the interval counts from the resumed progress; what the last launch did not
        upload is queued (all of it: what it held back included)."""
        if self.cadence is not None:
            self.cadence.start(epoch=epoch, step=step, elapsed_ms=elapsed_ms)
        if self.uploader is not None:
            queued = self.uploader.enqueue_existing(directory, skip=skip)
            if queued and self.parts is None:
                logger.info("Queued %d checkpoint(s) already in %s for upload to %s (those already there are only "
                            "confirmed)", queued, directory, self.uploader.display)

    def poll(self) -> None:
        """Raise a failed upload on every rank (a collective when there is a bucket folder)."""
        if self.parts is not None:
            self.parts.enqueue_new()  # what this node's directory committed since the last step
        if self.remote is not None:
            poll_on_all_ranks(self.uploader)

    def _release_last(self) -> None:
        """The run's last checkpoint goes up, held back by the interval or not."""
        if self._last_due:
            return
        self._last_due = True
        if self.parts is not None:
            self.parts.release_last()
        elif self.uploader is not None and self._held is not None:
            self.uploader.release(self._held)

    def close(self, then: Callable[[], object]) -> None:
        """Wait for every upload (a collective), then ``then`` (retention); raise what failed on every rank."""
        if self.parts is not None:
            self.parts.enqueue_new()  # the last save's part
        if self.remote is None:
            return
        self._release_last()
        uploader, self.uploader = self.uploader, None
        close_on_all_ranks(uploader, then=then)

    def close_after_error(self) -> None:
        """This rank's uploads of committed checkpoints finish (up to :data:`UPLOAD_WAIT_AFTER_ERROR_S`);
        no collective, nothing raised (the run's own error is the one that propagates)."""
        # A failed run's machine may be gone before the next launch could upload what this one
        # committed: its last checkpoints would exist nowhere else.
        if self.parts is not None:
            self.parts.enqueue_new()
        self._release_last()
        uploader, self.uploader = self.uploader, None
        if uploader is None:
            return
        logger.warning("The run failed; finishing the uploads of its committed checkpoints to %s (up to %d s) "
                       "before it exits with the error ...", uploader.display, UPLOAD_WAIT_AFTER_ERROR_S)
        try:
            uploader.close(timeout=UPLOAD_WAIT_AFTER_ERROR_S)
        except UploadError as e:  # logged; the run's own error is the one raised
            logger.error("%s", e)

    def release_lease(self) -> None:
        """The bucket folder's lease, once nothing more is uploaded."""
        if self.lease is not None:
            lease, self.lease = self.lease, None
            try:
                lease.release()
            except CheckpointError as e:  # it lapses after its time-to-live: a relaunch waits that long at most
                logger.warning("Could not remove the writer lease %s: %s", lease.where, e)

    def _lease_bucket_folder(self, run_dir: Path) -> BucketLease | None:
        """Rank 0 takes the bucket folder's writer lease; every rank raises if another run holds it."""
        remote = self.remote
        if remote is None:
            return None

        def take() -> BucketLease | None:
            if not is_main_process():
                return None
            lease = BucketLease(remote, ttl_s=self.cfg.ENV.OUTPUT.BUCKET_LEASE_TTL_S, run_id=self.cfg.EXPERIMENT.NAME,
                                run_dir=str(run_dir))
            try:
                return lease.acquire()
            except TransientSourceError as e:  # as for the resume: an unreachable bucket fails the uploads, loudly
                logger.warning("Could not take the writer lease of %s (%s); the first upload takes it, or fails",
                               remote.display, e)
                return lease

        return run_on_all_ranks(take, f"taking the writer lease of {remote.display}", CheckpointError)


__all__ = ["UPLOAD_WAIT_AFTER_ERROR_S", "RunUploads"]
