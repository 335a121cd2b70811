"""linnaeus' checkpoint library: transactional saves, verified loads, retention, resume.

Usable from any PyTorch loop; see :class:`CheckpointManager`.
"""

from .catalog import CheckpointInfo, list_checkpoints
from .commit import SaveResult, read_latest
from .errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointIncompatibleError,
    CheckpointNotFoundError,
    CheckpointUnreadableError,
    DirectoryLockedError,
    InvalidOperationError,
    InvalidPolicyError,
    NotATrainingCheckpointError,
)
from .manager import CheckpointManager, CheckpointTransaction, ResumeResult
from .policy import CheckpointPolicy, Interval, parse_interval, render_filename, validate_filename_template
from .remote import RemoteRun

# The function shadows its submodule's name on purpose: ``linnaeus.checkpoint.resolve(...)`` is
# the documented call; ``from linnaeus.checkpoint.resolve import BucketConfig`` still works.
from .resolve import BucketConfig, resolve
from .resume import ResumePoint, find_resume_point
from .state import (
    Stateful,
    build_state,
    collect_rng_state,
    gather_rng_states,
    restore_rng_state,
    restore_state,
    unwrap_model,
)
from .strategies import load_model, register_strategy, registered_strategies, unregister_strategy
from .verify import VerifyResult, load_verified, verify_checkpoint

__all__ = [
    "BucketConfig",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointIncompatibleError",
    "CheckpointUnreadableError",
    "NotATrainingCheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointPolicy",
    "CheckpointTransaction",
    "DirectoryLockedError",
    "Interval",
    "InvalidOperationError",
    "InvalidPolicyError",
    "RemoteRun",
    "ResumePoint",
    "ResumeResult",
    "SaveResult",
    "Stateful",
    "VerifyResult",
    "build_state",
    "collect_rng_state",
    "find_resume_point",
    "gather_rng_states",
    "list_checkpoints",
    "load_model",
    "load_verified",
    "parse_interval",
    "read_latest",
    "register_strategy",
    "registered_strategies",
    "render_filename",
    "resolve",
    "restore_rng_state",
    "restore_state",
    "unregister_strategy",
    "unwrap_model",
    "validate_filename_template",
    "verify_checkpoint",
]
