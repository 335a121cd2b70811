"""Preemption: the first SIGTERM/SIGINT asks for a graceful stop, the second one exits at once."""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any

logger = logging.getLogger("linnaeus")


class PreemptionHandler:
    """Context manager that turns SIGTERM/SIGINT into a flag the training loop polls.

    The loop finishes its current optimizer step, commits a checkpoint and exits 0. A second
    signal restores the default disposition and re-delivers the signal, so an impatient
    operator (or a scheduler's kill escalation) still gets an immediate exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested_signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.requested_signal is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested_signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested_signal = signum
        # Logging from a signal handler can deadlock on the handler's lock; write directly.
        os.write(2, f"linnaeus: received {signal.Signals(signum).name}; finishing the current step and "
                    "saving a checkpoint (send it again to exit immediately)\n".encode())

    def __enter__(self) -> "PreemptionHandler":
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()
