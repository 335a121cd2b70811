"""The sharded format: a DCP directory written by every rank, committed by its manifest (see :mod:`.format`)."""

from .async_save import background_group
from .bucket_parts import fill_from_bucket, remote_manifest, upload_part
from .format import ShardedFormat
from .load import consolidate, load_sharded_state
from .manifest import MANIFEST, STATE_FILE, held_ranks, node_parts, read_manifest, sharded_dirname
from .metadata import VerifyingReader, read_checked_metadata
from .parts import shared_bytes, write_shared

__all__ = ["MANIFEST", "STATE_FILE", "ShardedFormat", "VerifyingReader", "background_group", "consolidate", "fill_from_bucket",
           "held_ranks", "load_sharded_state", "node_parts", "read_checked_metadata", "read_manifest", "shared_bytes",
           "remote_manifest", "sharded_dirname", "upload_part", "write_shared"]
