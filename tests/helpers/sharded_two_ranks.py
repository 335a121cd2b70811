#!/usr/bin/env python
"""Under ``torchrun --nproc_per_node=2``, the library with a FSDP2 model:

- two sharded saves; rank 0 also writes the full (gathered) model+optimizer state of the first to
  ``full_epoch_1.pt``, so the test can load the 2-rank checkpoint in one process and compare;
- gradient clipping over the shards: the norm ``clip_grad_norm_`` reports for the sharded model (and
  the clipped gradients) equal a plain model's on the same batch (``clip: equal``);
- a single-file checkpoint of a plain model (as a ddp run writes it) restored into the sharded model:
  the gathered state must equal the file's (``file->fsdp: equal``);
- a byte of rank 1's shard file of the newest checkpoint flipped (by rank 0) at two moments:
  1. after every rank has chosen it and read its manifest (``read``): the restore must fail on every
     rank, naming that file (each rank verifies the files its own load plan reads);
  2. before choosing (``choose``): every rank must resume from the older checkpoint.

Prints one line per rank and outcome for the test to check.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from linnaeus.checkpoint import (
    CheckpointCorruptError,  # noqa: E402
    CheckpointManager,  # noqa: E402
)
from linnaeus.dist import barrier  # noqa: E402
from tests.helpers.group_session import run_in_session  # noqa: E402
from linnaeus.engine.parallel import grad_norm_value  # noqa: E402
from tests.helpers.rank_lines import say  # noqa: E402


def objects(seed: int, shard: bool = True):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    if shard:
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer)
        fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def full(model, optimizer):
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def step(model, optimizer):
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def flip(path: str) -> None:
    if dist.get_rank() == 0:
        data = bytearray(open(path, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(path, "wb").write(bytes(data))
    barrier()


def main(root: str) -> None:
    rank = dist.get_rank()

    # Same init and the same batch on both ranks: the reduced (averaged) gradient is the plain model's.
    sharded, _ = objects(5)
    plain, _ = objects(5, shard=False)
    batch = torch.randn(6, 8)
    for m in (sharded, plain):
        m(batch).square().sum().backward()
    norms = [float(grad_norm_value(torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5))) for m in (sharded, plain)]
    grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters()}
    ok = abs(norms[0] - norms[1]) <= 1e-5 * norms[1] and all(
        torch.allclose(grads[n], p.grad, rtol=1e-5, atol=1e-7) for n, p in plain.named_parameters())
    say(f"rank{rank} clip: {'equal' if ok else 'DIFFERENT'} {norms}")
    model, optimizer = objects(0)
    manager = CheckpointManager(root, sharded=True)
    for epoch in (1, 2):
        step(model, optimizer)
        manager.save(epoch=epoch, step=epoch, model=model, optimizer=optimizer)
        if epoch == 1:
            gathered = full(model, optimizer)
            if rank == 0:
                torch.save(gathered, os.path.join(root, "..", "full_epoch_1.pt"))
    manager.close()

    # A ddp run's single file (plain model, index-keyed optimizer state), resumed by this fsdp run.
    plain, plain_opt = objects(3, shard=False)
    for _ in range(2):
        step(plain, plain_opt)
    files = CheckpointManager(os.path.join(root, "..", "files"))
    file_path = files.save(epoch=1, step=2, model=plain, optimizer=plain_opt)
    files.close()
    sharded, sharded_opt = objects(4)
    reader = CheckpointManager(os.path.join(root, "..", "files"))
    reader.restore(reader.load(file_path), path=file_path, model=sharded, optimizer=sharded_opt)
    reader.close()
    restored, expected = full(sharded, sharded_opt), full(plain, plain_opt)  # collectives: every rank
    ok = same(restored, expected) if rank == 0 else True
    say(f"rank{rank} file->fsdp: {'equal' if ok else 'DIFFERENT'}")
    newest = os.path.join(root, "checkpoint_epoch_2")

    restarted = CheckpointManager(root, sharded=True)
    path, state = restarted.load_resumable()
    flip(os.path.join(newest, "__1_0.distcp"))
    fresh, fresh_opt = objects(1)
    try:
        restarted.restore(state, path=path, model=fresh, optimizer=fresh_opt)
        say(f"rank{rank} read: restored {os.path.basename(path)}")
    except CheckpointCorruptError as e:
        say(f"rank{rank} read: CheckpointCorruptError: {e}")
    restarted.close()

    flip(os.path.join(newest, "__1_0.distcp"))  # undo, then damage it before the choice
    flip(os.path.join(newest, "__1_0.distcp"))
    again = CheckpointManager(root, sharded=True)
    fresh, fresh_opt = objects(2)
    result = again.resume(model=fresh, optimizer=fresh_opt)
    say(f"rank{rank} choose: resumed {os.path.basename(result.path)} step {result.progress['step']}")
    again.close()


if __name__ == "__main__":
    run_in_session(lambda: main(sys.argv[1]), os.path.join(sys.argv[1], "..", "alive"))
