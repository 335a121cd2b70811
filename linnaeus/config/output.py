"""What a run writes from its config: the run dir's path and config.yaml, credentials redacted."""

from __future__ import annotations

import os
from pathlib import Path

from yacs.config import CfgNode as CN


def run_dir(cfg: CN) -> Path:
    """<ENV.OUTPUT.BASE_DIR>/<EXPERIMENT.NAME>."""
    return Path(os.path.expanduser(cfg.ENV.OUTPUT.BASE_DIR)) / cfg.EXPERIMENT.NAME


def checkpoint_dir(cfg: CN) -> Path:
    """CHECKPOINT.LOCAL_DIR (this node's), else <run dir>/checkpoints."""
    if cfg.CHECKPOINT.LOCAL_DIR:
        return Path(os.path.expanduser(cfg.CHECKPOINT.LOCAL_DIR))
    return run_dir(cfg) / "checkpoints"


# Keys whose values are checkpoint identifiers: a URL or rclone connection string there may
# carry credentials, which must never be written to the run dir or into a checkpoint.
_IDENTIFIER_KEYS = ("TRAIN.RESUME", "MODEL.PRETRAINED", "MODEL.PRETRAINED_CONVNEXT", "MODEL.PRETRAINED_ROPEVIT",
                    "ENV.INPUT.BUCKET.REMOTE", "ENV.OUTPUT.BUCKET.REMOTE")


def config_yaml(cfg: CN) -> str:
    """The resolved config as YAML, with credentials in identifiers (URL user-info, query
    strings such as presigned signatures, rclone connection-string parameters) replaced by ``***``."""
    from linnaeus.checkpoint.sources import redact

    clean = cfg.clone()
    clean.defrost()
    for key in _IDENTIFIER_KEYS:
        *parents, leaf = key.split(".")
        node = clean
        for part in parents:
            node = node[part]
        if isinstance(node.get(leaf), str) and node[leaf]:
            node[leaf] = redact(node[leaf])
    return clean.dump()


def dump_config(cfg: CN, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (durably: temp file, fsync, rename), credentials redacted."""
    from linnaeus.checkpoint.disk import write_durably  # the one durable-write helper

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, config_yaml(cfg))
