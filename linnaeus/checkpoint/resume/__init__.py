"""Where a run continues from: the one place that decides it (:func:`find_resume_point`), and the
run-relative targets ``latest`` / ``step:N``."""

from .point import (
    RemoteCheckpointsPresentError,
    ResumePoint,
    Superseded,
    WeightsOnlyRunError,
    find_resume_point,
    is_bare_name,
)
from .target import InvalidResumeTargetError, RunTarget, locate_run_target, parse_run_target

__all__ = ["InvalidResumeTargetError", "RemoteCheckpointsPresentError", "ResumePoint", "RunTarget", "Superseded",
           "WeightsOnlyRunError", "find_resume_point", "is_bare_name", "locate_run_target", "parse_run_target"]
