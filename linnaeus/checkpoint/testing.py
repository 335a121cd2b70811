"""Test seam: a hook the store calls between the steps of every save and deletion.

Fault-injection tests install a hook to stop a save at a chosen step and kill the process
there. Nothing here is configured from the environment: a test (or a helper script that
knows it runs under a test) installs the hook explicitly.

Phases, in order: ``open``, ``write`` (with the bytes written so far, every 256 KiB),
``written``, ``fsynced``; then for a new name ``sidecar-temp``, ``sidecar``, ``renamed``,
``dir-synced``, and for an overwrite of a committed file ``pending-temp``, ``pending``,
``renamed``, ``dir-synced``, ``sidecar-replaced``, ``sidecar-synced``; then ``latest-temp``,
``latest``. Retention reports ``deleted-data`` between deleting a file and its sidecar. A
sharded save reports ``sharded-written`` once DCP has written every rank's files into the temp
directory (nothing hashed or committed yet), then ``latest-temp`` and ``latest``. An overlapped
single-file snapshot reports ``snapshot-deferred`` on the writer thread before it copies what it
deferred (the optimizers' steps wait meanwhile); an overlapped sharded save reports
``sharded-staging`` on DCP's staging thread before it copies.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

PhaseHook = Callable[[str, int], None]
# Bytes serialised between two "write" phases.
WRITE_PHASE_EVERY = 256 << 10

_phase_hook: PhaseHook | None = None


def set_test_phase_hook(hook: PhaseHook | None) -> None:
    """Call ``hook(phase, bytes_written)`` at each step of every save (None removes it)."""
    global _phase_hook
    _phase_hook = hook


def install_phase_delay(delay_s: float) -> None:
    """At every phase print ``linnaeus-test-phase <phase> <bytes>`` to stderr and sleep
    ``delay_s``, so that a test watching another process's stderr can kill it there."""

    def hook(phase: str, nbytes: int) -> None:
        print(f"linnaeus-test-phase {phase} {nbytes}", file=sys.stderr, flush=True)
        time.sleep(delay_s)

    set_test_phase_hook(hook)


def phase_hook_installed() -> bool:
    """Whether a hook is installed (a writer process relays its phases to this process only then)."""
    return _phase_hook is not None


def phase(name: str, nbytes: int = 0) -> None:
    """Report reaching ``name`` (called by the store; a no-op unless a hook is installed)."""
    if _phase_hook is not None:
        _phase_hook(name, nbytes)
