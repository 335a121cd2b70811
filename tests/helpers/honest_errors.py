"""Library calls whose failure must name the real cause; run in a subprocess by
tests/checkpoint/test_honest_errors.py because each needs a process-wide condition:

    python tests/helpers/honest_errors.py fsize DIR        # RLIMIT_FSIZE: writes fail with EFBIG
    python tests/helpers/honest_errors.py unreadable DIR   # run without CAP_DAC_OVERRIDE (setpriv)
    python tests/helpers/honest_errors.py unreadable-shard DIR   # the same, DIR/run holds a sharded checkpoint
    python tests/helpers/honest_errors.py fsize-sharded DIR     # RLIMIT_FSIZE during a sync, then an async sharded save

Prints ``<ExceptionClass>: <message>`` of each failure, one per line.
"""

from __future__ import annotations

import resource
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, find_resume_point, verify_checkpoint  # noqa: E402


def report(fn) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
        print("no error")
    except Exception as e:  # noqa: BLE001 - the test reads what each failure says
        print(f"{type(e).__name__}: {' '.join(str(e).split())} | cause: {type(e.__cause__).__name__}: "
              f"{e.__cause__}", flush=True)


def main(what: str, directory: Path) -> None:
    if what == "fsize":
        manager = CheckpointManager(directory)  # created before the limit: its dir exists
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
        report(lambda: manager.save(epoch=1, step=1, model=torch.nn.Linear(512, 512)))
    elif what == "fsize-sharded":
        for background in (False, True):
            manager = CheckpointManager(directory / str(background), CheckpointPolicy(async_save=background),
                                        format="sharded")
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))
            report(lambda: (manager.save(epoch=1, step=1, model=torch.nn.Linear(512, 512)), manager.wait()))
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            manager.close_after_error()
    elif what == "unreadable":
        manager = CheckpointManager(directory / "run")
        report(lambda: find_resume_point(manager, explicit=str(directory / "elsewhere.pth"), auto=False,
                                         resolve=Path))
        report(lambda: find_resume_point(manager, auto=True))
    elif what == "unreadable-shard":
        report(lambda: find_resume_point(CheckpointManager(directory / "run", format="sharded"), auto=True))
        report(lambda: print(verify_checkpoint(directory / "run" / "checkpoint_epoch_2")))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
