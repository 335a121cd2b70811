"""Uploads across ranks: every rank raises a failed upload, and waits for the uploads at the end.

The uploaders run on some ranks only (rank 0's; on node-local directories with sharded checkpoints,
every node's lowest rank too); these collectives take the one a rank has, or None.
"""

from __future__ import annotations

import logging
from typing import Callable

from linnaeus.dist import any_rank_true, raise_on_all_ranks

from .uploader import BackgroundUploader, UploadError

logger = logging.getLogger("linnaeus.checkpoint")


# While rank 0 waits for its uploads, the other ranks wait for its verdict in collectives of at
# most this long, so that no single collective can outlast the process group's timeout however
# long a large upload takes.
WAIT_SLICE_S = 30.0


def poll_on_all_ranks(uploader: BackgroundUploader | None) -> None:
    """Raise a failed upload on every rank (a collective: call it on every rank, with the uploader
    where there is one, typically rank 0 only, and None elsewhere)."""
    raise_on_all_ranks(None if uploader is None else _error_of(uploader.poll), "checkpoint upload", UploadError)


def close_on_all_ranks(uploader: BackgroundUploader | None, then: Callable[[], object] = lambda: None) -> None:
    """Wait for every queued upload, close the uploader, run ``then`` (e.g. retention, now that
    uploads are confirmed) on its rank; raise what failed on every rank (a collective).

    The ranks without an uploader meet its rank every :data:`WAIT_SLICE_S` seconds.
    """
    if uploader is not None:
        logger.info("Waiting for uploads to %s to finish ...", uploader.display)
        uploader.begin_close()  # a "warn" uploader's deferred retries get their final wait from now

    def still_waiting() -> bool:
        try:
            return uploader is not None and not uploader.wait(timeout=WAIT_SLICE_S)
        except UploadError:
            return False  # a dead worker: closing it below raises this on every rank

    while any_rank_true(still_waiting()):
        pass

    def finish() -> None:
        if uploader is not None:
            uploader.close()
            then()

    raise_on_all_ranks(_error_of(finish), "checkpoint upload", UploadError)


def _error_of(fn: Callable[[], object]) -> BaseException | None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - handed to raise_on_all_ranks, which raises it everywhere
        return e
    return None


__all__ = ["WAIT_SLICE_S", "close_on_all_ranks", "poll_on_all_ranks"]
