"""The job's end, known to the loop: with ``CHECKPOINT.SAVE_BEFORE_END`` the run commits and exits 0 that
long before it (``TRAIN.DEADLINE``, or Slurm's end time of the job), even when no signal ever comes."""

from __future__ import annotations

import datetime
import logging
import os
import time
from typing import Mapping

from yacs.config import CfgNode

from linnaeus.config.cluster import deadline_from, save_before_end_s

logger = logging.getLogger("linnaeus")


class Deadline:
    """When the run must have committed and stopped: ``end - margin_s`` (never, when either is None)."""

    def __init__(self, end: float | None, margin_s: float | None, source: str = "") -> None:
        self.end, self.margin_s, self.source = end, margin_s, source

    @classmethod
    def from_config(cls, cfg: CfgNode, environ: Mapping[str, str] = os.environ) -> "Deadline":
        end, source = deadline_from(cfg, environ)
        return cls(end, save_before_end_s(cfg), source)

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


__all__ = ["Deadline"]
