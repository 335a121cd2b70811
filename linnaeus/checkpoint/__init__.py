"""linnaeus' checkpoint library: transactional saves, verified loads, retention, resume.

Usable from any PyTorch loop; see :class:`CheckpointManager`.
"""

from .errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointIncompatibleError,
    CheckpointNotFoundError,
    InvalidOperationError,
)
from .manager import CheckpointManager, CheckpointTransaction, ResumeResult
# The function shadows its submodule's name on purpose: ``linnaeus.checkpoint.resolve(...)`` is
# the documented call; ``from linnaeus.checkpoint.resolve import BucketConfig`` still works.
from .resolve import BucketConfig, resolve
from .policy import CheckpointPolicy, Interval, parse_interval, render_filename, validate_filename_template
from .state import (
    build_state,
    collect_rng_state,
    gather_rng_states,
    restore_rng_state,
    restore_state,
    unwrap_model,
)
from .store import (
    CheckpointInfo,
    SaveResult,
    VerifyResult,
    list_checkpoints,
    load_verified,
    read_latest,
    verify_checkpoint,
)

__all__ = [
    "BucketConfig",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointIncompatibleError",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointPolicy",
    "CheckpointTransaction",
    "Interval",
    "InvalidOperationError",
    "ResumeResult",
    "SaveResult",
    "VerifyResult",
    "build_state",
    "collect_rng_state",
    "gather_rng_states",
    "list_checkpoints",
    "load_verified",
    "parse_interval",
    "read_latest",
    "render_filename",
    "resolve",
    "restore_rng_state",
    "restore_state",
    "unwrap_model",
    "validate_filename_template",
    "verify_checkpoint",
]
