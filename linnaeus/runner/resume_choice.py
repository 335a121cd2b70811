"""Where a run resumes from, for its config: the library's choice, with its errors in config keys.

:func:`~linnaeus.checkpoint.resume.find_resume_point` decides; this module puts TRAIN.RESUME,
TRAIN.AUTO_RESUME, CHECKPOINT.WEIGHTS_ONLY and the bucket keys into what it raises, with the
commands that resolve each case, and warns when a relaunch continues past an explicit target.
"""

from __future__ import annotations

import logging
from typing import Collection

from yacs.config import CfgNode

from linnaeus.checkpoint import CheckpointManager
from linnaeus.checkpoint.errors import CheckpointIncompatibleError, CheckpointNotFoundError, NotATrainingCheckpointError
from linnaeus.checkpoint.remote import RemoteRun
from linnaeus.checkpoint.resume import (
    RemoteCheckpointsPresentError,
    ResumePoint,
    WeightsOnlyRunError,
    find_resume_point,
    parse_run_target,
)
from linnaeus.checkpoint.sources import DownloadOptions, redact
from linnaeus.checkpoint.store import CheckpointsPresentError
from linnaeus.utils.checkpoint_utils import input_resolver

logger = logging.getLogger("linnaeus")


def choose_resume_point(cfg: CfgNode, main: CheckpointManager, remote: RemoteRun | None,
                        skip: Collection[str] = ()) -> ResumePoint | None:
    """The run's resume point (the same on every rank; a collective), or None for a fresh start.
    ``skip``: own checkpoints found damaged while restoring."""
    try:
        point = find_resume_point(
            main, explicit=cfg.TRAIN.RESUME, auto=cfg.TRAIN.AUTO_RESUME, resolve=input_resolver(cfg.ENV.INPUT),
            remote=remote, download=DownloadOptions(retries=cfg.ENV.INPUT.DOWNLOAD_RETRIES), skip=skip)
    except WeightsOnlyRunError as e:
        raise CheckpointIncompatibleError(
            f"{e} (they were written with CHECKPOINT.WEIGHTS_ONLY True). Choose one:\n"
            f"  - start over from scratch: move them aside with `linnaeus-ckpt set-aside {main.directory.parent}` "
            "(nothing is deleted; TRAIN.AUTO_RESUME False alone refuses while they are there);\n"
            f"  - start from these weights: MODEL.PRETRAINED {e.newest} with a new EXPERIMENT.NAME;\n"
            "  - make runs resumable: CHECKPOINT.WEIGHTS_ONLY False, and CHECKPOINT.WEIGHTS_SAVER.ENABLED True "
            "for weights-only copies next to the full checkpoints.", path=e.newest) from e
    except CheckpointsPresentError as e:
        shown = ", ".join(e.names[:8]) + (f" and {len(e.names) - 8} more" if len(e.names) > 8 else "")
        raise CheckpointIncompatibleError(
            f"TRAIN.AUTO_RESUME is False and TRAIN.RESUME is empty (a fresh start), but {e.directory} holds "
            f"{len(e.names)} checkpoint(s) ({shown}), which a fresh start would overwrite. Choose one:\n"
            f"  - resume them: set TRAIN.AUTO_RESUME True (the newest), or TRAIN.RESUME {e.newest} (or another);\n"
            f"  - start over: move them aside with `linnaeus-ckpt set-aside {main.directory.parent}` (nothing is "
            "deleted), then relaunch.", path=e.path) from e
    except RemoteCheckpointsPresentError as e:
        raise CheckpointIncompatibleError(
            f"TRAIN.AUTO_RESUME is False and TRAIN.RESUME is empty (a fresh start), but {e} Choose one: set "
            "TRAIN.AUTO_RESUME True to resume them, or a new EXPERIMENT.NAME for a new run.") from e
    except CheckpointNotFoundError as e:
        if not cfg.TRAIN.RESUME:
            raise
        raise CheckpointNotFoundError(f"TRAIN.RESUME {e}{_not_searched(cfg)}") from e
    except NotATrainingCheckpointError as e:
        shown = redact(cfg.TRAIN.RESUME)
        # 'latest' / 'step:N' name a file of this run; MODEL.PRETRAINED needs its path.
        file = shown if parse_run_target(cfg.TRAIN.RESUME) is None else str(e.path)
        raise CheckpointIncompatibleError(
            f"TRAIN.RESUME {shown}: {e} In the config: MODEL.PRETRAINED {file} with MODEL.PRETRAINED_STRATEGY "
            "transfer (what matches loads; heads follow this run's taxonomy), weights_only (every model tensor "
            "from the file) or strict, and TRAIN.RESUME empty.", path=e.path) from e
    if point is not None and point.superseded is not None and point.superseded.restart:
        old = point.superseded
        logger.warning(
            "TRAIN.RESUME %s with TRAIN.AUTO_RESUME False: this run was restarted from that file (step %d) and its "
            "timeline has gone on to %s (step %d): continuing from %s (a relaunch of the same restart). To restart "
            "from %s again, setting this timeline aside: `linnaeus-ckpt set-aside %s%s`, then relaunch.",
            redact(cfg.TRAIN.RESUME), old.step, point.path, point.step, point.path, redact(cfg.TRAIN.RESUME),
            main.directory.parent, f" --after {old.target.name}" if old.target.parent == main.directory else "")
    elif point is not None and point.superseded is not None:
        old = point.superseded
        logger.warning(
            "TRAIN.RESUME %s (step %d) is older than this run's newest checkpoint %s (step %d): continuing from %s "
            "(relaunch). To restart from %s, set TRAIN.AUTO_RESUME False, use a new EXPERIMENT.NAME or remove the "
            "newer checkpoints.", redact(cfg.TRAIN.RESUME), old.step, point.path, point.step, point.path,
            redact(cfg.TRAIN.RESUME))
    return point


def _not_searched(cfg: CfgNode) -> str:
    notes = [f"{place} was not searched: {key}.ENABLED is False" for place, key in (
        ("the model-zoo bucket", "ENV.INPUT.BUCKET"), ("this run's bucket folder", "ENV.OUTPUT.BUCKET"))
        if not cfg[key.split(".")[0]][key.split(".")[1]].BUCKET.ENABLED]
    return "".join(f"\nNote: {n}." for n in notes)


__all__ = ["choose_resume_point"]
