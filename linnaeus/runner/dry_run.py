"""``tools/train.py --dry-run``: what the real launch would do, tried on a copy, with nothing written to
the run dir.

It says where the run would start (the checkpoint a relaunch resumes, found as the run's own newest
verified checkpoint or ``TRAIN.RESUME``; the bucket folder is not consulted, as a dry run downloads
nothing into the run), the world size, the data and steps per epoch, and the checkpoint schedule;
then it trains two steps of that epoch in a temporary directory, from that checkpoint, through the
real runner (data, model, restore, steps, validation, a save), and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from yacs.config import CfgNode

from linnaeus.checkpoint.formats import read_info
from linnaeus.checkpoint.store import newest_verified
from linnaeus.config import build_policy, build_weights_policy, checkpoint_dir, run_dir
from linnaeus.data.build import build_data
from linnaeus.engine.progress import steps_per_epoch
from linnaeus.runner.locate import locate_checkpoint

DRY_RUN_STEPS = 2


def plan(cfg: CfgNode) -> tuple[list[str], Path | None]:
    """The lines describing the launch, and the checkpoint it would resume from (None: a fresh start)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    out = run_dir(cfg)
    data = build_data(cfg, 0, world_size)
    steps = steps_per_epoch(len(data.train_loader), cfg.TRAIN.ACCUM_STEPS, cfg.TRAIN.MAX_STEPS_PER_EPOCH)
    point = _resume_point(cfg, checkpoint_dir(cfg))
    lines = [f"Run dir: {out} ({'exists' if out.exists() else 'not created yet'})",
             f"World size: {world_size}; strategy {cfg.TRAIN.STRATEGY}",
             f"Data: {len(data.train_dataset)} training images, "
             f"{len(data.val_dataset) if data.val_dataset is not None else 0} validation images; batch "
             f"{cfg.DATA.BATCH_SIZE} per process x {cfg.TRAIN.ACCUM_STEPS} accumulation -> {steps} optimizer steps "
             f"per epoch, {cfg.TRAIN.EPOCHS} epochs"]
    if point is None:
        lines.append("Start: fresh" + (f", pretrained weights from {cfg.MODEL.PRETRAINED}" if cfg.MODEL.PRETRAINED
                                       else ""))
    else:
        info = read_info(point)
        lines.append(f"Start: resume from {point} (epoch {info.epoch}, step {info.step}); "
                     f"{max(cfg.TRAIN.EPOCHS - info.epoch, 0)} epoch(s) left")
    policy = build_policy(cfg)
    lines.append(f"Checkpoints: every {policy.interval} as {cfg.CHECKPOINT.FILENAME} in {out / 'checkpoints'}"
                 + (f", keep the last {cfg.CHECKPOINT.KEEP_LAST_N}" if cfg.CHECKPOINT.KEEP_LAST_N else "")
                 + (f", the best {cfg.CHECKPOINT.KEEP_BEST_N} by {cfg.CHECKPOINT.MONITOR}"
                    if cfg.CHECKPOINT.KEEP_BEST_N else "")
                 + (", asynchronous" if cfg.CHECKPOINT.ASYNC else ""))
    if cfg.CHECKPOINT.WEIGHTS_SAVER.ENABLED:
        lines.append(f"Weights: every {build_weights_policy(cfg).interval} as {cfg.CHECKPOINT.WEIGHTS_SAVER.FILENAME}")
    if cfg.ENV.OUTPUT.BUCKET.ENABLED:
        lines.append(f"Uploads to the bucket {cfg.ENV.OUTPUT.BUCKET.REMOTE}{cfg.ENV.OUTPUT.BUCKET.NAME} "
                     "(not consulted by the dry run)")
    return lines, point


def _resume_point(cfg: CfgNode, directory: Path) -> Path | None:
    if cfg.TRAIN.RESUME:  # the run's own file first, as the launch looks (then latest, step:N, identifiers)
        own = directory / cfg.TRAIN.RESUME
        return own if own.exists() else locate_checkpoint(cfg, cfg.TRAIN.RESUME)
    if not cfg.TRAIN.AUTO_RESUME or not directory.is_dir():
        return None
    return newest_verified(directory)  # the library's choice, with its refusals (newer format, unreadable)


def try_it(cfg: CfgNode, point: Path | None, train: Callable[[CfgNode], Any]) -> Path:
    """Train :data:`DRY_RUN_STEPS` steps of the launch's first epoch in a temporary directory (shared by the
    processes of one launch), from ``point``; the directory is removed afterwards. Returns it."""
    scratch = Path(tempfile.gettempdir()) / f"linnaeus-dry-run-{os.getppid()}-{cfg.EXPERIMENT.NAME}"
    info = read_info(point) if point is not None else None
    start_epoch, epoch_step = (info.epoch, info.epoch_step) if info is not None else (0, 0)
    trial = cfg.clone()
    trial.defrost()
    trial.ENV.OUTPUT.BASE_DIR = str(scratch)
    trial.ENV.OUTPUT.BUCKET.ENABLED = False
    trial.TRAIN.RESUME, trial.TRAIN.AUTO_RESUME = (str(point), False) if point is not None else ("", False)
    trial.TRAIN.EPOCHS = start_epoch + 1
    trial.TRAIN.MAX_STEPS_PER_EPOCH = epoch_step + DRY_RUN_STEPS  # counted from the epoch's start
    trial.freeze()
    try:
        train(trial)
    finally:
        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(scratch, ignore_errors=True)
    return scratch


__all__ = ["DRY_RUN_STEPS", "plan", "try_it"]
