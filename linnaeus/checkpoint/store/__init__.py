"""One local checkpoint directory, whatever the format of each checkpoint in it: what is there
(catalog), which is newest and verifies (scan), what to delete (retention) and the leftovers of
interrupted saves, and the run's timeline in it (lineage)."""

from .catalog import find_checkpoint, list_checkpoints, not_ours
from .lineage import (
    Adoption,
    CheckpointsPresentError,
    RunLineage,
    UnadoptedCheckpointsError,
    abandoned_folder_name,
    adopt,
    branch,
    held_checkpoints,
    move_aside,
    parent_sha256,
    set_aside,
    set_aside_folder_name,
    unadopted,
)
from .local import LocalCheckpoints
from .retention import apply_retention, cleanup_stale, delete_checkpoint, hold_node_directory, leftovers, plan_retention
from ..disk import DirectorySharing, probe_sharing  # kept here too: where the runner and resume look for them
from .scan import load_newest, load_same_bytes, local_candidates, newest_verified, nothing_to_load_error, restore_newest

__all__ = [
    "Adoption", "CheckpointsPresentError", "DirectorySharing", "LocalCheckpoints", "RunLineage", "UnadoptedCheckpointsError", "abandoned_folder_name", "adopt", "apply_retention", "branch",
    "cleanup_stale", "delete_checkpoint", "find_checkpoint", "held_checkpoints", "hold_node_directory", "leftovers", "list_checkpoints", "load_newest",
    "load_same_bytes", "local_candidates", "move_aside", "newest_verified", "not_ours", "nothing_to_load_error",
    "parent_sha256", "plan_retention", "probe_sharing", "restore_newest", "set_aside", "set_aside_folder_name", "unadopted",
]
