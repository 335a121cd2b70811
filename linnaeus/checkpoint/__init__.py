"""linnaeus' checkpoint library: transactional saves, verified loads, retention, resume.

Usable from any PyTorch loop; see :class:`CheckpointManager`. The layers, each importing only
downward (docs/ARCHITECTURE.md draws them): ``disk`` < ``state`` < ``sources`` < ``formats`` <
``store`` < ``manager`` / ``remote`` < ``resume``; ``resolve``, ``loading`` and ``strategies``
turn identifiers into weights.
"""

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
from .formats import (
    CheckpointFormat,
    CheckpointInfo,
    SaveResult,
    VerifyResult,
    format_of,
    load_verified,
    read_latest,
    register_format,
    verify_checkpoint,
)
from .manager import CheckpointManager, CheckpointTransaction, ResumeResult
from .policy import (
    Cadence,
    CheckpointPolicy,
    Interval,
    Schedule,
    parse_interval,
    render_filename,
    validate_filename_template,
)
from .remote import RemoteRun

# The function shadows its submodule's name on purpose: ``linnaeus.checkpoint.resolve(...)`` is
# the documented call; ``from linnaeus.checkpoint.resolve import BucketConfig`` still works.
from .resolve import BucketConfig, resolve
from .resume import ResumePoint, find_resume_point, start_timeline
from .state import (
    Stateful,
    build_state,
    collect_rng_state,
    gather_rng_states,
    restore_rng_state,
    restore_state,
    unwrap_model,
)
from .store import list_checkpoints
from .strategies import load_model, register_strategy, registered_strategies, unregister_strategy

__all__ = [
    "BucketConfig",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointFormat",
    "CheckpointIncompatibleError",
    "CheckpointInfo",
    "CheckpointManager",
    "CheckpointNotFoundError",
    "CheckpointPolicy",
    "CheckpointTransaction",
    "CheckpointUnreadableError",
    "DirectoryLockedError",
    "Interval",
    "Schedule",
    "Cadence",
    "InvalidOperationError",
    "InvalidPolicyError",
    "NotATrainingCheckpointError",
    "RemoteRun",
    "ResumePoint",
    "ResumeResult",
    "SaveResult",
    "Stateful",
    "VerifyResult",
    "build_state",
    "collect_rng_state",
    "find_resume_point",
    "start_timeline",
    "format_of",
    "gather_rng_states",
    "list_checkpoints",
    "load_model",
    "load_verified",
    "parse_interval",
    "read_latest",
    "register_format",
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
