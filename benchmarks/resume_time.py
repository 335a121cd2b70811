"""Time to resume: from a relaunch's process start to its first optimizer step, linnaeus against a bare script.

    python benchmarks/resume_time.py [--rounds 3] [--opts KEY VALUE ...]

A short real run (``python tools/train.py``, one process, the ~250 MB training state of
``checkpoint_overhead.py``, its output bucket a local ``rclone serve s3``) leaves a committed
checkpoint in its run dir and in its bucket folder. Then, alternating within each round:

- linnaeus from the run dir: the same command relaunched (verify + load + restore, RNG, sampler...);
- linnaeus from the bucket: the same command on a "fresh machine" (an empty run dir), which finds
  the checkpoint in the bucket folder and downloads it, verified;
- bare: a script that builds the same data, model and optimizer with linnaeus's builders,
  ``torch.load(..., weights_only=True)``s the same file, loads the model and optimizer state and steps.

Each is timed from ``Popen`` to the line its first optimizer step prints (the runner's log window
with ``TRAIN.LOG_INTERVAL 1``), then killed. The runner's own ``Ready to train`` line and the bare
script's phase line say where the time goes. Target: linnaeus from the run dir <= 1.2x bare.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.checkpoint_overhead import MODEL  # noqa: E402
from benchmarks.resolve import local_s3  # noqa: E402
from results import record  # noqa: E402

FIRST_STEP = re.compile(r"epoch 1 step \d+ \(epoch step 1\)|bare: first step done")
PHASES = re.compile(r"(Ready to train .*|bare: .* s)$", re.M)


def _common(root: Path) -> list[str]:
    return [*MODEL, "TRAIN.LOG_INTERVAL", "1", "TRAIN.MAX_STEPS_PER_EPOCH", "2", "DATA.ROOT", str(root / "data"),
            "DATA.TOY_NUM_SAMPLES", "256", "EXPERIMENT.NAME", "bench", "CHECKPOINT.FILENAME",
            "checkpoint_epoch_{epoch}.pth", "CHECKPOINT.ASYNC", "False",
            "ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", "bench",
            "ENV.OUTPUT.BUCKET.NAME", "bkt", "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/"]


def _train_cmd(root: Path, out: Path, epochs: int, extra: list[str]) -> list[str]:
    return [sys.executable, "tools/train.py", "--cfg", "configs/demo.yaml", "--opts", *_common(root),
            "ENV.OUTPUT.BASE_DIR", str(out), "TRAIN.EPOCHS", str(epochs), *extra]


def until_first_step(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds from launch to the first optimizer step's line (then the process is killed), and its phase line."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if FIRST_STEP.search(line):
            seconds = time.perf_counter() - start
            proc.send_signal(signal.SIGKILL)  # no save, no upload: the next round starts from the same state
            proc.wait()
            text = "".join(lines)
            phases = PHASES.search(text)
            return seconds, phases.group(1) if phases else ""
    proc.wait()
    sys.exit(f"no first step in the output of {' '.join(cmd)} (exit {proc.returncode}):\n{''.join(lines)[-4000:]}")


def bare(checkpoint: str, opts: list[str]) -> None:
    """The bare relaunch: same data, model and optimizer, ``torch.load`` of the file, one step."""
    t0 = time.perf_counter()
    import torch

    from linnaeus.config import load_config
    from linnaeus.data.build import build_data
    from linnaeus.engine.loss import MultiLevelLoss
    from linnaeus.engine.optim import build_optimizer
    from linnaeus.models.build import build_model
    from linnaeus.runner.startup import seconds_since_process_start

    imports = seconds_since_process_start()
    t1 = time.perf_counter()
    cfg = load_config(str(REPO / "configs" / "demo.yaml"), opts)
    data = build_data(cfg, 0, 1)
    t2 = time.perf_counter()
    model = build_model(cfg, data.taxonomy.num_classes)
    optimizer = build_optimizer(cfg, model)
    t3 = time.perf_counter()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    t4 = time.perf_counter()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    t5 = time.perf_counter()
    loss_fn = MultiLevelLoss(cfg.DATA.TASK_KEYS, cfg.TRAIN.LOSS_WEIGHTS, cfg.TRAIN.LABEL_SMOOTHING)
    images, labels = next(iter(data.train_loader))
    loss, _ = loss_fn(model(images), labels)
    loss.backward()
    optimizer.step()
    t6 = time.perf_counter()
    del t0
    print(f"bare: start-up (interpreter, imports) {imports:.2f} s, config and data {t2 - t1:.2f} s, model and "
          f"optimizer {t3 - t2:.2f} s, torch.load {t4 - t3:.2f} s, load_state_dict {t5 - t4:.2f} s, first step "
          f"{t6 - t5:.2f} s", flush=True)
    print("bare: first step done", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--opts", nargs="*", default=[])
    p.add_argument("--bare", default="", help=argparse.SUPPRESS)  # CHECKPOINT: the bare script's child launch
    args = p.parse_args()
    if args.bare:
        bare(args.bare, args.opts)
        return
    root = Path(tempfile.mkdtemp(prefix="resume_time_"))
    server, bucket_env = local_s3(root / "s3")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(os.cpu_count() or 1), **bucket_env}
    try:
        made = subprocess.run(_train_cmd(root, root / "out", 1, args.opts), cwd=REPO, env=env, capture_output=True,
                              text=True)
        checkpoint = root / "out" / "bench" / "checkpoints" / "checkpoint_epoch_1.pth"
        if made.returncode != 0 or not checkpoint.exists():
            sys.exit(f"the first run failed:\n{(made.stdout + made.stderr)[-4000:]}")
        size_mb = checkpoint.stat().st_size / 2**20
        cases = {
            "linnaeus, run dir": lambda: _train_cmd(root, root / "out", 2, args.opts),
            "linnaeus, bucket": lambda: _train_cmd(root, Path(tempfile.mkdtemp(dir=root)), 2, args.opts),
            "bare torch.load": lambda: [sys.executable, str(Path(__file__).resolve()), "--bare", str(checkpoint),
                                        "--opts", *_common(root)[:-8], *args.opts],
        }
        seconds: dict[str, list[float]] = {k: [] for k in cases}
        phases: dict[str, str] = {}
        names = list(cases)
        print(f"checkpoint {size_mb:.0f} MB; {args.rounds} rounds; load average at start {os.getloadavg()[0]:.2f}; "
              f"{os.cpu_count()} CPUs", flush=True)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                s, phases[name] = until_first_step(cases[name](), env)
                seconds[name].append(s)
                print(f"  round {r + 1} {name}: {s:.2f} s", flush=True)
        bare_s = statistics.median(seconds["bare torch.load"])
        print(f"{'relaunch to first step':<24} {'median s':>9} {'spread':>13} {'vs bare':>8}  target")
        for name in names:
            med = statistics.median(seconds[name])
            target = "<= 1.2x" if name == "linnaeus, run dir" else ""
            verdict = ("PASS" if med / bare_s <= 1.2 else "FAIL") if target else ""
            print(f"{name:<24} {med:>9.2f} {min(seconds[name]):>6.2f}-{max(seconds[name]):<6.2f} "
                  f"{med / bare_s:>7.2f}x  {target} {verdict}")
        for name, target in (("linnaeus, run dir", "<= 1.2"), ("linnaeus, bucket", "")):
            record("resume_time", f"relaunch to first step ({name.split(', ')[1]}) / bare torch.load script",
                   [a / b for a, b in zip(seconds[name], seconds["bare torch.load"])], target)
        print("\nwhere the time goes (last round):")
        for name in names:
            print(f"  {name}: {phases[name]}")
        print(f"load average at end {os.getloadavg()[0]:.2f}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
