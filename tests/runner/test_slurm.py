"""The runner under a real Slurm (tests/fixtures_slurm.py): a job submitted with a time limit and
``CHECKPOINT.SAVE_BEFORE_END`` learns its end time from Slurm (``squeue``: Debian's Slurm 22.05 does not
export ``SLURM_JOB_END_TIME``), commits and exits 0 before the limit without any signal."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from linnaeus.checkpoint import verify_checkpoint
from tests.conftest import REPO, tiny_args
from tests.fixtures_slurm import Slurm, slurm  # noqa: F401 - the fixture


def test_a_slurm_job_commits_and_exits_0_before_its_time_limit(slurm: Slurm, tmp_path: Path,  # noqa: F811
                                                              toy_root: Path) -> None:
    # A 5-minute limit and SAVE_BEFORE_END 299s: the time to stop is a second after the start, so the
    # run stops at its first step boundary.
    train = [sys.executable, str(REPO / "tools" / "train.py"),
             *tiny_args(tmp_path, toy_root, "TRAIN.EPOCHS", "1", "CHECKPOINT.SAVE_BEFORE_END", "299s")]
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --time=5\n#SBATCH --output={tmp_path}/job-%j.out\n"
                      f"cd {shlex.quote(str(REPO))}\nexec {shlex.join(train)}\n")
    job = slurm.run("sbatch", "--parsable", str(script)).strip().split(";")[0]
    assert slurm.wait_done(job) == "COMPLETED"
    out = (tmp_path / f"job-{job}.out").read_text()
    assert slurm.job_field(job, "ExitCode") == "0:0", out[-3000:]
    assert f"Slurm's end time of job {job} (squeue)" in out, out[-3000:]
    assert "Stopped before the job's end at epoch 0 step 1" in out and "exiting 0" in out, out[-3000:]
    assert verify_checkpoint(tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_0_step_1.pth")
