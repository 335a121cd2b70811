"""Train (tools/train.py arguments) with every rank but 0 holding back each sharded commit's second
phase: once every node's part is durable (``sharded-parts-prepared``), they print
``linnaeus-test-phase held-back`` to stderr and sleep a random 0.5-0.8 s before renaming, while rank
0's node commits at once: a kill in that time lands between the nodes' commits.

Usage: torchrun ... uneven_commit_train.py <tools/train.py args...>
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from linnaeus import main  # noqa: E402
from linnaeus.checkpoint import testing  # noqa: E402
from linnaeus.cli.commands import exit_process  # noqa: E402

RANK = int(os.environ.get("RANK", "0"))


def hold_back(phase: str, nbytes: int) -> None:
    if phase == "sharded-parts-prepared" and RANK != 0:
        print("linnaeus-test-phase held-back", file=sys.stderr, flush=True)
        time.sleep(random.uniform(0.5, 0.8))


if __name__ == "__main__":
    testing.set_test_phase_hook(hold_back)
    exit_process(main.cli(sys.argv[1:]))
