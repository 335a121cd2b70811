"""Orchestration only: config → data → model → resume or pretrained → train/eval → checkpoints.

Reads top to bottom as the list of steps a run performs; each step lives in its own module.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Sequence

import torch
from yacs.config import CfgNode

from linnaeus.cli.eval import main as eval_main
from linnaeus.config import ConfigError, config_yaml, dump_config, load_config, run_dir
from linnaeus.config.cluster import preempt_signals
from linnaeus.data.build import build_data
from linnaeus.dist import (distributed_session, get_rank, get_world_size, is_main_process, lost_peer_message,
                           select_device)
from linnaeus.engine.amp import build_amp
from linnaeus.engine.class_report import ClassTally, class_lines, confused_siblings, first_per_rank, per_class
from linnaeus.engine.evaluator import evaluate, summary_lines
from linnaeus.engine.loss import MultiLevelLoss
from linnaeus.engine.optim import build_ema, build_optimizer, build_scheduler
from linnaeus.engine.parallel import wrap_model
from linnaeus.engine.progress import Progress, steps_per_epoch
from linnaeus.engine.run_log import build_tb_writer, setup_logging
from linnaeus.engine.trainer import Trainer
from linnaeus.models.build import build_model
from linnaeus.runner import dry_run
from linnaeus.runner.checkpoints import RunCheckpoints
from linnaeus.runner.deadline import Deadline
from linnaeus.runner.healing import SelfHealing, TrainingDivergedError, build_healing
from linnaeus.runner.launcher_watch import LauncherWatch
from linnaeus.runner.preemption import PreemptionHandler
from linnaeus.runner.pretrained import load_pretrained_weights
from linnaeus.runner.seed import seed_everything
from linnaeus.runner.slurm import requeue_after_stop
from linnaeus.runner.startup import StartupClock
from linnaeus.runner.taxonomy_record import parent_names

logger = logging.getLogger("linnaeus")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a linnaeus experiment (one process, or DDP under torchrun).")
    p.add_argument("--cfg", required=True, help="experiment YAML (may inherit with _BASE_)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (YAML, credentials redacted) and exit without training")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the checkpoint the run would resume from (TRAIN.RESUME, else the run's latest) "
                        "as linnaeus-eval does, and exit without training")
    p.add_argument("--dry-run", action="store_true",
                   help="print what the launch would do (resume point, world size, steps per epoch, checkpoint "
                        "schedule), train two steps of it in a temporary directory, write nothing to the run dir")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides, e.g. TRAIN.EPOCHS 20")
    return p.parse_args(argv)


def cli(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.cfg, args.opts)
    except ConfigError as e:
        print(f"linnaeus: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:  # before anything is created: no run dir, no process group
        print(config_yaml(cfg), end="")
        return 0
    if args.eval_only:  # no lock, nothing written to checkpoints/: it may run beside the training run
        return eval_main(["--cfg", args.cfg, "--ckpt", cfg.TRAIN.RESUME or "latest", "--opts", *args.opts])
    if args.dry_run:
        return _dry_run(cfg)
    run(cfg)
    return 0


def _dry_run(cfg: CfgNode) -> int:
    lines, point = dry_run.plan(cfg)
    speaks = int(os.environ.get("RANK", "0")) == 0
    if speaks:
        print("\n".join(["Dry run. The launch would do:", *(f"  {line}" for line in lines)]), flush=True)
    scratch = dry_run.try_it(cfg, point, run)
    if speaks:
        print(f"Dry run: {dry_run.DRY_RUN_STEPS} steps trained, validated and saved in {scratch} (removed); nothing "
              f"was written to {run_dir(cfg)}.", flush=True)
    return 0


def run(cfg: CfgNode) -> dict[str, Any]:
    """Train and evaluate ``cfg``; returns the last validation metrics."""
    # Under torchrun: a worker whose launcher died stops instead of training on as an orphan.
    with LauncherWatch() as launcher, distributed_session(cfg.TRAIN.COLLECTIVE_TIMEOUT_S):
        # In a function of its own: its model, loaders and trainer are unreferenced when the
        # session tears the process group down (see distributed_session).
        return _train(cfg, launcher)


def _train(cfg: CfgNode, launcher: LauncherWatch) -> dict[str, Any]:
    """The run inside its process group: take the run's checkpoints, then everything else under them."""
    out_dir = run_dir(cfg)
    setup_logging(out_dir, get_rank())
    # First: a second launch on this run dir (the writer lock) or on its bucket folder (the lease)
    # stops here, before writing to either.
    checkpoints = RunCheckpoints(cfg, out_dir)
    try:
        return _resume_and_fit(cfg, launcher, checkpoints, out_dir)
    except BaseException as e:
        # The cause first: the cleanup below may take longer than a launcher that closes its
        # workers waits before it kills them.
        if not launcher.gone and lost_peer_message(e):
            logger.error(lost_peer_message(e))
        # A save in flight commits, committed checkpoints finish uploading, the lock and lease go;
        # this exception still propagates.
        checkpoints.close_after_error()
        launcher.raise_if_gone(e)  # then the launcher's death is the cause (logged once), not e
        raise


def _resume_and_fit(cfg: CfgNode, launcher: LauncherWatch, checkpoints: RunCheckpoints, out_dir: Any) -> dict[str, Any]:
    """Build, resume or start, fit, report."""
    clock = StartupClock("start-up (interpreter, imports, config, process group, locks)")
    rank, world_size = get_rank(), get_world_size()
    device = select_device()
    logger.info("Run dir: %s (world size %d, device %s)", out_dir, world_size, device)
    seed_everything(cfg.EXPERIMENT.SEED, rank)

    data = build_data(cfg, rank, world_size)
    clock.mark("data")
    model = build_model(cfg, data.taxonomy.num_classes).to(device)
    clock.mark("model")
    resume_from = checkpoints.find_resume_point()
    clock.mark("finding, verifying and loading the checkpoint" if resume_from else "looking for a checkpoint")
    if resume_from is None:
        # Pretrained weights only matter for a fresh start: a resume overwrites them anyway.
        load_pretrained_weights(cfg, model, out_dir, taxonomy=data.taxonomy)

    if cfg.MODEL.CHANNELS_LAST:
        # After loading (a layout change is not a value change); before DDP, whose gradient
        # buckets take the parameters' strides at construction.
        model = model.to(memory_format=torch.channels_last)
    # FSDP2 modules refuse deepcopy: under fsdp the EMA copies the model first and is sharded with it.
    ema = build_ema(cfg, model) if cfg.TRAIN.STRATEGY == "fsdp" else None
    ddp_model = wrap_model(model, cfg.TRAIN.STRATEGY, amp=cfg.TRAIN.AMP, ema=ema)  # DDP, or FSDP2 in place
    optimizer = build_optimizer(cfg, model)
    # Sized by the trainer's own count of optimizer steps, so the schedule ends at the last step.
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch(len(data.train_loader), cfg.TRAIN.ACCUM_STEPS,
                                                                cfg.TRAIN.MAX_STEPS_PER_EPOCH))
    autocast, scaler = build_amp(cfg, device)
    if ema is None:
        ema = build_ema(cfg, model)  # ddp: after DDP's constructor broadcast rank 0's weights into model
    progress = Progress()
    healing = build_healing(cfg.TRAIN.SPIKE, data.train_sampler, scheduler, data.train_dataset)
    clock.mark("wrapping, optimizer, scheduler, EMA")
    checkpoints.attach(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema,
                       sampler=data.train_sampler, healing=healing, progress=progress, taxonomy=data.taxonomy)
    # Every refusal (config diff, taxonomy, missing state) before anything is moved or written.
    checkpoints.begin(resume_from)
    clock.mark("restoring" if resume_from else "starting")
    if is_main_process():
        dump_config(cfg, out_dir / "config.yaml")

    tb = build_tb_writer(out_dir, rank, resumed_step=progress.step)  # keeps steps <= it, purges later ones
    checkpoints.before_save.append(tb.flush)  # a checkpoint never outlives the events it keeps
    checkpoints.before_save.append(launcher.check)  # also after waiting for the save in flight (raises)
    trainer = Trainer(
        model, ddp_model, optimizer, scheduler, MultiLevelLoss(cfg.DATA.TASK_KEYS, cfg.TRAIN.LOSS_WEIGHTS,
                                                               cfg.TRAIN.LABEL_SMOOTHING),
        data.train_loader, data.train_sampler, device,
        accum_steps=cfg.TRAIN.ACCUM_STEPS, clip_grad=cfg.TRAIN.CLIP_GRAD, autocast=autocast, scaler=scaler,
        ema=ema, max_steps_per_epoch=cfg.TRAIN.MAX_STEPS_PER_EPOCH, log_interval=cfg.TRAIN.LOG_INTERVAL,
        tb_writer=tb, progress_bar=cfg.TRAIN.PROGRESS_BAR and is_main_process(), world_size=world_size,
        before_update=checkpoints.wait_snapshot, check_health=True,
    )
    clock.mark("config.yaml, TensorBoard, trainer")
    logger.info("%s", clock.summary())
    deadline = Deadline.from_config(cfg)
    if deadline.end is not None:
        logger.info("Job end: %s", deadline.describe())
        if deadline.reached():
            logger.warning("Less time is left before the job's end than CHECKPOINT.SAVE_BEFORE_END: the run stops "
                           "after its first step")
    with PreemptionHandler(cfg.CHECKPOINT.SAVE_ON_PREEMPT, preempt_signals(cfg)) as preempt:
        last_metrics, classes, stopped = _fit(cfg, trainer, data, checkpoints, progress, preempt, deadline, launcher,
                                     healing, autocast, device, tb)
    checkpoints.close()
    tb.close()
    _report(cfg, out_dir, last_metrics, classes, checkpoints, data.taxonomy.num_classes, stopped=stopped)
    if stopped:  # everything is committed: under Slurm, the same job resumes it
        requeue_after_stop(cfg)
    return last_metrics


def _fit(cfg: CfgNode, trainer: Trainer, data: Any, checkpoints: RunCheckpoints, progress: Progress,
         preempt: PreemptionHandler, deadline: Deadline, launcher: LauncherWatch, healing: SelfHealing,
         autocast: Any, device: torch.device, tb: Any) -> tuple[dict[str, Any], list[str], str]:
    """The epoch loop: train, evaluate when due, save when due, roll back a bad step, stop cleanly on
    preemption or before the job's end. Returns the last validation metrics, its class report's lines
    (none when no validation ran in this process) and why it stopped early ("" when it did not)."""
    last_metrics: dict[str, Any] = checkpoints.last_metrics()
    classes: list[str] = []  # the last validation's worst classes and confused siblings, a line per rank

    def on_step_end(p: Progress) -> bool:
        launcher.check()  # no new save once the launcher is gone (raises)
        checkpoints.poll()  # surfaces background-save errors on every rank
        stop, health = checkpoints.step_boundary(preempt.requested, deadline, trainer.step_health)
        if healing.judge(p.step, health, trainer.step_data):
            return True  # a bad step is never saved: the loop below rolls it back
        if stop:
            return True
        checkpoints.maybe_save_step(p)
        return False

    while progress.epoch < cfg.TRAIN.EPOCHS:
        data.train_sampler.set_epoch(progress.epoch)
        result = trainer.train_epoch(progress, on_step_end)
        if healing.pending is not None:
            _roll_back(healing, checkpoints)
            continue
        if not result["completed"]:
            checkpoints.save_preemption()
            if preempt.requested or not deadline.reached():
                logger.info("Preempted at epoch %d step %d: checkpoint committed, exiting 0", progress.epoch,
                            progress.step)
                return last_metrics, classes, "by a signal"
            logger.info("Stopped before the job's end at epoch %d step %d (%s): checkpoint committed, exiting 0",
                        progress.epoch, progress.step, deadline.describe())
            return last_metrics, classes, "before the job's end"
        last_epoch = progress.epoch >= cfg.TRAIN.EPOCHS
        measured: dict[str, Any] = {}  # this epoch's validation, if it ran: a save carries only its own step's
        if last_epoch or progress.epoch % cfg.EVAL.INTERVAL == 0:
            if data.val_loader is not None:
                last_metrics = measured = _validate(cfg, trainer.model, data, device, autocast, classes)
            _log_metrics(progress, result, last_metrics, classes, tb)
        # The saved sampler state must point at the start of the next epoch.
        data.train_sampler.set_epoch(progress.epoch)
        launcher.check()
        checkpoints.maybe_save_epoch(progress, measured, is_last=last_epoch)
    return last_metrics, classes, ""


def _validate(cfg: CfgNode, model: torch.nn.Module, data: Any, device: torch.device, autocast: Any,
              classes: list[str]) -> dict[str, Any]:
    """The validation metrics; ``classes`` gets the class report's lines (every rank takes part)."""
    keys = list(cfg.DATA.TASK_KEYS)
    tally = ClassTally(keys, {k: data.taxonomy.names(k) for k in keys})
    metrics = evaluate(model, data.val_loader, keys, device, autocast=autocast, hierarchy=data.hierarchy,
                       consistent_decoding=cfg.EVAL.CONSISTENT_DECODING, on_batch=tally)
    counts = tally.gather()
    classes[:] = class_lines(first_per_rank(per_class(counts, keys), 5),
                             first_per_rank(confused_siblings(counts, keys, parent_names(data.taxonomy)), 5), keys)
    return metrics


def _roll_back(healing: SelfHealing, checkpoints: RunCheckpoints) -> None:
    """Back to the newest checkpoint, past the bad step's samples (:mod:`linnaeus.runner.healing`)."""
    try:
        healing.begin_rollback()  # raises when the rollbacks are used up
        point = checkpoints.roll_back()
        if point is None:
            raise healing.no_checkpoint()
    except TrainingDivergedError as e:
        logger.error("%s", e)  # in the run's log too, not only in the traceback
        raise
    healing.rolled_back(point.step)


def _log_metrics(progress: Progress, train: dict[str, Any], val: dict[str, Any], classes: list[str],
                 tb: Any) -> None:
    for k, v in val.items():
        tb.add_scalar(k, v, progress.step)
    if classes:
        tb.add_text("val/classes", "\n\n".join(classes), progress.step)
    summary = "  ".join(f"{k}={v:.4f}" for k, v in sorted(val.items()) if isinstance(v, float))
    logger.info("Epoch %d (step %d) train/loss=%.4f  %s", progress.epoch, progress.step,
                train.get("train/loss", float("nan")), summary)


def _report(cfg: CfgNode, out_dir: Any, metrics: dict[str, Any], classes: list[str], checkpoints: RunCheckpoints,
            num_classes: dict[str, int], stopped: str) -> None:
    if not is_main_process():
        return
    lines = ["", "=" * 60, f"Run dir:      {out_dir}", f"Log file:     {out_dir / 'log.txt'}",
             f"TensorBoard:  tensorboard --logdir {out_dir / 'tensorboard'}",
             f"Checkpoints:  {checkpoints.directory}  (linnaeus-ckpt ls {out_dir})"]
    if stopped:
        lines.append(f"Stopped {stopped}; relaunch the same command to continue.")
    lines += summary_lines(metrics, cfg.DATA.TASK_KEYS, num_classes)
    lines += [f"val {line}" for line in classes]
    lines.append("=" * 60)
    logger.info("\n".join(lines))


if __name__ == "__main__":
    from linnaeus.cli.commands import exit_process

    exit_process(cli())
