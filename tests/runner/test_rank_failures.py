"""Any error on one rank stops every rank at once: rank 0 raises a RuntimeError (not one of the
checkpoint library's errors) while resuming and while loading pretrained weights, under a real
2-process torchrun; both processes must exit non-zero within seconds, not after the process
group's timeout (30 minutes)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN, run_train, tiny_args

# Seconds from launch to both processes gone: torchrun start, imports, data, model, one failure.
# Far below the 30-minute collective timeout that a rank left waiting would hit.
BOUND_S = 120


def _launch_with_failure(where: str, out: Path, toy_root: Path, *opts: str) -> tuple[int, str, float]:
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "helpers" / "rank0_fails.py"), where, *tiny_args(out, toy_root, *opts)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=BOUND_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers, by process group
        output, _ = proc.communicate()
        pytest.fail(f"rank 0's failure at {where} did not stop the job within {BOUND_S} s:\n{output[-4000:]}")
    return proc.returncode, output, time.monotonic() - started


def _peer_names_rank0(what: str, out: str) -> bool:
    # torchrun prefixes each line of a worker's traceback with "[rankN]: ".
    return re.search(rf"\[rank1\]: \S+: {what}.* failed on rank 0:\n\[rank1\]:   rank 0: RuntimeError: injected "
                     "failure on rank 0", out) is not None


def test_runtime_error_on_rank0_during_resume_stops_every_rank(tmp_path: Path, toy_root: Path) -> None:
    run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "1", "TRAIN.MAX_STEPS_PER_EPOCH", "2")  # something to resume
    rc, out, seconds = _launch_with_failure("resume", tmp_path, toy_root, "TRAIN.EPOCHS", "2",
                                      "TRAIN.MAX_STEPS_PER_EPOCH", "2")
    assert rc != 0 and seconds < BOUND_S, out[-4000:]
    assert "RuntimeError: injected failure on rank 0" in out
    # Rank 1 did not fail itself: it stops on purpose, naming rank 0 and the cause (not a broken connection).
    assert _peer_names_rank0("resume in", out), out[-4000:]
    assert "Resumed from" not in out


def test_runtime_error_on_rank0_during_pretrained_loading_stops_every_rank(tmp_path: Path, toy_root: Path) -> None:
    rc, out, seconds = _launch_with_failure("pretrained", tmp_path, toy_root, "MODEL.PRETRAINED", "some_weights.pth")
    assert rc != 0 and seconds < BOUND_S, out[-4000:]
    assert "RuntimeError: injected failure on rank 0" in out
    assert _peer_names_rank0("loading pretrained weights", out), out[-4000:]
