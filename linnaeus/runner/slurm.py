"""Slurm's side of a stop: a job that committed its checkpoint on a signal or before its end puts itself
back in the queue (``TRAIN.REQUEUE``), so that the same job id resumes with the same command."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Mapping

from yacs.config import CfgNode

from linnaeus.dist import is_main_process

logger = logging.getLogger("linnaeus")


class RequeueError(RuntimeError):
    """The checkpoint is committed, but the job could not put itself back in Slurm's queue."""


def _scontrol(*args: str) -> subprocess.CompletedProcess:
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        raise RequeueError("TRAIN.REQUEUE is on under Slurm, but there is no scontrol on PATH: the checkpoint is "
                           "committed; resubmit the job to continue, or set TRAIN.REQUEUE False.")
    return subprocess.run([scontrol, *args], capture_output=True, text=True, timeout=120)


def requeue_after_stop(cfg: CfgNode, environ: Mapping[str, str] = os.environ) -> bool:
    """Rank 0, once everything is committed: ``scontrol requeue`` this job when it runs under Slurm, was
    submitted requeueable and TRAIN.REQUEUE is on. Slurm then ends this launch and starts the job again
    (after its requeue delay), with ``SLURM_RESTART_COUNT`` one higher. Returns whether it requeued."""
    job = environ.get("SLURM_JOB_ID", "")
    if not job or not cfg.TRAIN.REQUEUE or not is_main_process():
        return False
    shown = _scontrol("show", "job", "--oneliner", job)
    fields = dict(w.split("=", 1) for w in shown.stdout.split() if "=" in w)
    if shown.returncode != 0 or "Requeue" not in fields:
        raise RequeueError(f"could not read Slurm job {job} (`scontrol show job {job}` exited {shown.returncode}: "
                           f"{shown.stderr.strip()[:300]}): the checkpoint is committed; resubmit the job to continue.")
    if fields.get("BatchFlag") != "1":  # salloc / srun: Slurm requeues batch jobs only
        logger.info("Slurm job %s is not a batch job (salloc or srun): it is not put back in the queue; run the same "
                    "command again to continue", job)
        return False
    if fields["Requeue"] != "1":
        logger.info("Slurm job %s was not submitted requeueable (sbatch --requeue): it is not put back in the "
                    "queue; submit the same command again to continue", job)
        return False
    done = _scontrol("requeue", job)
    if done.returncode != 0:
        raise RequeueError(f"`scontrol requeue {job}` failed (exit {done.returncode}: {done.stderr.strip()[:300]}): "
                           "the checkpoint is committed; resubmit the job to continue.")
    logger.info("Requeued Slurm job %s (restart %s): Slurm starts it again, and it resumes from the checkpoint "
                "just committed", job, int(environ.get("SLURM_RESTART_COUNT", "0") or 0) + 1)
    return True


__all__ = ["RequeueError", "requeue_after_stop"]
