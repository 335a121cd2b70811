"""MODEL.PRETRAINED*: resolve identifiers, load with the configured strategy, write the load report.

Only rank 0 resolves and loads: DistributedDataParallel's constructor broadcasts rank 0's
parameters and buffers to every rank, so all ranks start identically without N downloads.
A failure on rank 0 is raised on every rank (no rank is left waiting in a collective).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn
from yacs.config import CfgNode

from linnaeus.checkpoint.errors import CheckpointError, CheckpointIncompatibleError
from linnaeus.checkpoint.loading import write_load_reports
from linnaeus.checkpoint.resolve import resolve
from linnaeus.dist import any_rank_true, is_main_process
from linnaeus.models.pretrained import load_pretrained_from_cfg

logger = logging.getLogger("linnaeus")


def _resolver(cfg: CfgNode):
    env = cfg.ENV.INPUT

    def resolve_fn(identifier: str) -> Path:
        return resolve(identifier, cache_dir=os.path.expanduser(env.CACHE_DIR), bucket=env.BUCKET,
                       retries=env.DOWNLOAD_RETRIES, recursive_lookup=env.RECURSIVE_LOOKUP)

    return resolve_fn


def load_pretrained_weights(cfg: CfgNode, model: nn.Module, run_dir: Path) -> None:
    """Apply MODEL.PRETRAINED / _CONVNEXT / _ROPEVIT (each optional) and log what was loaded."""
    m = cfg.MODEL
    if not (m.PRETRAINED or m.PRETRAINED_CONVNEXT or m.PRETRAINED_ROPEVIT):
        return
    error: BaseException | None = None
    if is_main_process():
        try:
            reports = load_pretrained_from_cfg(model, cfg, resolve_fn=_resolver(cfg))
            for report in reports:
                (logger.warning if report.warnings else logger.info)("%s", report.summary())
            logger.info("Load report written to %s", write_load_reports(reports, run_dir / "load_report.json"))
        except CheckpointIncompatibleError as e:
            # The user needs the report most when the load fails.
            if getattr(e, "report", None) is not None:
                write_load_reports([e.report], run_dir / "load_report.json")
            error = e
        except (CheckpointError, ValueError, OSError) as e:
            error = e
    if any_rank_true(error is not None):
        if error is not None:
            raise error
        raise CheckpointError("loading pretrained weights failed on rank 0; its error is in the log above.")
