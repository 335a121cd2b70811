#!/usr/bin/env python
"""Under ``torchrun --nproc_per_node=3``: 5 MiB moved from rank 0 to rank 2 alone with
:func:`~linnaeus.checkpoint.disk.pair_mover` (in 2 MiB chunks), while rank 1 takes no part and goes
straight to the barrier, as a rank that neither holds nor wants a file does. Rank 2 prints whether the
bytes arrived whole."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from datetime import timedelta  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from linnaeus.checkpoint.disk import chunks  # noqa: E402
from tests.helpers.rank_lines import say  # noqa: E402

SIZE = 5 << 20

if __name__ == "__main__":
    dist.init_process_group("gloo", timeout=timedelta(seconds=20))
    rank = dist.get_rank()
    chunks.CHUNK_BYTES = 2 << 20
    data = torch.arange(SIZE, dtype=torch.int64).to(torch.uint8).numpy().tobytes()
    received = bytearray()
    if rank != 1:
        offset = [0]

        def read(view: memoryview) -> None:
            view[:] = data[offset[0]:offset[0] + len(view)]
            offset[0] += len(view)

        chunks.move_chunks(SIZE, chunks.pair_mover(0, [2]), read=read if rank == 0 else None,
                           take=(lambda view: received.extend(view)) if rank == 2 else None)
    dist.barrier()
    if rank == 2:
        say(f"rank 2 received whole: {bytes(received) == data}")
    dist.destroy_process_group()
