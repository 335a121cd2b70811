"""Where a run continues from: the one place that decides it (:func:`find_resume_point`), the one
step that writes once the point is restored (:func:`start_timeline`), and the run-relative targets
``latest`` / ``step:N``."""

from .point import (
    RemoteCheckpointsPresentError,
    ResumePoint,
    Superseded,
    WeightsOnlyRunError,
    find_resume_point,
    is_bare_name,
)
from .target import InvalidResumeTargetError, RunTarget, locate_run_target, parse_run_target
from .timeline import start_timeline

__all__ = ["InvalidResumeTargetError", "RemoteCheckpointsPresentError", "ResumePoint", "RunTarget", "Superseded",
           "WeightsOnlyRunError", "find_resume_point", "is_bare_name", "locate_run_target", "parse_run_target",
           "start_timeline"]
