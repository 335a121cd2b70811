"""Checkpoint I/O ratios, measured side by side in one run.

    python benchmarks/checkpoint_io.py [--size-mb 500] [--repeats 3] [--dir /path/on/target/fs]

(a) synchronous save (hash while writing, fsync, sidecar, rename, dir fsync, latest)
    vs a bare ``torch.save`` + fsync of the same state            target: throughput >= 1.0x
(b) training stall of an asynchronous save (the time ``save()`` blocks)
    vs the synchronous save time                                   target: <= 10%
(b2) the same with overlapped snapshots (``overlap_snapshot=True``), on a live model and AdamW of the
    same size: the call plus the wait at the next optimizer step, after a stand-in forward and
    backward of ``--step-s`` seconds (matrix products), vs the synchronous save of that state
                                                                   target: <= 1%
(c) resume = sha256 verify + ``torch.load(weights_only=True)``
    vs a bare ``torch.load(weights_only=True)``                    target: <= 1.3x
    "warm" reads from the page cache; "cold" evicts the file first with
    posix_fadvise(DONTNEED) (per file, no root, other processes unaffected).
    The verify checks the sidecar's per-chunk sha256s on every core; the last row
    shows what one sequential sha256 of the file costs (the verify without them).

Each pair is run alternately ``--repeats`` times and the medians are compared, so both
sides see the same machine load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy  # noqa: E402
from linnaeus.checkpoint.disk import sha256_file  # noqa: E402
from results import record  # noqa: E402


def make_state(size_mb: int) -> dict:
    """A model-like state: a few large parameters plus AdamW-like moments (1/3 params, 2/3 optimizer)."""
    n_params = 8
    numel = max(1, (size_mb << 20) // 4 // (3 * n_params))
    g = torch.Generator().manual_seed(0)
    params = {f"blocks.{i}.weight": torch.randn(numel, generator=g) for i in range(n_params)}
    optim = {
        "state": {i: {"step": torch.tensor(10.0), "exp_avg": torch.randn(numel, generator=g),
                      "exp_avg_sq": torch.rand(numel, generator=g)} for i in range(n_params)},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": list(range(n_params))}],
    }
    return {"model": params, "optimizer": optim}


class LiveState:
    """The state of ``make_state`` as a live module and AdamW (moments filled by one step)."""

    def __init__(self, size_mb: int) -> None:
        n_params = 8
        numel = max(1, (size_mb << 20) // 4 // (3 * n_params))
        g = torch.Generator().manual_seed(0)
        self.model = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(numel, generator=g))
                                             for _ in range(n_params)])
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)

    def backward(self) -> None:
        for p in self.model:
            p.grad = torch.full_like(p, 1e-3) if p.grad is None else p.grad.fill_(1e-3)


def stand_in_step(seconds: float, agree: Callable[[int], int] = lambda n: n) -> Callable[[], None]:
    """Matrix products lasting about ``seconds``: the forward and backward that overlap the copy.
    ``agree`` makes every rank use one count (e.g. rank 0's, broadcast)."""
    a = torch.randn(512, 512)
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:
        a @ a
        n += 1
    reps = agree(max(1, round(seconds / (0.2 / n))))

    def run() -> None:
        for _ in range(reps):
            a @ a

    return run


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bare_save(state: dict, path: Path) -> None:
    torch.save(state, path)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir under /tmp)")
    parser.add_argument("--step-s", type=float, default=0.5,
                        help="the stand-in forward and backward that an overlapped snapshot runs beside (seconds)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ckpt_bench_", dir=args.dir))
    try:
        state = make_state(args.size_mb)
        nbytes = sum(t.numel() * t.element_size() for t in state["model"].values()) + sum(
            v.numel() * v.element_size() for s in state["optimizer"]["state"].values() for v in s.values())
        size_mb = nbytes / 2**20
        sync_mgr = CheckpointManager(root / "sync", CheckpointPolicy(filename="s_{step}.pth"))
        async_mgr = CheckpointManager(root / "async", CheckpointPolicy(filename="a_{step}.pth", async_save=True))
        bare_path = root / "bare.pth"

        def ours_save(step: int) -> None:
            with sync_mgr.begin(epoch=0, step=step) as ckpt:
                ckpt.update(state)

        def async_save(step: int) -> None:
            with async_mgr.begin(epoch=0, step=step) as ckpt:
                ckpt.update(state)

        def drop_old() -> None:
            # Freeing a large file's blocks costs time too; keep it out of both sides' timings.
            for path in [bare_path, *(root / "sync").glob("*.pth"), *(root / "async").glob("*.pth")]:
                path.unlink(missing_ok=True)

        t_bare, t_sync, t_stall = [], [], []
        for i in range(args.repeats):
            drop_old()
            # Which of the pair goes first alternates: the first write after the deletions of
            # drop_old meets the filesystem still freeing their blocks.
            for side in (("bare", "sync") if i % 2 == 0 else ("sync", "bare")):
                if side == "bare":
                    t_bare.append(timed(lambda: bare_save(state, bare_path)))
                else:
                    t_sync.append(timed(lambda: ours_save(i + 1)))
            t_stall.append(timed(lambda: async_save(i + 1)))
            async_mgr.wait()  # not counted: the writer runs while training would go on

        # (b2): a live model and optimizer, the loop's order: save, forward and backward, step.
        live = LiveState(args.size_mb)
        forward_backward = stand_in_step(args.step_s)
        live_sync = CheckpointManager(root / "live_sync", CheckpointPolicy(filename="l_{step}.pth"))
        overlapped = CheckpointManager(root / "overlap", CheckpointPolicy(filename="o_{step}.pth", async_save=True,
                                                                         overlap_snapshot=True))
        t_live_sync, t_call, t_wait, t_fb = [], [], [], []
        for i in range(args.repeats):
            for d in ("live_sync", "overlap"):
                for path in (root / d).glob("*.pth"):
                    path.unlink()
            t_live_sync.append(timed(lambda: live_sync.save(epoch=0, step=i + 1, model=live.model,
                                                            optimizer=live.optimizer)))
            t_call.append(timed(lambda: overlapped.save(epoch=0, step=i + 1, model=live.model,
                                                        optimizer=live.optimizer)))
            t_fb.append(timed(forward_backward))
            t_wait.append(timed(overlapped.wait_snapshot))  # what the step's pre-hook would wait
            live.optimizer.step()
            overlapped.wait()  # not counted: the writer runs while training would go on
        overlapped.close()
        live_sync.close()
        t_blocked = [c + w for c, w in zip(t_call, t_wait)]

        ours_path = sync_mgr.last_committed
        r_bare = {"warm": [], "cold": []}
        r_ours = {"warm": [], "cold": []}
        for _ in range(args.repeats):
            for mode in ("warm", "cold"):
                if mode == "cold":
                    evict(bare_path)
                r_bare[mode].append(timed(lambda: torch.load(bare_path, map_location="cpu", weights_only=True)))
                if mode == "cold":
                    evict(ours_path)
                r_ours[mode].append(timed(lambda: sync_mgr.load(ours_path)))
        async_mgr.close()
        # What verification would cost without the chunk digests: one sequential sha256.
        t_hash = [timed(lambda: sha256_file(ours_path)) for _ in range(args.repeats)]

        med = statistics.median
        tag = f"checkpoint_io {size_mb:.0f}MB"
        record(tag, "(a) verified sync save: throughput / bare torch.save+fsync",
               [b / s for b, s in zip(t_bare, t_sync)], ">= 1.0")
        record(tag, "(b) async save: call blocks, % of sync save", [100 * b / s for b, s in zip(t_stall, t_sync)],
               unit="%")
        record(tag, "(b2) overlapped async: blocked, % of sync save",
               [100 * b / s for b, s in zip(t_blocked, t_live_sync)], "<= 1", unit="%")
        for mode in ("warm", "cold"):
            record(tag, f"(c) verify + load / bare torch.load, {mode}",
                   [o / b for o, b in zip(r_ours[mode], r_bare[mode])], "<= 1.3")
        rows = [
            ("(a) save: bare torch.save+fsync", med(t_bare), f"{size_mb / med(t_bare):.0f} MB/s", ""),
            ("(a) save: linnaeus sync commit", med(t_sync), f"{size_mb / med(t_sync):.0f} MB/s",
             f"throughput {med(t_bare) / med(t_sync):.2f}x (target >= 1.0x)"),
            ("(b) async save: call blocks for", med(t_stall), "",
             f"{100 * med(t_stall) / med(t_sync):.1f}% of sync save (target <= 10%)"),
            ("(b2) live sync save (model + AdamW)", med(t_live_sync), f"{size_mb / med(t_live_sync):.0f} MB/s", ""),
            (f"(b2) overlapped: call + wait after {med(t_fb):.2f} s step", med(t_blocked), "",
             f"{100 * med(t_blocked) / med(t_live_sync):.1f}% of sync save (target <= 1%); call "
             f"{med(t_call):.3f} s, wait {med(t_wait):.3f} s"),
        ]
        for mode in ("warm", "cold"):
            rows.append((f"(c) load {mode}: bare torch.load", med(r_bare[mode]), f"{size_mb / med(r_bare[mode]):.0f} MB/s", ""))
            rows.append((f"(c) load {mode}: verify + load", med(r_ours[mode]), f"{size_mb / med(r_ours[mode]):.0f} MB/s",
                         f"{med(r_ours[mode]) / med(r_bare[mode]):.2f}x bare (target <= 1.3x)"))
        rows.append(("(c) one sequential sha256 of the file", med(t_hash), f"{size_mb / med(t_hash):.0f} MB/s",
                     f"{med(t_hash) / med(r_bare['warm']):.2f}x bare warm load"))
        print(f"state: {size_mb:.0f} MB in {len(state['model'])} params + optimizer moments; "
              f"{args.repeats} repeats, medians; dir {root}; torch {torch.__version__}, {os.cpu_count()} CPUs")
        width = max(len(r[0]) for r in rows)
        print(f"{'measurement'.ljust(width)}  {'seconds':>8}  {'rate':>10}  ratio")
        for name, secs, rate, ratio in rows:
            print(f"{name.ljust(width)}  {secs:8.3f}  {rate:>10}  {ratio}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
