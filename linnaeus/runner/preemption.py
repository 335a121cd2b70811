"""Preemption: the first of TRAIN.PREEMPT_SIGNALS (SIGTERM, SIGINT, SIGUSR1) asks for a graceful stop; a
second one exits at once."""

from __future__ import annotations

import logging
import os
import signal
import time
from types import FrameType
from typing import Any

logger = logging.getLogger("linnaeus")


class PreemptionHandler:
    """Context manager that turns ``signals`` (default SIGTERM, SIGINT) into a flag the training loop polls.

    The loop finishes its current optimizer step, commits a checkpoint and exits 0. A second
    signal (more than ``DUPLICATE_WINDOW_S`` after the first) restores the default disposition and re-delivers the signal, so an impatient
    operator (or a scheduler's kill escalation) still gets an immediate exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    # A scheduler that signals the whole process group and torchrun, which forwards the same
    # signal to its workers, deliver it twice within microseconds: that is one request.
    DUPLICATE_WINDOW_S = 1.0

    def __init__(self, enabled: bool = True, signals: tuple[int, ...] = SIGNALS) -> None:
        self.enabled = enabled
        self.signals = tuple(signals)
        self.requested_signal: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.requested_signal is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.requested_signal is not None:
            if now - self._first_at < self.DUPLICATE_WINDOW_S:
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested_signal, self._first_at = signum, now
        # Logging from a signal handler can deadlock on the handler's lock; write directly.
        os.write(2, f"linnaeus: received {signal.Signals(signum).name}; finishing the current step and "
                    "saving a checkpoint (send it again to exit immediately)\n".encode())

    def __enter__(self) -> "PreemptionHandler":
        if self.enabled:
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
