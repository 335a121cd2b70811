"""TRAIN.STRATEGY and CHECKPOINT.FORMAT: their values, what auto means, and the combinations refused."""

from __future__ import annotations

from yacs.config import CfgNode as CN

from .errors import ConfigError

STRATEGIES = ("ddp", "fsdp")
FORMATS = ("auto", "file", "sharded")


def sharded_checkpoints(cfg: CN) -> bool:
    """Whether the main saver writes sharded (DCP directory) checkpoints: FORMAT sharded, or auto under fsdp."""
    fmt = cfg.CHECKPOINT.FORMAT
    return fmt == "sharded" or (fmt == "auto" and cfg.TRAIN.STRATEGY == "fsdp")


def validate_parallel(cfg: CN) -> None:
    """Raise :class:`ConfigError` naming the keys of a strategy/format combination that cannot run."""
    if cfg.TRAIN.STRATEGY not in STRATEGIES:
        raise ConfigError(f"TRAIN.STRATEGY must be one of {', '.join(STRATEGIES)}, got {cfg.TRAIN.STRATEGY!r}.")
    if cfg.CHECKPOINT.FORMAT not in FORMATS:
        raise ConfigError(f"CHECKPOINT.FORMAT must be one of {', '.join(FORMATS)}, got {cfg.CHECKPOINT.FORMAT!r}.")
    fsdp = cfg.TRAIN.STRATEGY == "fsdp"
    if fsdp and cfg.CHECKPOINT.FORMAT == "file":
        raise ConfigError(
            "CHECKPOINT.FORMAT file with TRAIN.STRATEGY fsdp: a single-file save would gather the whole model and "
            "optimizer into one process, which is what fsdp avoids. Use CHECKPOINT.FORMAT auto (or sharded); "
            "`linnaeus-ckpt export DIR OUT.pth` writes one weights-only file from a sharded checkpoint.")
    if not sharded_checkpoints(cfg):
        return
    why = "CHECKPOINT.FORMAT sharded" if cfg.CHECKPOINT.FORMAT == "sharded" else \
        "CHECKPOINT.FORMAT auto under TRAIN.STRATEGY fsdp (sharded checkpoints)"
    for key, on, reason in (
        ("CHECKPOINT.WEIGHTS_ONLY", cfg.CHECKPOINT.WEIGHTS_ONLY, "sharded checkpoints are always full "
                                                                 "(export weights with `linnaeus-ckpt export`)"),
    ):
        if on:
            raise ConfigError(f"{key} True with {why}: {reason}. Set {key} False, or CHECKPOINT.FORMAT file "
                              "with TRAIN.STRATEGY ddp.")
