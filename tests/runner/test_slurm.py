"""The runner under a real Slurm (tests/fixtures_slurm.py): a job submitted with a time limit and
``CHECKPOINT.SAVE_BEFORE_END`` learns its end time from Slurm (``squeue``: Debian's Slurm 22.05 does not
export ``SLURM_JOB_END_TIME``), commits and exits 0 before the limit without any signal; a requeueable job
signalled before its limit (examples/slurm/train.sbatch, torchrun under srun) commits, requeues itself,
and the same job resumes and ends bit-identical."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from linnaeus.checkpoint import verify_checkpoint
from tests.conftest import REPO, run_train, tiny_args
from tests.fixtures_rclone import free_port
from tests.fixtures_slurm import Slurm, slurm  # noqa: F401 - the fixture
from tests.runner.test_resume_exact import _assert_bit_identical, _final_state


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_slurm_job_commits_and_exits_0_before_its_time_limit(slurm: Slurm, tmp_path: Path,  # noqa: F811
                                                              toy_root: Path) -> None:
    # A 5-minute limit and SAVE_BEFORE_END 299s: the time to stop is a second after the start, so the
    # run stops at its first step boundary.
    train = [sys.executable, str(REPO / "tools" / "train.py"),
             *tiny_args(tmp_path, toy_root, "TRAIN.EPOCHS", "1", "CHECKPOINT.SAVE_BEFORE_END", "299s")]
    script = tmp_path / "job.sh"
    # Not requeueable: the run is not put back in the queue (it would stop at once again).
    script.write_text(f"#!/bin/bash\n#SBATCH --time=5\n#SBATCH --no-requeue\n#SBATCH --output={tmp_path}/job-%j.out\n"
                      f"cd {shlex.quote(str(REPO))}\nexec {shlex.join(train)}\n")
    job = slurm.run("sbatch", "--parsable", str(script)).strip().split(";")[0]
    assert slurm.wait_done(job) == "COMPLETED"
    out = (tmp_path / f"job-{job}.out").read_text()
    assert slurm.job_field(job, "ExitCode") == "0:0", out[-3000:]
    assert f"Slurm's end time of job {job} (squeue)" in out, out[-3000:]
    assert "Stopped before the job's end at epoch 0 step 1" in out and "exiting 0" in out, out[-3000:]
    assert f"Slurm job {job} was not submitted requeueable (sbatch --requeue)" in out, out[-3000:]
    assert verify_checkpoint(tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_0_step_1.pth")


def test_an_interactive_job_stopped_before_its_limit_is_not_requeued(slurm: Slurm, tmp_path: Path,  # noqa: F811
                                                                    toy_root: Path) -> None:
    """`srun` without `sbatch`: Slurm requeues only batch jobs, so a stop must not try (and fail)."""
    proc = subprocess.run(["srun", "--time=5", sys.executable, str(REPO / "tools" / "train.py"),
                           *tiny_args(tmp_path, toy_root, "TRAIN.EPOCHS", "1", "CHECKPOINT.SAVE_BEFORE_END", "299s")],
                          cwd=REPO, env=slurm.env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Stopped before the job's end at epoch 0 step 1" in out and "is not a batch job (salloc or srun)" in out


def test_the_example_job_signalled_before_its_limit_commits_requeues_and_ends_as_if_never_interrupted(
        slurm: Slurm, tmp_path: Path, toy_root: Path) -> None:  # noqa: F811
    """examples/slurm/train.sbatch as shipped (srun, then torchrun with 2 workers and the c10d rendezvous):
    the pre-timeout SIGUSR1, sent by Slurm to the job's step as its `--signal=USR1@N` timer does
    (`scancel --signal=USR1`), at a known step. torchrun forwards it, the workers commit, rank 0 requeues
    the job, and the same job id resumes and ends bit-identical to an uninterrupted run."""
    opts = ("TRAIN.EPOCHS", "2", "TRAIN.MAX_STEPS_PER_EPOCH", "6")
    run_train(tmp_path / "reference", toy_root, *opts, nproc=2)
    pause = tmp_path / "paused"
    env = {"LINNAEUS_PYTHON": sys.executable, "NPROC_PER_NODE": "2", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           # The test instruments around the real runner: record the samples, stop rank 0 at its 4th step.
           "LINNAEUS_TRAIN_SCRIPT": "tests/helpers/sharded_ids_train.py", "LINNAEUS_TEST_IDS": str(tmp_path / "ids"),
           "LINNAEUS_TEST_PAUSE_AT": "4", "LINNAEUS_TEST_PAUSE": str(pause)}
    job = slurm.submit(REPO / "examples" / "slurm" / "train.sbatch", "--time=10", f"--output={tmp_path}/job-%j.out",
                       args=(str(REPO / "tests" / "configs" / "tiny.yaml"),
                             *tiny_args(tmp_path / "job", toy_root, *opts)[3:]), env=env)
    wait_until(pause.exists, 180, f"job {job} never reached its 4th step")
    slurm.run("scancel", "--signal=USR1", job)
    time.sleep(1.0)  # delivered and forwarded; then let the step go on
    pause.unlink()
    # The job puts itself back in the queue; Slurm would hold it for its requeue delay (2 minutes): start it now.
    wait_until(lambda: slurm.job_field(job, "Restarts") == "1" and slurm.job_field(job, "JobState") == "PENDING",
               120, f"job {job} did not requeue itself")
    # Not within the second the old launch was killed in: slurmd refuses a launch whose credential is
    # not newer than the job's revocation, to the second ("Job N already killed, do not launch batch job").
    wait_until(lambda: slurm.run("sinfo", "--noheader", "--format", "%t").strip() == "idle", 60, "node still busy")
    time.sleep(2.0)
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    assert slurm.wait_done(job) == "COMPLETED"
    out = (tmp_path / f"job-{job}.out").read_text()
    assert slurm.job_field(job, "ExitCode") == "0:0", out[-3000:]
    assert "received SIGUSR1" in out and "Preempted at epoch 0 step 4" in out, out[-3000:]
    assert f"Requeued Slurm job {job} (restart 1)" in out, out[-3000:]
    assert f"linnaeus: job {job} restart 1 on 1 node(s), 2 worker(s) each" in out
    assert "checkpoint_epoch_0_step_4.pth (epoch 0, step 4)" in out, out[-3000:]
    ids = [(tmp_path / f"ids.rank{r}").read_text().splitlines() for r in (0, 1)]
    assert [len(i) for i in ids] == [2 * 6 * 8] * 2 and len(set(ids[0] + ids[1])) == 2 * 2 * 6 * 8  # none twice
    _assert_bit_identical(_final_state(tmp_path / "job" / "tiny"), _final_state(tmp_path / "reference" / "tiny"))
