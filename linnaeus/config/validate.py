"""Cross-key checks that a single key's type cannot express, run on every loaded config."""

from __future__ import annotations

from yacs.config import CfgNode as CN

from linnaeus.checkpoint.strategies import registered_strategies
from linnaeus.checkpoint.remote import WAIT_SLICE_S

from .buckets import validate_buckets
from .checkpointing import validate_checkpointing
from .cluster import validate_cluster
from .errors import ConfigError
from .identifiers import validate_identifiers
from .parallel import validate_parallel


def validate(cfg: CN) -> None:
    """Raise :class:`ConfigError` naming the key when ``cfg`` cannot run."""
    if cfg.MODEL.TYPE not in ("hybrid", "timm"):
        raise ConfigError(f"MODEL.TYPE must be 'hybrid' or 'timm', got {cfg.MODEL.TYPE!r}.")
    if cfg.MODEL.PRETRAINED_STRATEGY not in registered_strategies():
        raise ConfigError(
            f"MODEL.PRETRAINED_STRATEGY must be a registered load strategy ({', '.join(registered_strategies())}), "
            f"got {cfg.MODEL.PRETRAINED_STRATEGY!r}. Register your own with "
            "linnaeus.checkpoint.register_strategy(name, fn) before loading the config."
        )
    validate_identifiers(cfg)  # before anything could hand them to rclone
    if cfg.DATA.DATASET not in ("toy", "imagefolder", "inat", "csv"):
        raise ConfigError(f"DATA.DATASET must be 'toy', 'imagefolder', 'inat' or 'csv', got {cfg.DATA.DATASET!r}.")
    if cfg.DATA.DATASET in ("inat", "csv") and not cfg.DATA.TRAIN_ANN:
        raise ConfigError(f"DATA.DATASET {cfg.DATA.DATASET} needs DATA.TRAIN_ANN (the training annotation file, "
                          "relative to DATA.ROOT).")
    if cfg.DATA.EXAMPLE and cfg.DATA.EXAMPLE != cfg.DATA.DATASET:
        raise ConfigError(f"DATA.EXAMPLE {cfg.DATA.EXAMPLE!r} generates a {cfg.DATA.EXAMPLE} set, but DATA.DATASET "
                          f"is {cfg.DATA.DATASET!r}; set both to 'inat' or 'csv', or DATA.EXAMPLE to ''.")
    if not cfg.DATA.TASK_KEYS:
        raise ConfigError("DATA.TASK_KEYS must name at least one taxonomic level.")
    if cfg.EVAL.CONSISTENT_DECODING and len(cfg.DATA.TASK_KEYS) < 2:
        raise ConfigError("EVAL.CONSISTENT_DECODING needs two or more DATA.TASK_KEYS levels (a tree to decode).")
    if cfg.TRAIN.LOSS_WEIGHTS and len(cfg.TRAIN.LOSS_WEIGHTS) != len(cfg.DATA.TASK_KEYS):
        raise ConfigError(
            f"TRAIN.LOSS_WEIGHTS has {len(cfg.TRAIN.LOSS_WEIGHTS)} entries but DATA.TASK_KEYS has "
            f"{len(cfg.DATA.TASK_KEYS)}; give one weight per level or leave it empty."
        )
    if cfg.TRAIN.ACCUM_STEPS < 1:
        raise ConfigError(f"TRAIN.ACCUM_STEPS must be >= 1, got {cfg.TRAIN.ACCUM_STEPS}.")
    if cfg.CHECKPOINT.REPLICAS < 0:
        raise ConfigError(f"CHECKPOINT.REPLICAS must be >= 0 (how many other nodes keep a copy of each checkpoint; "
                          f"0 = none), got {cfg.CHECKPOINT.REPLICAS}.")
    if cfg.EVAL.INTERVAL < 1:
        raise ConfigError(f"EVAL.INTERVAL must be >= 1 (validate every N epochs), got {cfg.EVAL.INTERVAL}.")
    if cfg.TRAIN.COLLECTIVE_TIMEOUT_S < 1:
        raise ConfigError(f"TRAIN.COLLECTIVE_TIMEOUT_S must be >= 1 (seconds a collective may wait for the other "
                          f"ranks; default 600), got {cfg.TRAIN.COLLECTIVE_TIMEOUT_S}.")
    if cfg.ENV.OUTPUT.BUCKET.ENABLED and cfg.TRAIN.COLLECTIVE_TIMEOUT_S <= WAIT_SLICE_S:
        raise ConfigError(f"TRAIN.COLLECTIVE_TIMEOUT_S {cfg.TRAIN.COLLECTIVE_TIMEOUT_S} is too short with "
                          f"ENV.OUTPUT.BUCKET.ENABLED: while rank 0 waits for its uploads the other ranks wait in "
                          f"collectives of {WAIT_SLICE_S:g} s; set it above {WAIT_SLICE_S:g} (default 600).")
    validate_buckets(cfg)
    validate_parallel(cfg)
    validate_cluster(cfg)
    _validate_spike(cfg.TRAIN.SPIKE, cfg.TRAIN.SCHEDULER.NAME)
    # Last: the metric-field rules there divide by EVAL.INTERVAL.
    validate_checkpointing(cfg)


def _validate_spike(spike: CN, scheduler: str) -> None:
    if spike.FACTOR != 0 and spike.FACTOR <= 1:
        raise ConfigError(f"TRAIN.SPIKE.FACTOR must be 0 (off) or above 1 (a loss that many times the running median "
                          f"is a spike, e.g. 3), got {spike.FACTOR}.")
    for key, low in (("WINDOW", 1), ("MAX_ROLLBACKS", 0), ("SKIP_STEPS", 1)):
        if not isinstance(spike[key], int) or spike[key] < low:
            raise ConfigError(f"TRAIN.SPIKE.{key} must be an int >= {low}, got {spike[key]!r}.")
    if not 0 < spike.LR_SCALE <= 1:
        raise ConfigError(f"TRAIN.SPIKE.LR_SCALE must be in (0, 1] (the LR is multiplied by it after each rollback), "
                          f"got {spike.LR_SCALE}.")
    if spike.LR_SCALE != 1 and scheduler.lower() == "none":
        raise ConfigError("TRAIN.SPIKE.LR_SCALE scales the LR schedule's value, but TRAIN.SCHEDULER.NAME is 'none': "
                          "choose a schedule (e.g. 'cosine', or 'step' with no decay) or leave LR_SCALE at 1.")
