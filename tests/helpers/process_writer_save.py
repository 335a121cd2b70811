"""A training process whose background saves go through the writer process; the test kills it mid-write.

    python tests/helpers/process_writer_save.py DIR

Commits step 1 (waits for it), forks a process that sleeps (as a DataLoader worker would, it holds
this process's end of the writer's socket), then installs the phase hook and starts the save of step 2: every
phase of that save prints ``linnaeus-test-phase <phase> <bytes> writer=<pid of the writer process>``
to stderr and pauses, so the test can ``kill -9`` this process while its writer process is writing.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy  # noqa: E402
from linnaeus.checkpoint.testing import set_test_phase_hook  # noqa: E402

NUMEL = 1 << 20  # 4 MiB per tensor: many "write" phases


def model(step: int) -> dict[str, torch.Tensor]:
    return {f"w{i}": torch.full((NUMEL,), float(step)) for i in range(4)}


def main() -> None:
    manager = CheckpointManager(sys.argv[1], CheckpointPolicy(async_save=True, writer_process=True), name="writer")
    manager.save(model=model(1), epoch=1, step=1)
    manager.wait()
    writer = manager._background
    assert writer.wait_ready(60), "the writer process did not start"
    # A process forked now holds this one's end of the socket to the writer process, as DataLoader
    # workers do: when this process dies, the writer sees no end-of-file and must die of its parent's death.
    worker = os.fork()
    if worker == 0:
        time.sleep(120)
        os._exit(0)
    print(f"linnaeus-test-worker {worker}", file=sys.stderr, flush=True)

    def hook(phase: str, nbytes: int) -> None:
        print(f"linnaeus-test-phase {phase} {nbytes} writer={writer.child_pid}", file=sys.stderr, flush=True)
        time.sleep(0.2)

    set_test_phase_hook(hook)
    manager.save(model=model(2), epoch=2, step=2)
    manager.wait()
    manager.close()


if __name__ == "__main__":
    main()
