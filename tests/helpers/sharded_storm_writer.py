#!/usr/bin/env python
"""A training loop of the library's own that saves a sharded checkpoint after every step, until it
is killed: FSDP2 under ``torchrun`` (2 ranks), a plain model in one process. Rank 0 prints
``fresh`` or ``resumed step N``, then ``saved step N sum S`` after each committed save."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy  # noqa: E402
from linnaeus.dist import get_rank, get_world_size, init_distributed  # noqa: E402
from linnaeus.engine.parallel import wrap_model  # noqa: E402


class Steps:
    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        self.step = sd["step"]


def main() -> None:
    init_distributed()
    torch.manual_seed(0)
    # ~2 MB of parameters: a save takes long enough that kills land inside it.
    model = nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 8))
    if get_world_size() > 1:
        model = wrap_model(model, "fsdp")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = Steps()
    manager = CheckpointManager(sys.argv[1], CheckpointPolicy(keep_last_n=3), sharded=True)
    resumed = manager.resume(model=model, optimizer=optimizer, steps=steps)
    if get_rank() == 0:
        print("fresh" if resumed is None else f"resumed step {resumed.progress['step']}", flush=True)
    while steps.step < 100000:
        model(torch.randn(16, 64)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        steps.step += 1
        manager.save(epoch=0, step=steps.step, model=model, optimizer=optimizer, steps=steps,
                     filename=f"ckpt_step_{steps.step:06d}")
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if get_rank() == 0:
            print(f"saved step {steps.step} sum {sum(float(v.double().sum()) for v in full.values())!r}", flush=True)


if __name__ == "__main__":
    main()
