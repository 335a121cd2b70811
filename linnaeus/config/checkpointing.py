"""CHECKPOINT.* → the checkpoint library's policies: the one mapping, used by validation and the runner.

A policy validates itself (:class:`~linnaeus.checkpoint.policy.CheckpointPolicy`); this module
builds the policies a run will use, so a config passes validation exactly when the runner can
build its savers, and turns a policy error into a :class:`ConfigError` naming the config key.
It adds only the rules that need to know the runner: which metrics its validation reports, and
after which saves.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator, Mapping

from yacs.config import CfgNode as CN

from linnaeus.checkpoint.policy import CheckpointPolicy, InvalidPolicyError, metric_fields, parse_interval
from linnaeus.checkpoint.resume import InvalidResumeTargetError, parse_run_target

from .errors import ConfigError
from .parallel import sharded_checkpoints

# Policy field → the config key it is read from, per saver.
_MAIN_KEYS = {
    "interval": "CHECKPOINT.INTERVAL",
    "filename": "CHECKPOINT.FILENAME",
    "mid_epoch_filename": "CHECKPOINT.MID_EPOCH_FILENAME",
    "keep_last_n": "CHECKPOINT.KEEP_LAST_N",
    "keep_best_n": "CHECKPOINT.KEEP_BEST_N",
    "keep_local_n": "CHECKPOINT.KEEP_LOCAL_N",
    "monitor": "CHECKPOINT.MONITOR",
    "mode": "CHECKPOINT.MODE",
    "node_copies": "CHECKPOINT.REPLICAS",
}
_WEIGHTS_KEYS = {
    "interval": "CHECKPOINT.WEIGHTS_SAVER.INTERVAL",
    "filename": "CHECKPOINT.WEIGHTS_SAVER.FILENAME",
    "keep_last_n": "CHECKPOINT.WEIGHTS_SAVER.KEEP_LAST_N",
    "keep_local_n": "CHECKPOINT.KEEP_LOCAL_N",
}


@contextmanager
def _config_keys(keys: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a policy error as a ConfigError that names the config keys behind its fields."""
    try:
        yield
    except InvalidPolicyError as e:
        key = keys.get(e.field, e.field)
        # The message speaks of policy fields; when it names more than the one at fault, map them all.
        named = [f for f in (e.field, *e.related) if f in keys] if e.related else []
        where = f" (In the config: {', '.join(f'{f} is {keys[f]}' for f in named)}.)" if named else ""
        raise ConfigError(f"{key}: {e}{where}") from None


def build_policy(cfg: CN) -> CheckpointPolicy:
    """The main saver's policy, from CHECKPOINT.*; raises ConfigError naming the key at fault."""
    c = cfg.CHECKPOINT
    with _config_keys(_MAIN_KEYS):
        return CheckpointPolicy(
            interval=parse_interval(c.INTERVAL), filename=c.FILENAME, mid_epoch_filename=c.MID_EPOCH_FILENAME,
            keep_last_n=c.KEEP_LAST_N, keep_best_n=c.KEEP_BEST_N, keep_local_n=c.KEEP_LOCAL_N, monitor=c.MONITOR,
            mode=c.MODE,
            async_save=c.ASYNC, overlap_snapshot=c.ASYNC and c.ASYNC_OVERLAP, weights_only=c.WEIGHTS_ONLY,
            writer_process=c.ASYNC and c.ASYNC_PROCESS and not sharded_checkpoints(cfg),
            save_last_only=c.SAVE_LAST_ONLY, node_copies=c.REPLICAS,
        )


def build_weights_policy(cfg: CN) -> CheckpointPolicy:
    """The weights-only saver's policy, from CHECKPOINT.WEIGHTS_SAVER.* (built even when it is disabled)."""
    w = cfg.CHECKPOINT.WEIGHTS_SAVER
    with _config_keys(_WEIGHTS_KEYS):
        return CheckpointPolicy(interval=parse_interval(w.INTERVAL), filename=w.FILENAME,
                                mid_epoch_filename=_with_step(w.FILENAME),
                                keep_last_n=w.KEEP_LAST_N, keep_local_n=cfg.CHECKPOINT.KEEP_LOCAL_N,
                                async_save=cfg.CHECKPOINT.ASYNC, weights_only=True,
                                overlap_snapshot=cfg.CHECKPOINT.ASYNC and cfg.CHECKPOINT.ASYNC_OVERLAP,
                                writer_process=cfg.CHECKPOINT.ASYNC and cfg.CHECKPOINT.ASYNC_PROCESS)


def _with_step(template: str) -> str:
    """The weights saver's name for saves in the middle of an epoch (a training-time interval): its own
    FILENAME, with ``_step_{step}`` before the suffix when it has no {step}, so that it never takes the
    main saver's names."""
    if "{step" in template:
        return template
    suffix = re.search(r"\.[A-Za-z0-9]+$", template)
    cut = suffix.start() if suffix else len(template)
    return f"{template[:cut]}_step_{{step}}{template[cut:]}"


def validate_checkpointing(cfg: CN) -> None:
    """Build both savers' policies (as the runner will) and check their names against the metrics."""
    try:
        parse_run_target(cfg.TRAIN.RESUME)  # 'latest', 'step:N', or an identifier checked when resolved
    except InvalidResumeTargetError as e:
        raise ConfigError(f"TRAIN.RESUME: {e}") from None
    main = build_policy(cfg)
    if cfg.CHECKPOINT.KEEP_LOCAL_N >= 0 and not cfg.ENV.OUTPUT.BUCKET.ENABLED:
        raise ConfigError(
            f"CHECKPOINT.KEEP_LOCAL_N {cfg.CHECKPOINT.KEEP_LOCAL_N} limits the local copies kept once their upload "
            "is confirmed, but ENV.OUTPUT.BUCKET.ENABLED is False, so nothing is uploaded. Enable the output bucket, "
            "or set CHECKPOINT.KEEP_LOCAL_N -1 and use CHECKPOINT.KEEP_LAST_N / KEEP_BEST_N.")
    # Built even when disabled, so that enabling it later with --opts cannot surprise.
    weights = build_weights_policy(cfg)
    savers = [("CHECKPOINT", main)]
    if cfg.CHECKPOINT.WEIGHTS_SAVER.ENABLED:
        savers.append(("CHECKPOINT.WEIGHTS_SAVER", weights))
    _check_metric_fields(cfg, main, savers)


def _validation_metric_fields(cfg: CN) -> set[str]:
    """Template fields of the metrics the runner's validation reports (engine.evaluator.evaluate):
    val/loss, val/samples and val/{loss,acc1,acc5}/<level>, with '/' turned into '_'."""
    fields = {"val_loss", "val_samples"}
    for level in cfg.DATA.TASK_KEYS:
        fields |= {f"val_{stat}_{level}" for stat in ("loss", "acc1", "acc5")}
    return fields


def _check_metric_fields(cfg: CN, main: CheckpointPolicy, savers: list[tuple[str, CheckpointPolicy]]) -> None:
    """A name with metric fields ({val_acc1_species:.3f}) can only be rendered right after a validation.

    The runner validates after epoch e when e % EVAL.INTERVAL == 0 and after the last epoch.
    Every other save (step intervals, epochs without validation, preemption) has no metrics,
    so such a config would fail at its first such save, possibly hours into the run.
    """
    every_eval = cfg.EVAL.INTERVAL
    mid = metric_fields(main.mid_epoch_filename)
    if mid:
        raise ConfigError(
            f"CHECKPOINT.MID_EPOCH_FILENAME {main.mid_epoch_filename!r} uses metric field(s) "
            f"{sorted(mid)}, but the saves it names (preemption saves in the middle of an epoch) never have "
            "validation metrics. Remove them, e.g. 'checkpoint_epoch_{epoch}_step_{step}.pth'."
        )
    known = _validation_metric_fields(cfg)
    for key, policy in savers:
        fields = set(policy.metric_fields)
        if not fields:
            continue
        template = f"{key}.FILENAME {policy.filename!r}"
        node = cfg.CHECKPOINT if key == "CHECKPOINT" else cfg.CHECKPOINT.WEIGHTS_SAVER
        if policy.interval.by_time and metric_fields(policy.mid_epoch_filename):
            raise ConfigError(
                f"{template} uses metric field(s) {sorted(fields)}, but {key}.INTERVAL {node.INTERVAL!r} also saves "
                f"by training time, in the middle of epochs, under the name {policy.mid_epoch_filename!r}, where "
                "there are no validation metrics. Remove the metric fields, or the training-time interval."
            )
        if fields - known:
            raise ConfigError(
                f"{template} uses {sorted(fields - known)}, which no validation of this run reports. Metric "
                f"fields are validation metric names with '/' replaced by '_'; available: {sorted(known)}."
            )
        if cfg.DATA.DATASET == "toy" and cfg.DATA.VAL_FRACTION <= 0:
            raise ConfigError(
                f"{template} uses metric field(s) {sorted(fields)}, but DATA.VAL_FRACTION 0 leaves the toy "
                "dataset without a validation split, so there are no metrics. Set DATA.VAL_FRACTION > 0 or "
                "remove the metric fields."
            )
        interval = policy.interval
        fix = (f"Set {key}.INTERVAL to an epoch interval that is a multiple of EVAL.INTERVAL ({every_eval}), "
               f"e.g. '{every_eval}ep', or remove the metric fields.")
        if interval.by_steps:
            raise ConfigError(
                f"{template} uses metric field(s) {sorted(fields)}, but {key}.INTERVAL {node.INTERVAL!r} saves "
                f"every {next(t.every for t in interval.terms if t.by_steps)} optimizer steps, in the middle of epochs, where there are no validation "
                f"metrics. {fix}"
            )
        # SAVE_LAST_ONLY: the main saver only saves after the last epoch, which is always validated.
        # Training-time terms save in the middle of epochs, under MID_EPOCH_FILENAME (no metric fields).
        unvalidated = [t.every for t in interval.terms if t.unit == "ep" and t.every % every_eval]
        if not policy.save_last_only and unvalidated:
            raise ConfigError(
                f"{template} uses metric field(s) {sorted(fields)}, but {key}.INTERVAL {node.INTERVAL!r} saves "
                f"after epoch {unvalidated[0]}, which is not validated (EVAL.INTERVAL {every_eval} validates every "
                f"{every_eval} epoch(s)), so that save would have no metrics. {fix}"
            )
