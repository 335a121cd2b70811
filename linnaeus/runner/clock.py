"""The run's training time, for training-time checkpoint intervals (``CHECKPOINT.INTERVAL: 30min``).

Training time is the wall-clock time of the run's launches summed: each checkpoint stores it (the
component ``clock``) and a relaunch goes on from the checkpoint's value, so a job preempted every
25 minutes still saves every 30 minutes of training. The time that a killed launch spent after its
last checkpoint is not counted, as its steps are not.

A save is a collective, so every rank must find it due at the same step: at each step boundary the
ranks take rank 0's reading (one all-reduce, shared with the preemption flag), never their own.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import torch

from linnaeus.dist import agree

logger = logging.getLogger("linnaeus")


class TrainingClock:
    """Training time in milliseconds at the previous and the current step boundary, the same on every
    rank once :meth:`step_boundary` agreed on it. Saved and restored as a checkpoint component."""

    source: Callable[[], float] = staticmethod(time.monotonic)  # seconds; a test instrument may replace it

    def __init__(self) -> None:
        self._base_ms = 0  # the training time this launch started from (the checkpoint's)
        self._started_at: float | None = None
        self.before_ms = 0
        self.now_ms = 0

    def start(self) -> None:
        """This launch's training starts now (after the resume)."""
        self._started_at = self.source()

    def reading_ms(self) -> int:
        """This rank's own reading: the training time until now."""
        if self._started_at is None:
            return self._base_ms
        return self._base_ms + max(0, int((self.source() - self._started_at) * 1000))

    @property
    def elapsed_ms(self) -> tuple[int, int]:
        """(previous step boundary, this one): what a training-time interval is due on."""
        return self.before_ms, self.now_ms

    def step_boundary(self, stop: bool, *, collective: bool,
                      means: torch.Tensor | None = None) -> tuple[bool, list[float]]:
        """Advance to this step boundary; whether to stop after it, and the ranks' mean of ``means``.

        With ``collective`` (a stop can be asked for, a training-time interval is configured, or the
        step's health is judged), one all-reduce: every rank stops if any rank asked to, takes rank 0's
        reading and the mean of ``means``. Without, no collective: this rank's own reading, which is
        only stored (rank 0 writes the checkpoint)."""
        self.before_ms = self.now_ms
        if not collective:
            self.now_ms = self.reading_ms()
            return stop, [] if means is None else means.tolist()
        stop, self.now_ms, mean = agree(stop, self.reading_ms(), means)
        return stop, mean

    # ------------------------------------------------------------------ the checkpoint component
    def state_dict(self) -> dict[str, int]:
        return {"elapsed_ms": self.now_ms}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        value = state.get("elapsed_ms") if isinstance(state, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"clock state: expected {{'elapsed_ms': <int >= 0>}}, got {state!r}.")
        self._base_ms = self.before_ms = self.now_ms = value


__all__ = ["TrainingClock"]
