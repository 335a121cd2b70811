#!/usr/bin/env python
"""A save killed half-way: ``killed_save.py FORMAT DIR PHASE``.

Commits one checkpoint (epoch 1) in FORMAT into DIR, then starts a second one (epoch 2) and
exits at once (``os._exit(9)``, no cleanup, as a kill -9 would) when the save reports PHASE
(:mod:`linnaeus.checkpoint.testing`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from linnaeus.checkpoint import CheckpointManager, testing  # noqa: E402


def main() -> None:
    fmt, directory, kill_at = sys.argv[1:4]
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    manager = CheckpointManager(directory, format=fmt)
    manager.save(epoch=1, step=1, model=model)
    testing.set_test_phase_hook(lambda phase, _: os._exit(9) if phase == kill_at else None)
    manager.save(epoch=2, step=2, model=model)
    os._exit(3)  # the phase never came


if __name__ == "__main__":
    main()
