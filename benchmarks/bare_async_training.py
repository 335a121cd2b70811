"""The floor under ``checkpoint_overhead.py``: the same model and data trained by a hand-written loop,
checkpointed the way a user would write an async save by hand.

    python benchmarks/bare_async_training.py --every 10 --steps 150 --opts <the runner's overrides>
    torchrun --standalone --nproc_per_node=2 benchmarks/bare_async_training.py --sharded --every 10 ...

Every ``--every`` optimizer steps the loop copies the model's and the optimizer's state into CPU
buffers kept from one save to the next (the least an async save must do while the loop waits), and a
thread ``torch.save``s the copy and fsyncs it, one save in flight. No hash, no sidecar, no commit
protocol, no retention beyond overwriting one file. With ``--sharded`` (under torchrun) the model is
sharded with FSDP2 as the runner's ``TRAIN.STRATEGY fsdp`` does, and each save is DCP's own overlapped
async save: ``get_state_dict`` and ``dcp.async_save`` with asynchronous staging on a gloo group of its
own, the next optimizer step waiting for the staging. Without ``--every`` it trains with no save. It
prints the runner's log line (global images per second) every ``TRAIN.LOG_INTERVAL`` steps, so
``checkpoint_overhead.py`` reads both with one parser.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.utils.data import DataLoader, DistributedSampler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linnaeus.config import load_config  # noqa: E402
from linnaeus.data.build import build_data  # noqa: E402
from linnaeus.dist import get_world_size, init_distributed, is_main_process  # noqa: E402
from linnaeus.engine.parallel import wrap_model  # noqa: E402
from linnaeus.engine.optim import build_optimizer  # noqa: E402
from linnaeus.models.build import build_model  # noqa: E402


class BareAsyncSave:
    """Copy into kept buffers at the call; ``torch.save`` + fsync on a thread; one in flight."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.buffers: dict | None = None
        self.thread: threading.Thread | None = None

    def __call__(self, state: dict) -> None:
        if self.thread is not None:
            self.thread.join()
        self.buffers = _copy_into(state, self.buffers)
        self.thread = threading.Thread(target=self._write, args=(self.buffers,))
        self.thread.start()

    def _write(self, snapshot: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            torch.save(snapshot, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join()


class BareShardedAsyncSave:
    """DCP's own overlapped async save: stage on DCP's thread, the next step waits for the staging."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0
        self.group = dist.new_group(backend="gloo")
        self.stager = DefaultStager(StagingOptions(use_pinned_memory=False, use_shared_memory=False,
                                                   use_async_staging=True, use_non_blocking_copy=False))
        self.response = None

    def __call__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.close()  # one save in flight
        msd, osd = get_state_dict(model, optimizer)
        self.response = dcp.async_save({"model": msd, "optim": osd}, checkpoint_id=self.folder / f"bare_{self.count % 2}",
                                       process_group=self.group, async_stager=self.stager)
        self.count += 1

    def before_step(self) -> None:
        if self.response is not None:
            self.response.staging_completion.result()

    def close(self) -> None:
        """Wait for the save in flight to be written."""
        if self.response is not None:
            self.response.upload_completion.result()
            self.response = None

    def release(self) -> None:
        """After the last save: the stager's thread and the group go (a collective)."""
        self.close()
        self.stager.close()
        dist.destroy_process_group(self.group)


def _copy_into(value, buffer):
    if isinstance(value, torch.Tensor):
        if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
            return value.detach().to("cpu", copy=True)
        return buffer.copy_(value.detach())
    if isinstance(value, dict):
        return {k: _copy_into(v, None if buffer is None else buffer.get(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_into(v, None if buffer is None else buffer[i]) for i, v in enumerate(value)]
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--every", type=int, default=0, help="save every N optimizer steps (0: never)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True, help="folder for the checkpoint file")
    p.add_argument("--sharded", action="store_true", help="FSDP2 over the torchrun ranks, saved by dcp.async_save")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args()

    cfg = load_config(args.cfg, args.opts)
    if args.sharded:
        init_distributed()
    torch.manual_seed(cfg.EXPERIMENT.SEED)
    data = build_data(cfg)
    sampler = DistributedSampler(data.train_dataset, shuffle=True, drop_last=True) if args.sharded else None
    loader = DataLoader(data.train_dataset, batch_size=cfg.DATA.BATCH_SIZE, shuffle=sampler is None, sampler=sampler,
                        drop_last=True, num_workers=cfg.DATA.NUM_WORKERS)
    task_keys = list(cfg.DATA.TASK_KEYS)
    model = build_model(cfg, data.taxonomy.num_classes)
    if args.sharded:
        model = wrap_model(model, "fsdp")
    optimizer = build_optimizer(cfg, model)
    out = Path(args.out)
    sharded_save = BareShardedAsyncSave(out) if args.sharded else None
    save = BareAsyncSave(out / "bare.pth")
    model.train()
    step, seen, window = 0, 0, time.perf_counter()
    while step < args.steps:
        for images, labels in loader:
            outputs = model(images)
            loss = sum(F.cross_entropy(outputs[k], labels[:, j]) for j, k in enumerate(task_keys))
            loss.backward()
            if sharded_save is not None:
                sharded_save.before_step()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, seen = step + 1, seen + labels.shape[0] * get_world_size()
            if args.every and step % args.every == 0:
                if sharded_save is not None:
                    sharded_save(model, optimizer)
                else:
                    save({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
            if step % cfg.TRAIN.LOG_INTERVAL == 0 and is_main_process():
                now = time.perf_counter()
                print(f"epoch 1 step {step} (epoch step {step}) loss {loss.item():.4f} "
                      f"{seen / (now - window):.1f} img/s", flush=True)
            if step % cfg.TRAIN.LOG_INTERVAL == 0:
                seen, window = 0, time.perf_counter()
            if step == args.steps:
                break
        if sampler is not None:
            sampler.set_epoch(step)
    save.close()
    if sharded_save is not None:
        sharded_save.release()
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
