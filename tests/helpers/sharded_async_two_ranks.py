#!/usr/bin/env python
"""Under ``torchrun --nproc_per_node=2``: asynchronous sharded saves of a FSDP2 model.

Usage: sharded_async_two_ranks.py ROOT

1. Three async saves; right after each save call returns, the weights are overwritten in place
   and an optimizer step runs (the state at save time is what must be committed). Rank 0 writes
   the gathered state as it was at each save call to ``ROOT/expected_<n>.pt``.
2. A fourth save whose temp directory rank 1's background job removes once DCP has written it (the
   library's test seam): the background save fails, and ``wait`` (its ``poll``) must raise on every rank.

The process group is initialised with a 37 s collective timeout; the background saves' own group
must have the same.

Each rank writes ``ROOT/rank<r>.txt``: ``group timeout: <s>``, ``poll: <error type>: <message>``, then ``done``;
and, once the process group is gone, ``ROOT/alive.rank<r>``: how many FSDP2 modules outlived it.
"""

import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, testing  # noqa: E402
from linnaeus.checkpoint.formats import background_group  # noqa: E402
from tests.helpers.group_session import run_in_session  # noqa: E402


def main(root: str) -> None:
    rank = dist.get_rank()
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    manager = CheckpointManager(f"{root}/ck", CheckpointPolicy(async_save=True), sharded=True)

    def train_step() -> None:
        model(torch.randn(4, 8)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    for n in (1, 2, 3):
        train_step()
        expected = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save(expected, f"{root}/expected_{n}.pt")
        manager.save(epoch=n, step=n, model=model, optimizer=optimizer)
        with torch.no_grad():  # the training goes on while the save is in the background
            for p in model.parameters():
                p.fill_(1000.0 + n)
        train_step()
        manager.poll()

    manager.wait()
    group_timeout = background_group()._get_backend(torch.device("cpu")).options._timeout.total_seconds()
    # Once DCP has written every file, rank 1's background job removes the temp directory (rank 0's
    # waits a moment so that it cannot commit first): hashing the shards fails on rank 1 at least.
    def remove_temp(phase: str, _: int) -> None:
        if phase != "sharded-written":
            return
        if rank == 1:
            for tmp in Path(root, "ck").glob(".checkpoint_epoch_4.tmp-*"):
                shutil.rmtree(tmp)
        else:
            time.sleep(0.5)

    testing.set_test_phase_hook(remove_temp)
    manager.save(epoch=4, step=4, model=model, optimizer=optimizer)
    try:
        manager.wait()  # the job's failure, raised on every rank as poll() raises it
        outcome = "no error"
    except Exception as e:  # noqa: BLE001 - reported to the test
        outcome = f"{type(e).__name__}: {e}"
    manager.close()
    with open(f"{root}/rank{rank}.txt", "w") as f:  # one file per rank: two processes' stdout lines interleave
        f.write(f"group timeout: {group_timeout:g}\npoll: {outcome}\ndone\n")


if __name__ == "__main__":
    run_in_session(lambda: main(sys.argv[1]), f"{sys.argv[1]}/alive", timeout_s=37)
