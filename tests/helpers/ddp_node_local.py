"""Run under ``torchrun --nproc_per_node=2`` (gloo): resume where each rank's checkpoint directory
is its own (node-local disks), simulated by a per-rank working directory.

    torchrun --standalone --nproc_per_node=2 tests/helpers/ddp_node_local.py ROOT auto|explicit

Rank r works in ``ROOT/node<r>`` and uses the relative directory ``checkpoints``, so the path rank 0
picks and broadcasts names a different file on rank 1 (as on a node-local disk). The test puts a
different valid checkpoint with its own valid sidecar under the same name in each. An uncaught
error exits non-zero.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from linnaeus.checkpoint import (
    CheckpointManager,  # noqa: E402
    find_resume_point,  # noqa: E402
)
from linnaeus.dist import get_rank, init_distributed  # noqa: E402


def main(root: Path, mode: str) -> None:
    torch.set_num_threads(1)
    init_distributed()
    rank = get_rank()
    os.chdir(root / f"node{rank}")
    manager = CheckpointManager(Path("checkpoints"))
    model = torch.nn.Linear(4, 4)
    point = find_resume_point(manager, explicit="ckpt.pth" if mode == "explicit" else "", auto=mode == "auto")
    assert point is not None
    manager.restore(point.state, path=point.path, model=model)
    os.write(1, f"rank {rank} loaded {point.path} weight[0,0]={model.weight[0, 0].item():.6f}\n".encode())


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), sys.argv[2])
