"""A run's folder in a bucket (:class:`RemoteRun`: listing, marker, verified upload and fetch of any
format, moving a timeline aside), its writer lease (:class:`BucketLease`), and the background
uploader that fills it in commit order."""

from .folder import LATEST_MARKER, RemoteRun
from .lease import LEASE, BucketLease
from .parts import NodePartUploader
from .cadence import UploadCadence
from .all_ranks import WAIT_SLICE_S, close_on_all_ranks, poll_on_all_ranks
from .uploader import BackgroundUploader, UploadError

__all__ = ["LATEST_MARKER", "LEASE", "WAIT_SLICE_S", "BackgroundUploader", "BucketLease", "NodePartUploader", "RemoteRun", "UploadCadence", "UploadError", "close_on_all_ranks",
           "poll_on_all_ranks"]
