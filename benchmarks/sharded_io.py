"""Sharded checkpoint I/O ratios, measured side by side in one run of a FSDP2 model.

    torchrun --standalone --nproc_per_node=2 benchmarks/sharded_io.py [--size-mb 1024] [--repeats 3] [--dir DIR]

``--size-mb`` is the whole checkpoint (parameters + AdamW's two moments), sharded over the ranks.

(a) verified sharded save (manifest, hashes, fsyncs, one rename, latest) vs a bare ``dcp.save``
    of the same state                                          target: throughput >= 0.9x
(b) sharded save by every rank vs a rank-0 single-file save of the gathered state (what a
    ddp-style save does)                                       target: faster (ratio > 1)
(c) verified sharded load (manifest + every file hashed, then DCP through the verifying
    reader) vs a bare ``dcp.load``                             target: <= 1.3x
    twice: warm (the files just written, in the page cache) and cold (evicted with
    ``posix_fadvise(DONTNEED)`` first, as after a restart)
(f) the same pair for the 2-rank checkpoint loaded (resharded) on 1 and on 4 ranks: rank 0 then
    launches ``torchrun --nproc_per_node=K`` of this script with ``--load-only`` for each K in
    ``--reshard-to`` (default 1,4) and reports its medians

Each pair runs alternately ``--repeats`` times and the medians are compared, so both sides see
the same machine load.

With ``--async-saves N`` (N >= 50 for the memory bound; e.g. ``--size-mb 64 --async-saves 50``) it
measures asynchronous sharded saves instead, each after an in-place change of every weight:

(d) time the training is blocked by an async save (staging) vs a sync sharded save
                                                               target: <= 5 %
(d2) the same with overlapped snapshots (``overlap_snapshot=True``): the call plus the wait at the
    next optimizer step, after a stand-in forward and backward of ``--step-s`` seconds (matrix
    products), vs a sync sharded save                            target: <= 1 %
    and its floor in the same run: ``get_state_dict`` + ``dcp.async_save`` with DCP's own
    asynchronous staging, the same loop order, vs a bare ``dcp.save``
(e) resident memory of each rank after the last of N async saves minus after the second (the
    staging buffers exist from the first save on) vs this rank's share of one checkpoint
                                                               target: growth < 1 checkpoint
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from results import record
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy  # noqa: E402
from linnaeus.checkpoint.disk import clear_digest_cache  # noqa: E402
from linnaeus.dist import all_gather_object, barrier, broadcast_object, get_rank, get_world_size, init_distributed  # noqa: E402
from linnaeus.engine.parallel import wrap_model  # noqa: E402

from benchmarks.bare_async_training import BareShardedAsyncSave  # noqa: E402
from benchmarks.checkpoint_io import stand_in_step  # noqa: E402


def build(size_mb: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    layers, width = 8, 1024
    rows = max(1, (size_mb << 20) // 4 // 3 // layers // width)  # params + 2 moments = size_mb
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, rows, bias=False) if i % 2 == 0 else nn.Linear(rows, width, bias=False)
                            for i in range(layers)])
    model = wrap_model(model, "fsdp") if get_world_size() > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return model, optimizer


def timed(fn: Callable[[], object]) -> float:
    barrier()
    start = time.perf_counter()
    fn()
    barrier()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default="")
    p.add_argument("--async-saves", type=int, default=0)
    p.add_argument("--step-s", type=float, default=0.5, help="(d2)'s stand-in forward and backward (seconds)")
    p.add_argument("--reshard-to", default="1,4", help="world sizes to load the checkpoint on ('' for none)")
    p.add_argument("--load-only", default="", help=argparse.SUPPRESS)  # ROOT: (f)'s child launch
    args = p.parse_args()
    init_distributed()
    if args.load_only:
        model, optimizer = build(args.size_mb)
        load_only(Path(args.load_only), model, optimizer, args.repeats)
        return
    # Rank 0 makes the directory; the others would leave empty ones behind.
    made = tempfile.mkdtemp(prefix="sharded_io_", dir=args.dir or None) if get_rank() == 0 else None
    root = Path(broadcast_object(made))
    model, optimizer = build(args.size_mb)
    if args.async_saves:
        async_saves(root, model, optimizer, args.async_saves, args.step_s)
        return
    rows: dict[str, list[float]] = {k: [] for k in ("verified", "bare", "file", "vload", "bload", "vcold", "bcold")}
    manager = CheckpointManager(root / "sharded", CheckpointPolicy(keep_last_n=1), sharded=True)
    files = CheckpointManager(root / "files", CheckpointPolicy(keep_last_n=1))
    try:
        for i in range(args.repeats):
            rows["verified"].append(timed(lambda: manager.save(epoch=0, step=i, model=model, optimizer=optimizer,
                                                               filename=f"ck_{i}")))

            def bare_save() -> None:
                msd, osd = get_state_dict(model, optimizer)
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=root / f"bare_{i}")

            rows["bare"].append(timed(bare_save))

            def file_save() -> None:
                full = get_state_dict(model, optimizer,
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
                files.save(epoch=0, step=i, model=full[0], optimizer=_Fixed(full[1]), filename=f"f_{i}.pth")

            rows["file"].append(timed(file_save))
            latest = root / "sharded" / f"ck_{i}"
            rows["vload"].append(timed(lambda: manager.restore(manager.load(latest), path=latest, model=model,
                                                               optimizer=optimizer)))

            def bare_load() -> None:
                msd, osd = get_state_dict(model, optimizer)
                dcp.load({"model": msd, "optim": osd}, checkpoint_id=root / f"bare_{i}")

            rows["bload"].append(timed(bare_load))
            # The same two loads from a cold page cache, as after a relaunch on a restarted machine.
            evict(latest)
            clear_digest_cache()  # this process's record of files it hashed: the cold load must hash them again
            rows["vcold"].append(timed(lambda: manager.restore(manager.load(latest), path=latest, model=model,
                                                               optimizer=optimizer)))
            evict(root / f"bare_{i}")
            rows["bcold"].append(timed(bare_load))
            if get_rank() == 0 and i < args.repeats - 1:
                shutil.rmtree(root / f"bare_{i}", ignore_errors=True)
        med = {k: statistics.median(v) for k, v in rows.items()}
        last = args.repeats - 1
        resharded = {}
        if get_rank() == 0:  # the other ranks wait at the barrier below
            for k in [int(w) for w in args.reshard_to.split(",") if w.strip()]:
                resharded[k] = launch_load_only(k, root, f"ck_{last}", f"bare_{last}", args)
        barrier()
        if get_rank() == 0:
            size = sum(f.stat().st_size for f in (root / "sharded" / f"ck_{args.repeats - 1}").iterdir()) / 2**20
            print(f"\nsharded checkpoint {size:.0f} MiB on {get_world_size()} rank(s), median of {args.repeats}")
            print(f"{'comparison':<58}{'ours s':>9}{'other s':>9}{'ratio':>8}  target")
            for name, ours, other, ratio, target in (
                ("(a) verified sharded save vs bare dcp.save (throughput)", med["verified"], med["bare"],
                 med["bare"] / med["verified"], ">= 0.9"),
                ("(b) sharded save vs rank-0 single-file save (speed-up)", med["verified"], med["file"],
                 med["file"] / med["verified"], "> 1"),
                ("(c) verified sharded load vs bare dcp.load (time)", med["vload"], med["bload"],
                 med["vload"] / med["bload"], "<= 1.3"),
                ("(c) the same, both from a cold page cache (time)", med["vcold"], med["bcold"],
                 med["vcold"] / med["bcold"], "<= 1.3"),
            ):
                print(f"{name:<58}{ours:>9.2f}{other:>9.2f}{ratio:>8.2f}  {target}")
            for k, (vload, bload) in resharded.items():
                name = f"(f) {get_world_size()}-rank checkpoint loaded on {k} rank(s), verified vs bare"
                print(f"{name:<58}{vload:>9.2f}{bload:>9.2f}{vload / bload:>8.2f}  <= 1.3")
            tag = f"sharded_io {get_world_size()} ranks"
            pair = lambda a, b: [x / y for x, y in zip(rows[a], rows[b])]  # noqa: E731 - one per interleaved pair
            record(tag, "(a) verified sharded save: throughput / bare dcp.save", pair("bare", "verified"), ">= 0.9")
            record(tag, "(c) verified sharded load / bare dcp.load, warm", pair("vload", "bload"), "<= 1.2")
            record(tag, "(c) verified sharded load / bare dcp.load, cold", pair("vcold", "bcold"), "<= 1.2")
            for k, (vload, bload) in resharded.items():
                record(tag, f"(f) loaded on {k} rank(s): verified / bare dcp.load (one pair)", [vload / bload], "<= 1.2")
    finally:
        _finish(root, manager, files)


def evict(directory: Path) -> None:
    """Drop ``directory``'s files from the page cache (they are fsynced, so clean pages go at once)."""
    barrier()
    if get_rank() == 0:
        for f in directory.iterdir():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    barrier()


def launch_load_only(world: int, root: Path, sharded: str, bare: str, args: argparse.Namespace) -> tuple[float, float]:
    """(verified, bare) median load seconds of ``root``'s checkpoints on ``world`` ranks, from a child torchrun."""
    env = {k: v for k, v in os.environ.items()  # this process's own torchrun settings must not leak in
           if not k.startswith(("TORCHELASTIC_", "MASTER_", "GROUP_", "ROLE_", "LOCAL_"))
           and k not in ("RANK", "WORLD_SIZE")}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                          __file__, "--size-mb", str(args.size_mb), "--repeats", str(args.repeats),
                          "--load-only", f"{root}:{sharded}:{bare}"],
                         env=env, check=True, capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("load_only "))
    _, vload, bload = line.split()
    return float(vload), float(bload)


def load_only(spec: Path, model: nn.Module, optimizer: torch.optim.Optimizer, repeats: int) -> None:
    """(f)'s child: verified and bare loads of checkpoints another world size wrote, alternately."""
    root, sharded, bare = str(spec).split(":")
    manager = CheckpointManager(Path(root) / "reshard", sharded=True)
    latest = Path(root) / "sharded" / sharded
    vload, bload = [], []
    try:
        for _ in range(repeats):
            vload.append(timed(lambda: manager.restore(manager.load(latest), path=latest, model=model,
                                                       optimizer=optimizer)))

            def bare_load() -> None:
                msd, osd = get_state_dict(model, optimizer)
                dcp.load({"model": msd, "optim": osd}, checkpoint_id=Path(root) / bare)

            bload.append(timed(bare_load))
        if get_rank() == 0:
            print(f"load_only {statistics.median(vload):.4f} {statistics.median(bload):.4f}", flush=True)
    finally:
        manager.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmRSS:"))


def async_saves(root: Path, model: nn.Module, optimizer: torch.optim.Optimizer, n: int, step_s: float) -> None:
    """(d), (d2) and (e) of the module docstring."""
    sync = CheckpointManager(root / "sync", CheckpointPolicy(keep_last_n=1), sharded=True)
    manager = CheckpointManager(root / "async", CheckpointPolicy(keep_last_n=2, async_save=True), sharded=True)
    overlapped = CheckpointManager(root / "overlap", CheckpointPolicy(keep_last_n=1, async_save=True,
                                                                      overlap_snapshot=True), sharded=True)
    forward_backward = stand_in_step(step_s, agree=broadcast_object)
    blocked, sync_s, rss, call_s, wait_s, fb_s = [], [], [], [], [], []
    try:
        # (d2) first: the loop's order, save, forward and backward, step (which waits for the copy).
        for i in range(min(n, 10)):
            # In training the backward's collectives line the ranks up before the step and the save;
            # the stand-in step has none, so without this the first rank to arrive would time its
            # wait for the other (the skew of the matrix products), not the save.
            barrier()
            call_s.append(timed(lambda: overlapped.save(epoch=0, step=i, model=model, optimizer=optimizer,
                                                        filename=f"o_{i}")))
            fb_s.append(timed(forward_backward))
            wait_s.append(timed(overlapped.wait_snapshot))
            optimizer.step()
            overlapped.wait()
        overlapped.close()
        floor = bare_overlapped(root, model, optimizer, min(n, 10), forward_backward)
        for i in range(n):
            with torch.no_grad():  # the training changes every weight after each save call
                for p in model.parameters():
                    p.add_(1e-3)
            if i % 10 == 0:
                manager.wait()  # a sync save now and then, not overlapping an async one
                sync_s.append(timed(lambda: sync.save(epoch=0, step=i, model=model, optimizer=optimizer,
                                                      filename=f"s_{i}")))
            barrier()  # as above: time the save, not the other rank's lateness
            blocked.append(timed(lambda: manager.save(epoch=0, step=i, model=model, optimizer=optimizer,
                                                      filename=f"a_{i}")))
            manager.wait()
            rss.append(_rss_bytes())
        own = sum(f.stat().st_size for f in (root / "async" / f"a_{n - 1}").glob(f"__{get_rank()}_*.distcp"))
        rows = all_gather_object((rss[1], rss[-1], own))
        if get_rank() == 0:
            block, full = statistics.median(blocked), statistics.median(sync_s)
            print(f"\n{n} async sharded saves on {get_world_size()} rank(s); blocked: median of {n}, "
                  f"sync: median of {len(sync_s)}")
            print(f"{'comparison':<58}{'ours':>10}{'other':>10}{'ratio':>8}  target")
            print(f"{'(d) blocked by an async save vs a sync save (s)':<58}{block:>10.3f}{full:>10.3f}"
                  f"{block / full:>8.3f}  <= 0.05")
            lap = statistics.median([c + w for c, w in zip(call_s, wait_s)])
            print(f"{'(d2) overlapped: call + wait at the step vs a sync save (s)':<58}{lap:>10.3f}{full:>10.3f}"
                  f"{lap / full:>8.3f}  <= 0.01   (call {statistics.median(call_s):.3f} s, wait "
                  f"{statistics.median(wait_s):.3f} s after a {statistics.median(fb_s):.2f} s step; median of {len(call_s)})")
            record(f"sharded_io {get_world_size()} ranks", "(d2) overlapped async: blocked, % of sync save",
                   [100 * (c + w) / full for c, w in zip(call_s, wait_s)], "<= 1", unit="%")
            bare_lap, bare_full = statistics.median(floor["lap"]), statistics.median(floor["sync"])
            print(f"{'(d2) floor: bare dcp.async_save, async staging, vs dcp.save':<58}{bare_lap:>10.3f}"
                  f"{bare_full:>10.3f}{bare_lap / bare_full:>8.3f}  (call {statistics.median(floor['call']):.3f} s, "
                  f"wait {statistics.median(floor['wait']):.3f} s; median of {len(floor['lap'])})")
            record(f"sharded_io {get_world_size()} ranks",
                   "(d2) floor: bare get_state_dict + dcp.async_save (async staging): blocked, % of bare dcp.save",
                   [100 * lap / bare_full for lap in floor["lap"]], "", unit="%")
            for r, (after_2, after_n, share) in enumerate(rows):
                print(f"{f'(e) rank {r}: RSS growth saves 2..{n} vs its checkpoint share (MiB)':<58}"
                      f"{(after_n - after_2) / 2**20:>10.1f}{share / 2**20:>10.1f}"
                      f"{(after_n - after_2) / share:>8.3f}  < 1")
    finally:
        _finish(root, manager, sync, overlapped)


def bare_overlapped(root: Path, model: nn.Module, optimizer: torch.optim.Optimizer, n: int,
                    forward_backward: Callable[[], object]) -> dict[str, list[float]]:
    """(d2)'s floor: what DCP alone blocks for an overlapped save, in the same loop order.

    ``get_state_dict`` and ``dcp.async_save`` with DCP's own asynchronous staging (the copy on the
    stager's thread while the stand-in forward and backward run; the step waits for it), on a gloo
    group of its own as torchtitan does (``BareShardedAsyncSave``, the sharded floor of
    checkpoint_overhead.py too); against a bare ``dcp.save`` of the same state every few saves.
    No hashes, no manifest, no commit, no RNG or agreement collectives.
    """
    save = BareShardedAsyncSave(root)  # writes root/bare_0 and root/bare_1 in turn
    out: dict[str, list[float]] = {"call": [], "wait": [], "lap": [], "sync": []}
    try:
        for i in range(n):
            if i % 3 == 0:
                barrier()
                msd, osd = get_state_dict(model, optimizer)
                out["sync"].append(timed(lambda: dcp.save({"model": msd, "optim": osd},
                                                          checkpoint_id=root / "bare_sync")))
            barrier()
            out["call"].append(timed(lambda: save(model, optimizer)))
            forward_backward()
            out["wait"].append(timed(save.before_step))
            out["lap"].append(out["call"][-1] + out["wait"][-1])
            optimizer.step()
            save.close()
    finally:
        save.release()
    return out


def _finish(root: Path, *managers: CheckpointManager) -> None:
    """Close ``managers``, remove the benchmark's directory (rank 0, once every rank is done), end the group."""
    for m in managers:
        m.close()
    barrier()
    if get_rank() == 0:
        shutil.rmtree(root, ignore_errors=True)
    if dist.is_initialized():
        dist.destroy_process_group()


class _Fixed:
    """A gathered optimizer state dict as a component (its state_dict is the dict itself)."""

    def __init__(self, sd: dict) -> None:
        self.sd = sd

    def state_dict(self) -> dict:
        return self.sd

    def load_state_dict(self, sd: dict) -> None:
        self.sd = sd


if __name__ == "__main__":
    main()
