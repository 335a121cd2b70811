"""A worker whose main thread is blocked when its parent dies, with an async save in flight.

Usage: python blocked_orphan.py <checkpoint dir>   (started by a throwaway parent that the test kills)

Under a LauncherWatch (grace 1 s) it starts an asynchronous save of 4 MiB (hashed on the
library's executor threads, which then idle forever) whose write is held 3 s once fsynced,
prints ``blocked`` and blocks its main thread in a socket read that nothing answers (as a rank
waits inside a gloo collective whose peer is silent). The watch must end the process itself,
after the save in flight has committed.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, testing  # noqa: E402
from linnaeus.runner.launcher_watch import LauncherWatch  # noqa: E402


def hold(phase: str, nbytes: int) -> None:
    if phase == "fsynced":
        time.sleep(3.0)


if __name__ == "__main__":
    testing.set_test_phase_hook(hold)
    with LauncherWatch(enabled=True, grace_s=1.0):
        manager = CheckpointManager(sys.argv[1], CheckpointPolicy(async_save=True))
        manager.save(epoch=1, step=1, model={"w": torch.arange(1 << 20, dtype=torch.float32)})
        silent, _peer = socket.socketpair()
        print("blocked", flush=True)
        silent.recv(1)  # never answered
