"""What a frequent async checkpoint costs a training run: throughput with and without it, through the real runner.

    python benchmarks/checkpoint_overhead.py                  # single file (1 rank) and sharded (2 ranks, fsdp)
    python benchmarks/checkpoint_overhead.py --formats file --rounds 5 --every 10,50
    python benchmarks/checkpoint_overhead.py --formats bare,file-process   # with the floor beside it

Each run is ``torchrun tools/train.py --cfg configs/demo.yaml`` with a model whose training state
(weights + AdamW moments) is about 250 MB (``--opts`` to change it), ``CHECKPOINT.ASYNC True`` and
``CHECKPOINT.INTERVAL <N>st``, against the same run with no checkpoint before the end
(``CHECKPOINT.SAVE_LAST_ONLY True``). Throughput comes from the runner's own log windows
(``LOG_INTERVAL`` steps each, ``img/s``), over the steps after the largest N up to the last multiple
of it, so that every measured run holds exactly one save per N steps and none holds the warm-up.
Runs alternate within a round (the order rotates every round); the table gives, per N, the median
over rounds of the ratio to the same round's run without checkpoints, its spread, and the extra
seconds each save cost the loop. The format ``bare`` is the floor: the same model and data in a
hand-written loop whose async save copies the state into kept buffers and ``torch.save``s it on a
thread with an fsync, with nothing of linnaeus's (``benchmarks/bare_async_training.py``); ``bare-sharded``
the same loop under FSDP2 on 2 ranks, saved by DCP's own overlapped ``dcp.async_save``.

Targets (issue "Trust that costs nothing"): every 50 steps >= 0.98x, every 10 steps >= 0.95x.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import record

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
WINDOW = re.compile(r"epoch \d+ step (\d+) \(epoch step \d+\) loss .* ([\d.]+) img/s")

# ~20.7 M parameters (4 ViT blocks of width 640 after two ConvNeXt-atto stages): with AdamW's two
# moments about 250 MB of training state; small images and batches keep a step short, as on a big
# model with a fast accelerator, where a checkpoint's cost shows most.
MODEL = ["MODEL.HYBRID.VIT_DIM", "640", "MODEL.HYBRID.VIT_HEADS", "10", "MODEL.HYBRID.VIT_DEPTH", "4",
         "DATA.IMG_SIZE", "32", "DATA.BATCH_SIZE", "16", "DATA.NUM_WORKERS", "0", "TRAIN.LOG_INTERVAL", "10",
         "TRAIN.EPOCHS", "1", "TRAIN.PROGRESS_BAR", "False", "CHECKPOINT.KEEP_LAST_N", "2",
         "CHECKPOINT.KEEP_BEST_N", "0", "CHECKPOINT.MONITOR", "", "TRAIN.EMA.ENABLED", "False",
         "CHECKPOINT.FILENAME", "checkpoint_step_{step}.pth"]
FORMATS = {"file": (1, ["TRAIN.STRATEGY", "ddp", "CHECKPOINT.FORMAT", "file", "CHECKPOINT.ASYNC_PROCESS", "False"]),
           # the same, written by the writer process (CHECKPOINT.ASYNC_PROCESS)
           "file-process": (1, ["TRAIN.STRATEGY", "ddp", "CHECKPOINT.FORMAT", "file", "CHECKPOINT.ASYNC_PROCESS", "True"]),
           "sharded": (2, ["TRAIN.STRATEGY", "fsdp", "CHECKPOINT.FORMAT", "sharded"]),
           # the floor: the same model and data in a hand-written loop, saved by a hand-written async save
           # (copy into kept buffers, torch.save + fsync on a thread; benchmarks/bare_async_training.py)
           "bare": (1, []),
           # the sharded floor: the same, FSDP2 on 2 ranks, saved by DCP's own overlapped dcp.async_save
           "bare-sharded": (2, ["--sharded"])}


def run(root: Path, data: Path, fmt: str, every: int | None, steps: int, extra: list[str]) -> list[tuple[int, float]]:
    """One training run; its log windows as (last step, img/s)."""
    nproc, opts = FORMATS[fmt]
    out = Path(tempfile.mkdtemp(dir=root))
    saves = ["CHECKPOINT.SAVE_LAST_ONLY", "True"] if every is None else ["CHECKPOINT.INTERVAL", f"{every}st"]
    samples = (steps + 20) * 16 * nproc
    common = ["DATA.ROOT", str(data), "DATA.TOY_NUM_SAMPLES", str(samples), *extra]
    if fmt.startswith("bare"):
        cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "benchmarks/bare_async_training.py",
               *opts, "--steps", str(steps), "--out", str(out), "--every", str(every or 0), "--opts", *MODEL, *common]
    else:
        cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "tools/train.py", "--cfg",
               "configs/demo.yaml", "--opts", *MODEL, *opts, *saves, "CHECKPOINT.ASYNC", "True",
               "TRAIN.MAX_STEPS_PER_EPOCH", str(steps), "ENV.OUTPUT.BASE_DIR", str(out), "EXPERIMENT.NAME", "bench",
               *common]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        sys.exit(f"training run failed ({' '.join(cmd)}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    windows = [(int(m.group(1)), float(m.group(2))) for m in WINDOW.finditer(proc.stdout + proc.stderr)]
    if not windows:
        sys.exit(f"no log windows in the output of {' '.join(cmd)}")
    return windows


def throughput(windows: list[tuple[int, float]], first: int, last: int) -> float:
    """Images per second over the windows ending in (first, last] (equal sample counts: harmonic mean)."""
    rates = [ips for step, ips in windows if first < step <= last]
    return len(rates) / sum(1 / r for r in rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--formats", default="file,sharded")
    p.add_argument("--every", default="10,50", help="checkpoint intervals in optimizer steps")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="steps per run (default: 3x the largest interval)")
    p.add_argument("--opts", nargs="*", default=[], help="more config overrides for every run")
    args = p.parse_args()
    every = sorted(int(n) for n in args.every.split(","))
    steps = args.steps or 3 * every[-1]
    first, last = every[-1], steps - steps % every[-1]
    root = Path(tempfile.mkdtemp(prefix="ckpt_overhead_"))
    try:
        print(f"{steps} steps per run, measured over steps {first + 1}..{last}; {args.rounds} rounds; "
              f"load average at start {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
        print(f"{'format':<8} {'every':>6} {'img/s':>8} {'none img/s':>11} {'ratio':>7} {'spread':>13} "
              f"{'s per save':>11}  target")
        for fmt in args.formats.split(","):
            data = root / f"data-{fmt}"  # generated by the format's first run (its size depends on the ranks)
            modes: list[int | None] = [None, *every]
            rates: dict[int | None, list[float]] = {m: [] for m in modes}
            for r in range(args.rounds):
                for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                    start = time.perf_counter()
                    rates[mode].append(throughput(run(root, data, fmt, mode, steps, args.opts), first, last))
                    print(f"  round {r + 1} {fmt} {'none' if mode is None else f'every {mode}'}: "
                          f"{rates[mode][-1]:.1f} img/s ({time.perf_counter() - start:.0f} s)", flush=True)
            samples_per_step = 16 * FORMATS[fmt][0]
            for n in every:
                ratios = [a / b for a, b in zip(rates[n], rates[None])]
                # Extra loop time per save: the time of N steps with one save minus without.
                cost = [n * samples_per_step * (1 / a - 1 / b) for a, b in zip(rates[n], rates[None])]
                target = 0.98 if n >= 50 else 0.95
                ratio = statistics.median(ratios)
                if fmt == "bare":  # a floor to read the others against, not a target of ours
                    record("checkpoint_overhead", f"floor: hand-written loop and async torch.save every {n} steps, "
                           "/ none", ratios, "")
                elif fmt == "bare-sharded":
                    record("checkpoint_overhead", f"sharded floor: hand-written FSDP2 loop and dcp.async_save every {n} "
                           "steps, / none", ratios, "")
                else:
                    record("checkpoint_overhead", f"{fmt}: throughput, async save every {n} steps, / none", ratios,
                           f">= {target}")
                print(f"{fmt:<8} {n:>6} {statistics.median(rates[n]):>8.1f} {statistics.median(rates[None]):>11.1f} "
                      f"{ratio:>7.3f} {min(ratios):>6.3f}-{max(ratios):<6.3f} {statistics.median(cost):>11.3f}"
                      + ("  (floor)" if fmt.startswith("bare") else f"  >= {target}  {'PASS' if ratio >= target else 'FAIL'}"))
        print(f"load average at end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
