"""Train (tools/train.py arguments) with the run's first save held in the middle of its write.

Usage: python slow_first_save.py <seconds> <grace seconds> <tools/train.py args...>   (as torchrun's script)

The writer (rank 0) prints ``linnaeus-test-phase fsynced`` to stderr once the first save's temp
file is fsynced, then pauses ``<seconds>`` there before the save goes on to commit, so that a test
can kill the launcher while that save is in flight. Later saves are not slowed. A grace above 0
replaces the launcher watch's GRACE_S (how long a worker whose launcher died waits for its main
thread before ending the process itself).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from linnaeus.cli.commands import exit_process, pause_gc, resume_gc  # noqa: E402

pause_gc()  # the imports below as tools/train.py makes them
from linnaeus import main  # noqa: E402
from linnaeus.checkpoint import testing  # noqa: E402
from linnaeus.runner import launcher_watch  # noqa: E402
resume_gc()

held = [False]


def hold_first_save(phase: str, nbytes: int) -> None:
    if phase == "fsynced" and not held[0]:
        held[0] = True
        print(f"linnaeus-test-phase {phase} {nbytes}", file=sys.stderr, flush=True)
        time.sleep(float(sys.argv[1]))


if __name__ == "__main__":
    testing.set_test_phase_hook(hold_first_save)
    if float(sys.argv[2]) > 0:
        launcher_watch.GRACE_S = float(sys.argv[2])
    exit_process(main.cli(sys.argv[3:]))  # as tools/train.py ends
