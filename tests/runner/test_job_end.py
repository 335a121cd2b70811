"""The job tells the run what is coming: a pre-timeout signal (SIGUSR1, as Slurm's ``--signal=USR1@120``
sends it) is a preemption (under a real Slurm: tests/runner/test_slurm.py), and the job's end time
(``TRAIN.DEADLINE``, or Slurm's ``SLURM_JOB_END_TIME``) with ``CHECKPOINT.SAVE_BEFORE_END`` makes every
rank commit and exit 0 before it, with no signal at all. Real torchrun workers, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from linnaeus.checkpoint import verify_checkpoint
from linnaeus.config import ConfigError, load_config
from linnaeus.config.cluster import preempt_signals
from linnaeus.runner.deadline import Deadline
from tests.conftest import REPO, VENV_BIN, tiny_args

HELPER = REPO / "tests" / "helpers" / "sharded_ids_train.py"
OPTS = ("TRAIN.EPOCHS", "1", "TRAIN.MAX_STEPS_PER_EPOCH", "6")


def _launch(tmp: Path, toy_root: Path, *opts: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(HELPER),
           *tiny_args(tmp / "run", toy_root, *OPTS, *opts)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                               "LINNAEUS_TEST_IDS": str(tmp / "ids"), **(env or {})})


def test_two_ranks_stop_together_before_the_jobs_end_and_the_relaunch_ends_the_epoch(
        tmp_path: Path, toy_root: Path) -> None:
    ckpts = tmp_path / "run" / "tiny" / "checkpoints"
    # 1. Under Slurm with an hour left and CHECKPOINT.SAVE_BEFORE_END 2h: past the time to stop already, so
    # the run stops after its first step on both ranks, committed, though no signal comes (and does not
    # requeue: TRAIN.REQUEUE False; SLURM_JOB_ID names no real job here).
    end = int(time.time()) + 3600
    proc = _launch(tmp_path, toy_root, "CHECKPOINT.SAVE_BEFORE_END", "2h", "TRAIN.REQUEUE", "False",
                   env={"SLURM_JOB_END_TIME": str(end), "SLURM_JOB_ID": "4242"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "Slurm's end time of job 4242 (SLURM_JOB_END_TIME)" in out and "received" not in out
    assert "Less time is left before the job's end than CHECKPOINT.SAVE_BEFORE_END" in out
    assert "Stopped before the job's end at epoch 0 step 1" in out and "exiting 0" in out, out[-3000:]
    assert verify_checkpoint(ckpts / "checkpoint_epoch_0_step_1.pth")

    # 2. The relaunch, with time left, trains the epoch's other steps: none twice, none skipped.
    proc = _launch(tmp_path, toy_root)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert "checkpoint_epoch_0_step_1.pth (epoch 0, step 1)" in proc.stdout + proc.stderr
    keys = [(tmp_path / f"ids.rank{rank}").read_text().splitlines() for rank in (0, 1)]
    assert [len(k) for k in keys] == [6 * 8, 6 * 8] and len(set(keys[0] + keys[1])) == 2 * 6 * 8  # 8 per batch
    assert verify_checkpoint(ckpts / "checkpoint_epoch_1.pth")


def test_only_the_configured_signals_stop_a_run_gracefully(tmp_path: Path) -> None:
    """TRAIN.PREEMPT_SIGNALS [SIGTERM]: SIGUSR1 keeps its default action (the process ends at once)."""
    code = ("import os, signal, sys, time\n"
            "from linnaeus.config import load_config\n"
            "from linnaeus.config.cluster import preempt_signals\n"
            "from linnaeus.runner.preemption import PreemptionHandler\n"
            "cfg = load_config(None, ['TRAIN.PREEMPT_SIGNALS', sys.argv[1]])\n"
            "with PreemptionHandler(True, preempt_signals(cfg)) as h:\n"
            "    os.kill(os.getpid(), signal.SIGUSR1)\n"
            "    time.sleep(0.2)\n"
            "    print('requested', h.requested, flush=True)\n")
    graceful = subprocess.run([sys.executable, "-c", code, "[SIGTERM, USR1]"], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
    assert graceful.returncode == 0 and "requested True" in graceful.stdout, graceful.stderr
    ignored = subprocess.run([sys.executable, "-c", code, "[SIGTERM]"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
    assert ignored.returncode == -signal.SIGUSR1, (ignored.returncode, ignored.stdout, ignored.stderr)


def test_bad_signal_deadline_and_margin_are_refused_naming_the_key() -> None:
    assert preempt_signals(load_config(None, [])) == (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    with pytest.raises(ConfigError, match=r"TRAIN.PREEMPT_SIGNALS: 'SIGKILL' .*cannot be caught"):
        load_config(None, ["TRAIN.PREEMPT_SIGNALS", "[SIGTERM, SIGKILL]"])
    with pytest.raises(ConfigError, match=r"TRAIN.PREEMPT_SIGNALS: 'SIGFOO' .*\(unknown name\)"):
        load_config(None, ["TRAIN.PREEMPT_SIGNALS", "[SIGFOO]"])
    with pytest.raises(ConfigError, match=r"TRAIN.DEADLINE 'tomorrow' is neither a Unix timestamp nor an ISO-8601"):
        load_config(None, ["TRAIN.DEADLINE", "tomorrow", "CHECKPOINT.SAVE_BEFORE_END", "5min"])
    with pytest.raises(ConfigError, match=r"CHECKPOINT.SAVE_BEFORE_END is empty"):
        load_config(None, ["TRAIN.DEADLINE", "2026-12-07T18:00:00"])
    with pytest.raises(ConfigError, match=r"CHECKPOINT.SAVE_BEFORE_END '2ep': expected a duration"):
        load_config(None, ["CHECKPOINT.SAVE_BEFORE_END", "2ep"])


def test_the_deadline_comes_from_the_config_before_slurm_and_is_acted_on_only_with_a_margin() -> None:
    cfg = load_config(None, ["TRAIN.DEADLINE", "2026-12-07T18:00:00+00:00", "CHECKPOINT.SAVE_BEFORE_END", "5min"])
    d = Deadline.from_config(cfg, {"SLURM_JOB_END_TIME": "1"})
    assert d.end == 1796666400.0 and d.stop_at == 1796666400.0 - 300 and d.source == "TRAIN.DEADLINE"
    slurm = Deadline.from_config(load_config(None, []), {"SLURM_JOB_END_TIME": "1", "SLURM_JOB_ID": "7"})
    assert slurm.end == 1.0 and not slurm.active and not slurm.reached()  # no SAVE_BEFORE_END: not acted on
    assert "the run does not act on it" in slurm.describe()
    assert not Deadline.from_config(load_config(None, []), {}).active
