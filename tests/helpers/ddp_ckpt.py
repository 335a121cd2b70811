"""Run under ``torchrun --nproc_per_node=2`` (gloo): DDP agreement of CheckpointManager.

    torchrun --standalone --nproc_per_node=2 tests/helpers/ddp_ckpt.py DIR

Prints one line per observation and ends with a forced synchronous failure on rank 0,
which must raise on both ranks and make the job exit non-zero.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from linnaeus.checkpoint import CheckpointError, CheckpointManager, CheckpointPolicy  # noqa: E402
from tests.helpers.rank_lines import say  # noqa: E402
from linnaeus.dist import barrier, get_rank, init_distributed  # noqa: E402




def main(root: Path) -> None:
    torch.set_num_threads(1)
    init_distributed()
    rank = get_rank()
    torch.manual_seed(rank)  # ranks have different RNG streams: all must be saved
    model = torch.nn.Linear(4, 4)
    directory = root / "checkpoints"

    manager = CheckpointManager(directory, CheckpointPolicy())
    say(f"rank {rank} lineage {manager.run_id} {manager.run_timestamp}")  # rank 0's, agreed at construction
    path = manager.save(epoch=1, step=10, model=model)
    say(f"rank {rank} saved {path} exists={path.exists()}")
    if rank == 0:
        rng = torch.load(path, weights_only=True)["rng"]
        differ = not torch.equal(rng[0]["torch"], rng[1]["torch"])
        say(f"rank 0 rng entries={len(rng)} differ={differ}")
    say(f"rank {rank} resumable {manager.find_resumable()}")

    # An exception inside a transaction on one rank discards the save on all of them.
    try:
        with manager.begin(epoch=2, step=20) as ckpt:
            ckpt["model"] = model.state_dict()
            if rank == 1:
                raise RuntimeError("rank 1 failed while assembling")
    except Exception as e:  # noqa: BLE001 - the helper reports what each rank saw
        say(f"rank {rank} transaction aborted: {type(e).__name__}")
    say(f"rank {rank} epoch2 exists={(directory / 'checkpoint_epoch_2.pth').exists()}")

    # Asynchronous save whose commit hook fails on rank 0: poll() raises on both ranks.
    def failing_hook(p: Path) -> None:
        raise OSError(f"hook refused {p.name}")

    amgr = CheckpointManager(directory, CheckpointPolicy(async_save=True, filename="async_{epoch}.pth"),
                             name="async", on_commit=failing_hook)
    amgr.save(epoch=3, step=30, model=model)
    raised = False
    for _ in range(500):  # every rank polls at the same points, as a training loop would each step
        try:
            amgr.poll()
        except CheckpointError as e:
            raised = True
            say(f"rank {rank} async failure raised: {e}")
            break
        time.sleep(0.02)
    say(f"rank {rank} async raised={raised}")

    # {rank} and {timestamp} render differently per rank; every rank must report rank 0's file.
    named = CheckpointManager(directory, CheckpointPolicy(filename="r{rank}_{timestamp}_{epoch}.pth"), name="ranked")
    if rank == 1:
        time.sleep(1.1)  # a later second on rank 1, so a local rendering would differ
    ranked = named.save(epoch=5, step=50, model=model)
    say(f"rank {rank} ranked path {ranked.name}")
    say(f"rank {rank} ranked path exists={ranked.exists()}")
    # A metric only rank 1 has: rank 0 cannot name the file, and all ranks raise instead of hanging.
    metric_named = CheckpointManager(directory, CheckpointPolicy(filename="m_{epoch}_{val_acc:.2f}.pth"), name="m")
    try:
        metric_named.save(epoch=6, step=60, metrics={"val/acc": 0.5} if rank == 1 else None, model=model)
    except CheckpointError as e:
        say(f"rank {rank} naming raised {type(e).__name__}: {e}")

    # A real I/O failure on rank 0 only: its checkpoint dir is replaced by a file.
    barrier()
    if rank == 0:
        shutil.rmtree(directory)
        directory.write_text("not a directory")
    barrier()
    try:
        manager.save(epoch=4, step=40, model=model)
    except CheckpointError as e:
        say(f"rank {rank} raised {type(e).__name__}: {e}")
        raise
    say(f"rank {rank} unexpectedly survived")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
