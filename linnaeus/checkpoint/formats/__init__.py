"""Checkpoint formats: one protocol (:class:`CheckpointFormat`), two implementations (a single file
with its ``.sha256`` sidecar; a sharded DCP directory with its ``manifest.json``), and
:func:`format_of`, the only place that tells them apart."""

from .base import (
    Background,
    CheckpointFormat,
    CheckpointInfo,
    CommitFiles,
    Leftover,
    OnCommitted,
    Part,
    RemoteEntry,
    RemoteParts,
    SaveResult,
    VerifyResult,
)
from .directory import LATEST, checkpoint_stem, is_checkpoint_name, read_latest, write_latest
from .file import TAXONOMY_METADATA, TREE_METADATA, FileFormat, commit_file, commit_written, is_pending_sidecar_name
from .registry import (
    choose_format,
    format_named,
    format_of,
    format_of_state,
    formats,
    load_verified,
    load_verified_digest,
    read_info,
    register_format,
    verify_checkpoint,
)
from .sharded import (
    MANIFEST,
    STATE_FILE,
    ShardedFormat,
    VerifyingReader,
    background_group,
    consolidate,
    fill_from_bucket,
    held_ranks,
    load_sharded_state,
    node_parts,
    read_checked_metadata,
    read_manifest,
    remote_manifest,
    shared_bytes,
    sharded_dirname,
    upload_part,
    write_shared,
)
from .folder import RemoteFolder
from .transfer import upload_entry

__all__ = [
    "TAXONOMY_METADATA", "TREE_METADATA",
    "Background", "CheckpointFormat", "CheckpointInfo", "CommitFiles", "FileFormat", "LATEST", "Leftover", "MANIFEST",
    "OnCommitted", "Part", "RemoteEntry", "RemoteFolder", "RemoteParts", "STATE_FILE", "SaveResult", "ShardedFormat",
    "VerifyResult", "VerifyingReader", "background_group", "checkpoint_stem", "choose_format", "commit_file", "commit_written", "consolidate", "fill_from_bucket", "format_named", "format_of",
    "format_of_state", "formats", "held_ranks", "is_checkpoint_name", "is_pending_sidecar_name", "load_sharded_state", "node_parts",
    "load_verified", "load_verified_digest", "read_checked_metadata", "read_info", "read_latest", "read_manifest",
    "register_format", "remote_manifest", "shared_bytes", "sharded_dirname", "upload_entry", "upload_part", "verify_checkpoint", "write_latest", "write_shared",
]
