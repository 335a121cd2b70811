#!/usr/bin/env python
"""Under ``torchrun --nproc_per_node=2``: overlapped asynchronous sharded saves of a FSDP2 model.

Usage: sharded_overlap_two_ranks.py ROOT

Three saves with ``overlap_snapshot=True``; right after the first and third save calls return, the
optimizer steps at once (no forward first, so the step would change them before the staging copy unless it waited for it);
after the second, a forward first changes a buffer that no optimizer owns, then the optimizer steps. Rank 0 writes the gathered state as it was at each save call
to ``ROOT/expected_<n>.pt``.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, testing  # noqa: E402
from tests.helpers.group_session import run_in_session  # noqa: E402


class Counted(nn.Module):
    """A layer with a buffer its forward changes (as BatchNorm's running stats do)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.register_buffer("calls", torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x)


def main(root: str) -> None:
    rank = dist.get_rank()
    torch.manual_seed(3)
    width = 1024
    model = nn.Sequential(Counted(width), nn.ReLU(), Counted(width))
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # The staging thread waits a moment before it copies: the step and forward right after the
    # call are then sure to come first, unless something holds them.
    testing.set_test_phase_hook(lambda phase, _: time.sleep(0.5) if phase == "sharded-staging" else None)
    policy = CheckpointPolicy(async_save=True, overlap_snapshot=True)
    manager = CheckpointManager(f"{root}/ck", policy, sharded=True)

    def backward() -> None:
        model(torch.randn(4, width)).sum().backward()

    for n in (1, 2, 3):
        backward()
        optimizer.step()
        optimizer.zero_grad()
        backward()  # gradients for the step right after the save
        expected = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save(expected, f"{root}/expected_{n}.pt")
        manager.save(epoch=n, step=n, model=model, optimizer=optimizer)
        if n == 2:  # the loop's own order: the forward changes the buffers (copied at the call) during the staging
            with torch.no_grad():
                model(torch.randn(4, width))
        optimizer.step()  # waits for the staging of the parameters and their state
        optimizer.zero_grad()
        manager.poll()
    manager.close()


if __name__ == "__main__":
    run_in_session(lambda: main(sys.argv[1]), f"{sys.argv[1]}/alive", timeout_s=60)
