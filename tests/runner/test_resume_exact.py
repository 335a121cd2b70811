"""Exact resume: a run interrupted (SIGTERM or kill -9) and relaunched with the same command ends
with bit-identical weights to an uninterrupted run — one process and 2-process torchrun."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_train, tiny_args, train_cmd

# Mid-epoch step checkpoints (every 5 optimizer steps) plus the default end-of-epoch ones.
STEP_OPTS = ("CHECKPOINT.INTERVAL", "5st", "CHECKPOINT.FILENAME", "checkpoint_step_{step}.pth")


def _final_state(run: Path) -> dict:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return torch.load(run / "checkpoints" / latest, weights_only=True, map_location="cpu")


def _assert_bit_identical(a: dict, b: dict) -> None:
    assert a["progress"] == b["progress"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"model tensor {k} differs"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), f"optimizer state {k} differs"
    assert a["scheduler"] == b["scheduler"]
    assert a["metrics"]["history"] == b["metrics"]["history"]


def _start(out: Path, toy_root: Path, *opts: str, nproc: int = 1) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(out / f"launch-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(train_cmd(nproc) + tiny_args(out, toy_root, *opts), cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before the interruption point")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the interruption point")
        time.sleep(0.05)


def _log_step(run: Path) -> int:
    log = run / "log.txt"
    steps = re.findall(r"epoch \d+ step (\d+) ", log.read_text()) if log.exists() else []
    return int(steps[-1]) if steps else 0


def _children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_mid_epoch_then_relaunch_is_bit_identical(tmp_path, toy_root, reference, nproc):
    proc = _start(tmp_path, toy_root, *STEP_OPTS, nproc=nproc)
    try:
        # Stop after a step that is not a step-checkpoint boundary, in the second epoch's middle ... or
        # anywhere: whatever step the signal lands on, the relaunch must continue exactly.
        _wait_for(lambda: _log_step(tmp_path / "tiny") >= 7, proc)
        if nproc == 1:
            os.killpg(proc.pid, signal.SIGTERM)  # like a scheduler: the whole process group
        else:
            # A preemption notice to the tasks. (torchrun itself exits 1 when *it* is signalled,
            # whatever its workers did; signalling the workers lets them finish cleanly and it exits 0.)
            for child in _children(proc.pid):
                os.kill(child, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, "a preempted run must commit a checkpoint and exit 0"
    finally:
        _stop(proc)
    log = (tmp_path / "tiny" / "log.txt").read_text()
    assert "Preempted at epoch" in log
    interrupted = _final_state(tmp_path / "tiny")
    assert interrupted["progress"]["epoch_step"] > 0 or interrupted["progress"]["epoch"] < 2

    relaunch = run_train(tmp_path, toy_root, *STEP_OPTS, nproc=nproc)
    p = interrupted["progress"]
    assert re.search(rf"Resumed from .* \(epoch {p['epoch']}, step {p['step']}\)", relaunch.stdout + relaunch.stderr)
    _assert_bit_identical(_final_state(tmp_path / "tiny"), reference(nproc))


def test_kill9_then_relaunch_resumes_from_last_committed_and_is_bit_identical(tmp_path, toy_root, reference):
    ckpts = tmp_path / "tiny" / "checkpoints"
    proc = _start(tmp_path, toy_root, *STEP_OPTS)
    try:
        _wait_for(lambda: (ckpts / "checkpoint_step_10.pth").exists() and _log_step(tmp_path / "tiny") >= 12, proc)
    finally:
        _stop(proc)  # kill -9: no chance to save
    relaunch = run_train(tmp_path, toy_root, *STEP_OPTS)
    assert "Resumed from" in relaunch.stdout + relaunch.stderr
    _assert_bit_identical(_final_state(tmp_path / "tiny"), reference(1))


SIGNAL_SCRIPT = """
import sys, time
from linnaeus.runner.preemption import PreemptionHandler
with PreemptionHandler() as h:
    print("ready", flush=True)
    while True:          # a long step that never reaches a point where it could save
        time.sleep(0.01)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_exits_at_once_and_duplicates_are_one_request(sig):
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_SCRIPT], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        proc.send_signal(sig)  # same delivery twice (process group + torchrun forwarding)
        time.sleep(1.5)
        assert proc.poll() is None, "a duplicate delivery must not kill the process"
        proc.send_signal(sig)  # a deliberate second signal
        assert proc.wait(timeout=10) == -sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"received {signal.Signals(sig).name}" in proc.stderr.read()
