#!/usr/bin/env python
"""Under ``torchrun --nproc_per_node=2`` (gloo, CPU): an EMA sharded like its FSDP2 model
(``wrap_model(..., ema=...)``, as the runner builds it under ``TRAIN.STRATEGY fsdp``) through
checkpoints. ``ROOT`` is argv[1]; the test wrote ``ROOT/one/`` (a sharded checkpoint with EMA saved
by one process, plain modules) and ``ROOT/one.pt`` (its model and EMA state dicts) before.

- the EMA starts from rank 0's values on every rank (``ema-init: equal``);
- each rank holds only its shard of the EMA weights, and three updates of the sharded EMA equal
  timm's ``ModelEmaV3`` of a plain model trained on the same batches (``ema-update: equal``);
- a sharded save with the EMA; rank 0 writes the gathered model and EMA to ``ROOT/full.pt`` (the
  test resumes this checkpoint in one process and compares);
- ``ROOT/one/`` (1 process) resumed into the sharded model and EMA: resharded by DCP, the gathered
  state equals ``ROOT/one.pt`` (``reshard 1->2: equal``);
- a ddp run's single file (plain model and EMA) restored into the sharded model and EMA: the
  gathered EMA equals the file's (``file->fsdp ema: equal``); a single file without EMA refuses
  an EMA, as it does for a plain model (``file-no-ema: <error>``).

Prints one line per rank and outcome for the test to check.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

from linnaeus.checkpoint import (
    CheckpointIncompatibleError,  # noqa: E402
    CheckpointManager,  # noqa: E402
)
from tests.helpers.group_session import run_in_session  # noqa: E402
from linnaeus.engine.optim import ShardableModelEma  # noqa: E402
from linnaeus.engine.parallel import wrap_model  # noqa: E402
from tests.helpers.rank_lines import say  # noqa: E402


class Net(nn.Module):
    """``blocks`` are sharded units; BatchNorm's buffers stay plain tensors beside DTensor parameters;
    5 and 24 rows split unevenly over 2 and 3 ranks."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 24), nn.BatchNorm1d(24)), nn.Linear(24, 24)])
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.head(x)


def objects(seed: int, shard: bool = True, ema_class: type = ShardableModelEma):
    # Sharded: each rank starts from its own values (as the runner seeds them); wrap_model gives the
    # model and its EMA rank 0's, which are the plain model's of the same seed.
    torch.manual_seed(seed + (dist.get_rank() if shard else 0))
    model = Net()
    ema = ema_class(model, decay=0.8)  # before sharding: FSDP2 refuses deepcopy
    if shard:
        wrap_model(model, "fsdp", ema=ema)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2), ema


def train(model, optimizer, ema, steps: int) -> None:
    for step in range(1, steps + 1):
        torch.manual_seed(100 + step)  # the same batch on every rank: the averaged gradient is a plain model's
        model(torch.randn(6, 8)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model, step=step)


def full(module: nn.Module) -> dict:
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def save_and_resume_files(root: str, rank: int) -> None:
    model, optimizer, ema = objects(0)
    plain, plain_opt, plain_ema = objects(0, shard=False, ema_class=ModelEmaV3)
    initial = full(ema)  # rank 0's values on every rank (the first update, at step 1, copies the model anyway)
    say(f"rank{rank} ema-init: {'equal' if rank or same(initial, plain_ema.state_dict()) else 'DIFFERENT'}")
    train(model, optimizer, ema, 3)
    train(plain, plain_opt, plain_ema, 3)
    local = sum(p.to_local().numel() for p in ema.module.parameters() if isinstance(p, DTensor))
    whole = sum(p.numel() for p in plain_ema.module.parameters())
    gathered = full(ema)  # a collective: every rank
    ok = same(gathered, plain_ema.state_dict()) if rank == 0 else True
    say(f"rank{rank} ema-update: {'equal' if ok else 'DIFFERENT'} shard {local} of {whole}")
    manager = CheckpointManager(os.path.join(root, "ck"), sharded=True)
    manager.save(epoch=1, step=3, model=model, optimizer=optimizer, ema=ema)
    manager.close()
    gathered_model = full(model)
    if rank == 0:
        torch.save({"model": gathered_model, "ema": gathered}, os.path.join(root, "full.pt"))

    # A ddp run's single file (plain model and EMA on every rank), resumed by this fsdp run; and one without EMA.
    plain, plain_opt, plain_ema = objects(3, shard=False)
    train(plain, plain_opt, plain_ema, 2)
    files = CheckpointManager(os.path.join(root, "files"))
    with_ema = files.save(epoch=1, step=2, model=plain, optimizer=plain_opt, ema=plain_ema)
    without = files.save(epoch=2, step=2, model=plain, optimizer=plain_opt)
    files.close()
    reader = CheckpointManager(os.path.join(root, "files"))
    model, optimizer, ema = objects(4)
    reader.restore(reader.load(with_ema), path=with_ema, model=model, optimizer=optimizer, ema=ema)
    restored = full(ema)
    say(f"rank{rank} file->fsdp ema: {'equal' if rank or same(restored, plain_ema.state_dict()) else 'DIFFERENT'}")
    try:
        reader.restore(reader.load(without), path=without, model=model, optimizer=optimizer, ema=ema)
        say(f"rank{rank} file-no-ema: restored")
    except CheckpointIncompatibleError as e:
        say(f"rank{rank} file-no-ema: {type(e).__name__}: {e}")
    reader.close()


def resume_one(root: str, rank: int) -> None:
    model, optimizer, ema = objects(7)
    manager = CheckpointManager(os.path.join(root, "one"), sharded=True)
    result = manager.resume(model=model, optimizer=optimizer, ema=ema)
    manager.close()
    got = {"model": full(model), "ema": full(ema)}  # collectives: every rank
    ok = result is not None and result.progress["step"] == 2
    if rank == 0:
        saved = torch.load(os.path.join(root, "one.pt"), weights_only=True)
        ok = ok and same(got["model"], saved["model"]) and same(got["ema"], saved["ema"])
    say(f"rank{rank} reshard 1->2: {'equal' if ok else 'DIFFERENT'}")


def main(root: str) -> None:
    rank = dist.get_rank()
    save_and_resume_files(root, rank)
    resume_one(root, rank)


if __name__ == "__main__":
    run_in_session(lambda: main(sys.argv[1]), f"{sys.argv[1]}/alive")
