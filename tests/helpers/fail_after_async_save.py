"""Train (tools/train.py arguments) and raise in training right after the first epoch-end save began.

Usage: python fail_after_async_save.py <tools/train.py args...>

The save's write is slowed through the library's test seam (a pause once the temp file is
fsynced), so with CHECKPOINT.ASYNC True the save is still in flight when the next epoch's
training raises. Prints ``save in flight at failure: True|False`` before raising, and
``committed when run() raised: True|False`` when the exception leaves ``run()``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from linnaeus import main  # noqa: E402
from linnaeus.checkpoint import testing  # noqa: E402
from linnaeus.runner.checkpoints import RunCheckpoints  # noqa: E402

phases: list[str] = []


def slow_write(phase: str, nbytes: int) -> None:
    phases.append(phase)
    if phase == "fsynced":
        time.sleep(2.0)


saved = [False]
_save_epoch = RunCheckpoints.maybe_save_epoch
_train_epoch = main.Trainer.train_epoch


def save_epoch(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    _save_epoch(self, *args, **kwargs)
    saved[0] = True


def train_epoch(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    if saved[0]:
        print(f"save in flight at failure: {'renamed' not in phases}", flush=True)
        raise RuntimeError("injected training failure after an epoch-end save began")
    return _train_epoch(self, *args, **kwargs)


if __name__ == "__main__":
    testing.set_test_phase_hook(slow_write)
    RunCheckpoints.maybe_save_epoch = save_epoch  # type: ignore[method-assign]
    main.Trainer.train_epoch = train_epoch  # type: ignore[method-assign]
    try:
        sys.exit(main.cli(sys.argv[1:]))
    except RuntimeError:
        # run() waits for the save in flight before its exception leaves it: a caller that
        # goes on (a sweep, a notebook) finds the checkpoint committed, not at interpreter exit.
        print(f"committed when run() raised: {'dir-synced' in phases}", flush=True)
        raise
