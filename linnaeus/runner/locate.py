"""Which checkpoint a command means: the run's own ``latest``, ``best`` or ``step:N``, a run dir, or any
identifier ``MODEL.PRETRAINED`` accepts (path, bare name through cache and bucket, URI)."""

from __future__ import annotations

from pathlib import Path

from yacs.config import CfgNode

from linnaeus.checkpoint import CheckpointError, list_checkpoints
from linnaeus.checkpoint.resume import locate_run_target, parse_run_target
from linnaeus.config import checkpoint_dir
from linnaeus.utils.checkpoint_utils import input_resolver


def locate_checkpoint(cfg: CfgNode, identifier: str) -> Path:
    """The local checkpoint ``identifier`` names: the config's run's ``latest``, ``best`` or ``step:N``, a run
    dir (its latest), or anything ``MODEL.PRETRAINED`` accepts (path, bare name, URI)."""
    checkpoints = checkpoint_dir(cfg)
    if identifier == "best":
        return _best(cfg, checkpoints)
    target = parse_run_target(identifier)
    if target is not None:
        return locate_run_target(target, checkpoints)
    given = Path(identifier).expanduser()
    for directory in (given / "checkpoints", given):  # a run dir, or its checkpoints/
        if (directory / "latest").is_file():
            return locate_run_target(parse_run_target("latest"), directory)  # type: ignore[arg-type]
    return input_resolver(cfg.ENV.INPUT)(identifier)


def _best(cfg: CfgNode, directory: Path) -> Path:
    monitor = cfg.CHECKPOINT.MONITOR
    if not monitor:
        raise CheckpointError("--ckpt best: the config sets no CHECKPOINT.MONITOR to rank checkpoints by; name the "
                              "checkpoint, or pass --opts CHECKPOINT.MONITOR val/acc1/<rank>.")
    rated = [i for i in list_checkpoints(directory) if i.committed and i.metric(monitor) is not None]
    if not rated:
        raise CheckpointError(f"--ckpt best: no committed checkpoint in {directory} records {monitor}.")
    pick = max if cfg.CHECKPOINT.MODE == "max" else min
    return pick(rated, key=lambda i: i.metric(monitor)).path  # type: ignore[arg-type, return-value]


__all__ = ["locate_checkpoint"]
