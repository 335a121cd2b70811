"""Bytes on disk, whatever they hold: durable writes, fsync of files and directories, the file
hashers and their cache, the ``.sha256`` sidecar, the writer lock, the background writer.

The bottom layer of the checkpoint library: it knows files, not checkpoints.
"""

from .background import AsyncWriter, snapshot
from .digests import (
    FAST_DIGEST,
    SHA256,
    cache_both_digests,
    cached_digest,
    clear_digest_cache,
    digest_file,
    digests_of,
    sha256_file,
    sha256_file_async,
)
from .durable import (
    REPLACED,
    TEMP_SYNCED,
    WRITER_ID,
    BackgroundFlush,
    ErrorRecordingStream,
    fsync_dir,
    fsync_file,
    is_temp_name,
    pid_alive,
    remove_tree,
    temp_name,
    temp_target,
    temp_writer,
    temp_writer_pid,
    write_durably,
    writer_id,
    writer_pid,
)
from .hashed_file import Serializer, Written, write_hashed
from .hashing import CHUNK_DIGEST, CHUNK_SIZE, FileDigest, FileTailHasher, HashingWriter, StreamDigest, verify_pool
from .overlap import Overlap, SnapshotGate, storage_key
from .pages import write_in_pieces
from .process_writer import ProcessWriter, WriterProcessError
from .sharing import DirectorySharing, known_sharing, probe_sharing
from .chunks import CHUNK_BYTES, move_chunks, pair_mover, read_exactly
from .sidecar import (
    PROGRESS_KEYS,
    SIDECAR_SUFFIX,
    SidecarError,
    format_sidecar,
    parse_sidecar,
    read_sidecar,
    read_sidecar_digest,
    sidecar_path,
    sidecar_progress,
)
from .writer_lock import LOCK_NAME, WriterLease, acquire, acquire_on_writer_rank, dir_lock, read_holder

__all__ = [
    "AsyncWriter", "BackgroundFlush", "CHUNK_BYTES", "CHUNK_DIGEST", "pair_mover", "DirectorySharing", "ErrorRecordingStream", "CHUNK_SIZE", "FAST_DIGEST", "FileDigest", "FileTailHasher", "HashingWriter", "LOCK_NAME", "Overlap",
    "PROGRESS_KEYS", "ProcessWriter", "REPLACED", "Serializer", "SHA256", "SIDECAR_SUFFIX", "SidecarError", "SnapshotGate", "StreamDigest", "TEMP_SYNCED", "WRITER_ID", "WriterLease", "WriterProcessError", "Written",
    "acquire", "acquire_on_writer_rank", "cache_both_digests", "cached_digest", "clear_digest_cache", "digest_file",
    "digests_of", "dir_lock", "format_sidecar", "fsync_dir", "fsync_file", "is_temp_name", "move_chunks", "parse_sidecar",
    "known_sharing", "pid_alive", "probe_sharing", "read_exactly", "read_holder", "read_sidecar", "read_sidecar_digest", "remove_tree", "sha256_file",
    "sha256_file_async", "sidecar_path", "sidecar_progress", "snapshot", "storage_key", "temp_name", "temp_target", "temp_writer",
    "temp_writer_pid", "verify_pool", "write_durably", "write_hashed", "write_in_pieces", "writer_id", "writer_pid",
]
