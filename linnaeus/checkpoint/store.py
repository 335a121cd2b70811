"""Transitional re-exports: the checkpoint store now lives in names, commit, catalog, verify
and retention. Import from those modules; this shim goes once every importer has moved."""

from .catalog import CheckpointInfo, list_checkpoints, read_info
from .commit import SaveResult, commit_file, read_latest, write_latest
from .names import is_checkpoint_name, is_pending_sidecar_name, is_temp_name
from .retention import cleanup_stale, delete_checkpoint, plan_retention
from .verify import VerifyResult, load_verified, verify_checkpoint

__all__ = [
    "CheckpointInfo",
    "SaveResult",
    "VerifyResult",
    "cleanup_stale",
    "commit_file",
    "delete_checkpoint",
    "is_checkpoint_name",
    "is_pending_sidecar_name",
    "is_temp_name",
    "list_checkpoints",
    "load_verified",
    "plan_retention",
    "read_info",
    "read_latest",
    "verify_checkpoint",
    "write_latest",
]
