"""Runner overhead: linnaeus's Trainer against a bare hand-written PyTorch loop.

Same model (``linnaeus.models.build_model``), same data (one epoch of the real training set,
decoded and augmented once and held in memory, so that data loading does not mask the loop's
own cost), same batch size, same optimizer object. The runner runs as ``linnaeus.main``
configures it: per-level loss statistics, LR schedule, sampler bookkeeping, log lines to
stdout and ``log.txt``, TensorBoard scalars and an ``on_step_end`` callback. A third loop is the
runner with self-healing as ``linnaeus.main`` runs it: every step's loss and gradient norm are
measured (``check_health``), read at the step boundary (``TrainingClock.step_boundary``, the
runner's one host sync per step) and judged (``SelfHealing.judge``, with a spike window). The
loops are warmed up, then run in rounds whose order rotates; the table reports each round and the
medians.

    python benchmarks/runner_overhead.py                     # configs/demo.yaml, 1 thread
    python benchmarks/runner_overhead.py --rounds 30 --steps 8 --opts DATA.BATCH_SIZE 64

Targets: runner / bare >= 0.95; runner with self-healing / bare >= 0.97 (issue #23's figure) and,
reported beside it, the runner with self-healing / the runner without.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linnaeus.config import load_config  # noqa: E402
from linnaeus.data.build import build_data  # noqa: E402
from linnaeus.data.sampler import ResumableDistributedSampler  # noqa: E402
from linnaeus.engine.amp import build_amp  # noqa: E402
from linnaeus.engine.run_log import build_tb_writer, setup_logging  # noqa: E402
from linnaeus.engine.loss import MultiLevelLoss  # noqa: E402
from linnaeus.engine.optim import build_ema, build_optimizer, build_scheduler  # noqa: E402
from linnaeus.engine.trainer import Progress, Trainer, steps_per_epoch  # noqa: E402
from linnaeus.models.build import build_model  # noqa: E402
from linnaeus.runner.clock import TrainingClock  # noqa: E402
from linnaeus.runner.healing import SelfHealing  # noqa: E402
from results import record  # noqa: E402


class CachedEpoch(Dataset):
    """One pass over a dataset, materialised; answers the sampler's ``(epoch, index)`` keys."""

    def __init__(self, dataset: Dataset) -> None:
        items = [dataset[(0, i)] for i in range(len(dataset))]
        self.images = torch.stack([x for x, _ in items])
        self.labels = torch.stack([y for _, y in items])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[key[1]], self.labels[key[1]]


class Clock:
    """Wall time and this process's CPU time (all threads) over a block.

    CPU time is what other jobs on a shared machine disturb least, so the ratio is reported on
    both; with one intra-op thread and no accelerator, CPU time tracks the loop's own work.
    """

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def bare_round(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, sampler, task_keys,
               steps: int) -> tuple[float, float]:
    """The loop a user would write by hand; returns images/s (wall, CPU)."""
    model.train()
    sampler.set_epoch(0)
    with Clock() as clock:
        seen = _bare_loop(model, optimizer, loader, task_keys, steps)
    return seen / clock.wall, seen / clock.cpu


def _bare_loop(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, task_keys,
               steps: int) -> int:
    seen = 0
    for i, (images, labels) in enumerate(loader):
        if i == steps:
            break
        outputs = model(images)
        loss = sum(F.cross_entropy(outputs[k], labels[:, j]) for j, k in enumerate(task_keys))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += labels.shape[0]
    return seen


def runner_round(trainer: Trainer, sampler, epoch: int, on_step_end=lambda p: False) -> tuple[float, float]:
    """One capped epoch of the real Trainer; returns images/s (wall, CPU)."""
    progress = Progress(epoch=epoch, step=epoch * trainer.max_steps_per_epoch)
    sampler.set_epoch(epoch)
    with Clock() as clock:
        trainer.train_epoch(progress, on_step_end)
    return progress.samples / clock.wall, progress.samples / clock.cpu


def healing_check(trainer: Trainer, sampler):
    """The runner's per-step self-healing, as ``main.py`` calls it (no process group: one process)."""
    clock = TrainingClock()
    clock.start()
    healing = SelfHealing(factor=3.0, window=50, max_rollbacks=3, lr_scale=1.0, skip_steps=1, sampler=sampler)

    def on_step_end(p: Progress) -> bool:
        _, health = clock.step_boundary(False, collective=True, means=trainer.step_health)
        if healing.judge(p.step, health, trainer.step_data):
            raise SystemExit(f"self-healing found step {p.step} bad ({healing.pending.reason}): the benchmark "
                             "measures the check, not a rollback; rerun with other --opts")
        return False

    return on_step_end


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per round (one capped epoch of the Trainer)")
    p.add_argument("--rounds", type=int, default=20, help="measured back-to-back pairs of rounds")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds per loop first")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "linnaeus_bench"))
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    cfg = load_config(args.cfg, ["DATA.ROOT", str(work / "toy"), "DATA.TOY_NUM_SAMPLES", "800",
                                 "DATA.NUM_WORKERS", "0", "ENV.OUTPUT.BASE_DIR", str(work / "runs"),
                                 "EXPERIMENT.NAME", "runner_overhead", *args.opts])
    task_keys = list(cfg.DATA.TASK_KEYS)
    torch.manual_seed(cfg.EXPERIMENT.SEED)
    data = build_data(cfg)
    cached = CachedEpoch(data.train_dataset)
    batch = cfg.DATA.BATCH_SIZE
    if len(cached) < args.steps * batch:
        raise SystemExit(f"need {args.steps * batch} training images for --steps {args.steps} at batch {batch}, "
                         f"have {len(cached)}: lower --steps or raise DATA.TOY_NUM_SAMPLES via --opts.")
    sampler = ResumableDistributedSampler(len(cached), seed=cfg.EXPERIMENT.SEED)
    loader = DataLoader(cached, batch_size=batch, sampler=sampler, drop_last=True)
    model = build_model(cfg, data.taxonomy.num_classes)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch(len(loader), cfg.TRAIN.ACCUM_STEPS, args.steps))
    autocast, scaler = build_amp(cfg, torch.device("cpu"))

    run = work / "runs" / "runner_overhead"
    logger = setup_logging(run, rank=0)
    tb = build_tb_writer(run, rank=0, resumed_step=0)
    ema = build_ema(cfg, model)

    def make_trainer(check_health: bool) -> Trainer:
        return Trainer(
            model, model, optimizer, scheduler,
            MultiLevelLoss(task_keys, cfg.TRAIN.LOSS_WEIGHTS, cfg.TRAIN.LABEL_SMOOTHING), loader, sampler,
            torch.device("cpu"), accum_steps=cfg.TRAIN.ACCUM_STEPS, clip_grad=cfg.TRAIN.CLIP_GRAD,
            autocast=autocast, scaler=scaler, ema=ema, max_steps_per_epoch=args.steps,
            log_interval=cfg.TRAIN.LOG_INTERVAL, tb_writer=tb, logger=logger, progress_bar=cfg.TRAIN.PROGRESS_BAR,
            check_health=check_health,
        )

    trainer, healed = make_trainer(False), make_trainer(True)
    check = healing_check(healed, sampler)
    # The runner's log lines would interleave with the table; they still go to log.txt.
    for h in logger.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)

    params = sum(p.numel() for p in model.parameters())
    print(f"model {cfg.MODEL.TYPE} ({params / 1e6:.2f}M params), {cfg.DATA.IMG_SIZE}px, batch {batch}, "
          f"{args.steps} steps/round, {args.threads} thread(s), torch {torch.__version__}")
    loops = {
        "bare": lambda r: bare_round(model, optimizer, loader, sampler, task_keys, args.steps),
        "runner": lambda r: runner_round(trainer, sampler, r + 1),
        "healing": lambda r: runner_round(healed, sampler, r + 1, check),
    }
    for _ in range(args.warmup):
        for loop in loops.values():
            loop(0)
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    names = list(loops)
    for r in range(args.rounds):
        # Back-to-back rounds, the order rotated, so that the load of other jobs on a shared machine
        # hits every loop of a round alike; each round gives one ratio per pair of loops.
        for name in names[r % 3:] + names[:r % 3]:
            measured[name].append(loops[name](r))
    tb.close()
    print_table(measured["bare"], measured["runner"], batch)
    print_healing(measured)


def print_table(bare: list[tuple[float, float]], runner: list[tuple[float, float]], batch: int) -> None:
    """Per-pair figures, then medians (of throughputs and of per-pair ratios) and best rounds."""
    print(f"\n{'':>6} {'------- wall-clock img/s -------':>31}   {'-------- CPU-time img/s --------':>31}")
    print(f"{'pair':>6} {'bare':>10} {'runner':>10} {'ratio':>9}   {'bare':>10} {'runner':>10} {'ratio':>9}")
    for r, (b, t) in enumerate(zip(bare, runner)):
        print(f"{r:>6} {b[0]:>10.1f} {t[0]:>10.1f} {t[0] / b[0]:>9.3f}   "
              f"{b[1]:>10.1f} {t[1]:>10.1f} {t[1] / b[1]:>9.3f}")
    rows = {"median": statistics.median, "best": max}
    summary = {}
    for label, agg in rows.items():
        cols = []
        for i in (0, 1):
            b, t = agg(x[i] for x in bare), agg(x[i] for x in runner)
            pair_ratio = statistics.median(y[i] / x[i] for x, y in zip(bare, runner))
            cols.append((b, t, pair_ratio if label == "median" else t / b))
        summary[label] = cols
        print(f"{label:>6} " + "   ".join(f"{b:>10.1f} {t:>10.1f} {ratio:>9.3f}" for b, t, ratio in cols))
    print("(median row: median throughputs, and the median of the per-pair ratios)")
    for name, i in (("wall-clock", 0), ("CPU-time", 1)):
        record("runner_overhead", f"runner / hand-written loop, {name} throughput",
               [y[i] / x[i] for x, y in zip(bare, runner)], ">= 0.95")
        b, t, ratio = summary["median"][i]
        print(f"runner/bare, {name}, median of pairs: {ratio:.3f}  target >= 0.95: "
              f"{'PASS' if ratio >= 0.95 else 'FAIL'}  (overhead at the medians {(batch / t - batch / b) * 1e3:+.1f} ms/step"
              f" of {batch / b * 1e3:.0f} ms)")

def print_healing(measured: dict[str, list[tuple[float, float]]]) -> None:
    """The runner with self-healing against the bare loop (the target) and the runner without it."""
    print(f"\n{'self-healing (every step judged)':<52} {'wall-clock':>12} {'CPU-time':>12}")
    for base, target in (("bare", ">= 0.97"), ("runner", "")):
        ratios = [[h[i] / b[i] for b, h in zip(measured[base], measured["healing"])] for i in (0, 1)]
        medians = [statistics.median(x) for x in ratios]
        verdict = ""
        if target:
            verdict = f"  target {target}: {'PASS' if medians[0] >= 0.97 else 'FAIL'} (wall-clock)"
        print(f"{'runner with self-healing / ' + base + ', median of rounds':<52} {medians[0]:>12.3f} "
              f"{medians[1]:>12.3f}{verdict}")
        record("runner_overhead", f"runner with self-healing / {'hand-written loop' if base == 'bare' else 'runner'}, "
               "wall-clock", ratios[0], target)


if __name__ == "__main__":
    main()
