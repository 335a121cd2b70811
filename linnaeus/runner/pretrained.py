"""MODEL.PRETRAINED*: resolve identifiers, load with the configured strategy, write the load report.

Only rank 0 resolves and loads: DistributedDataParallel's constructor broadcasts rank 0's
parameters and buffers to every rank, so all ranks start identically without N downloads.
Any failure on rank 0 is raised on every rank (no rank is left waiting in a collective).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn
from yacs.config import CfgNode

from linnaeus.checkpoint.errors import CheckpointError, CheckpointIncompatibleError
from linnaeus.checkpoint.load_report import write_load_reports
from linnaeus.dist import is_main_process, run_on_all_ranks
from linnaeus.models.pretrained import load_pretrained_from_cfg
from linnaeus.runner.taxonomy_record import taxonomy_levels
from linnaeus.utils.checkpoint_utils import input_resolver

logger = logging.getLogger("linnaeus")


def load_pretrained_weights(cfg: CfgNode, model: nn.Module, run_dir: Path, taxonomy: Any = None) -> None:
    """Apply MODEL.PRETRAINED / _CONVNEXT / _ROPEVIT (each optional) and log what was loaded;
    the data's ``taxonomy`` lets a transfer map heads by class name."""
    m = cfg.MODEL
    if not (m.PRETRAINED or m.PRETRAINED_CONVNEXT or m.PRETRAINED_ROPEVIT):
        return
    levels = taxonomy_levels(taxonomy)
    run_on_all_ranks(lambda: _load_and_report(cfg, model, run_dir, levels) if is_main_process() else None,
                     "loading pretrained weights", CheckpointError)


def _load_and_report(cfg: CfgNode, model: nn.Module, run_dir: Path, levels: dict[str, list[str]] | None) -> None:
    report_path = run_dir / "load_report.json"
    try:
        reports = load_pretrained_from_cfg(model, cfg, resolve_fn=input_resolver(cfg.ENV.INPUT), taxonomy=levels)
    except CheckpointIncompatibleError as e:
        # The user needs the report most when the load fails.
        if getattr(e, "report", None) is not None:
            write_load_reports([e.report], report_path)
        raise
    for report in reports:
        (logger.warning if report.warnings else logger.info)("%s", report.summary())
    logger.info("Load report written to %s", write_load_reports(reports, report_path))
