"""How long a launch takes to train again, phase by phase, counted from the process's own start.

A preemptible run pays this on every relaunch, so the runner says where it goes: one log line
before the first step (``Ready to train ...``), which ``benchmarks/resume_time.py`` reads too.
"""

from __future__ import annotations

import os
import time


def seconds_since_process_start() -> float:
    """Wall seconds since this process started (Linux: /proc; elsewhere since this module's import)."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return time.time() - (boot + started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


class StartupClock:
    """Marks the end of each start-up phase; :meth:`summary` is the ``Ready to train`` line."""

    def __init__(self, first: str) -> None:
        self._phases: list[tuple[str, float]] = [(first, seconds_since_process_start())]
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self._phases.append((phase, now - self._last))
        self._last = now

    def summary(self) -> str:
        total = sum(s for _, s in self._phases)
        parts = ", ".join(f"{name} {s:.2f} s" for name, s in self._phases)
        return f"Ready to train {total:.2f} s after the process started: {parts}"


__all__ = ["StartupClock", "seconds_since_process_start"]
