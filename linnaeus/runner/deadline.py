"""The job's end, known to the loop: with ``CHECKPOINT.SAVE_BEFORE_END`` the run commits and exits 0 that
long before it (``TRAIN.DEADLINE``, or Slurm's end time of the job), even when no signal ever comes."""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import subprocess
import time
from typing import Mapping

from yacs.config import CfgNode

from linnaeus.config import ConfigError
from linnaeus.config.cluster import deadline_from, save_before_end_s
from linnaeus.dist import broadcast_object, is_main_process, run_on_all_ranks

logger = logging.getLogger("linnaeus")


class Deadline:
    """When the run must have committed and stopped: ``end - margin_s`` (never, when either is None)."""

    def __init__(self, end: float | None, margin_s: float | None, source: str = "") -> None:
        self.end, self.margin_s, self.source = end, margin_s, source

    @classmethod
    def from_config(cls, cfg: CfgNode, environ: Mapping[str, str] = os.environ) -> "Deadline":
        """TRAIN.DEADLINE, else Slurm's end time of the job (``SLURM_JOB_END_TIME``, or, for a Slurm that does
        not export it, asked of ``squeue`` by rank 0 once, only when ``SAVE_BEFORE_END`` will act on it)."""
        margin = save_before_end_s(cfg)
        end, source = deadline_from(cfg, environ)
        if end is None and margin is not None and environ.get("SLURM_JOB_ID"):
            job = environ["SLURM_JOB_ID"]
            end = broadcast_object(run_on_all_ranks(lambda: slurm_end_time(job) if is_main_process() else None,
                                                    "asking Slurm for the job's end time", ConfigError))
            source = f"Slurm's end time of job {job} (squeue)"
        return cls(end, margin, source)

    @property
    def active(self) -> bool:
        return self.end is not None and self.margin_s is not None

    @property
    def stop_at(self) -> float | None:
        return None if self.end is None or self.margin_s is None else self.end - self.margin_s

    def reached(self) -> bool:
        """Whether this process's clock is past the time to stop (checked at step boundaries)."""
        stop_at = self.stop_at
        return stop_at is not None and time.time() >= stop_at

    def describe(self) -> str:
        if self.end is None:
            return "no deadline"
        when = datetime.datetime.fromtimestamp(self.end).astimezone().isoformat(timespec="seconds")
        if self.margin_s is None:
            return f"deadline {when} ({self.source}); CHECKPOINT.SAVE_BEFORE_END is empty: the run does not act on it"
        return (f"deadline {when} ({self.source}): the run commits a checkpoint and stops "
                f"{self.margin_s:g} s before it (CHECKPOINT.SAVE_BEFORE_END)")


def slurm_end_time(job_id: str) -> float | None:
    """The end time Slurm's controller holds for ``job_id`` (its time limit from its start; local time,
    as ``squeue`` prints it), or None for a job without a time limit. Raises ConfigError when Slurm
    cannot say: SAVE_BEFORE_END was asked for, so the run must not start without knowing its end."""
    fix = "set TRAIN.DEADLINE to the job's end, or CHECKPOINT.SAVE_BEFORE_END to '' to not act on it"
    squeue = shutil.which("squeue")
    if squeue is None:
        raise ConfigError(f"CHECKPOINT.SAVE_BEFORE_END is set and SLURM_JOB_ID={job_id}, but there is no squeue on "
                          f"PATH to ask Slurm for the job's end time: {fix}.")
    proc = subprocess.run([squeue, "--noheader", "--jobs", job_id, "--format", "%e"], capture_output=True,
                          text=True, timeout=60)
    text = proc.stdout.strip()
    if proc.returncode != 0 or not text:
        raise ConfigError(f"CHECKPOINT.SAVE_BEFORE_END is set, but `squeue --jobs {job_id} --format %e` did not give "
                          f"the job's end time (exit {proc.returncode}: {(proc.stderr or text).strip()[:300]}): {fix}.")
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:  # "Unknown", "N/A": no time limit
        logger.info("Slurm gives job %s no end time (%r): no deadline to stop before", job_id, text)
        return None


__all__ = ["Deadline", "slurm_end_time"]
