"""Which of a run's checkpoints go to its bucket folder when uploads follow their own interval.

Local saves can be frequent (every 50 steps, keep 2: a crash loses seconds of work) while uploads
are rarer (every 500 steps, or every 30 minutes of training: a lost cluster loses at most that). A
checkpoint is uploaded when the upload interval fell due since the last one that was: a multiple of
its steps, epochs (end-of-epoch saves) or training time crossed. The others stay local, and
retention may delete them (:meth:`~.uploader.BackgroundUploader.hold_back`). The run's last
checkpoint goes up whatever the interval (the caller releases it at the end), since the machine's
disk may not outlive the job.

The decision takes only stored progress, so every rank that asks at the same save gets the same
answer (on node-local directories every node uploads its part of the same checkpoints).
"""

from __future__ import annotations

from typing import Any

from ..policy import Cadence, parse_interval


class UploadCadence:
    """``due(...)`` at each save of the run's main saver, in order; ``start(...)`` first, from the
    progress the run resumed (what its bucket folder has been sent up to)."""

    def __init__(self, interval: Any) -> None:
        self.interval: Cadence = parse_interval(interval)
        self._last = (0, 0, 0)  # (epoch, step, training ms) of the last checkpoint sent

    def start(self, *, epoch: int, step: int, elapsed_ms: int) -> None:
        self._last = (epoch, step, elapsed_ms)

    def due(self, *, epoch: int, step: int, end_of_epoch: bool, elapsed_ms: int) -> bool:
        """Whether the checkpoint saved now is uploaded (and counted from, if so)."""
        now = (epoch, step, elapsed_ms)
        if not self.interval.crossed(since=self._last, now=now, end_of_epoch=end_of_epoch):
            return False
        self._last = now
        return True

    def __str__(self) -> str:
        return str(self.interval)


__all__ = ["UploadCadence"]
