"""When the launcher or a rank dies, the rest of a 2-process torchrun job stops on its own, fast.

Real torchrun, real gloo, real SIGKILL/SIGSTOP. After each death: within BOUND_S no process of
the job is left (pids collected from /proc before the kill, never looked up by name), every
checkpoint under a final name verifies, and a relaunch resumes and ends bit-identical to an
uninterrupted run (the session's shared 2-process reference run, conftest.py `reference`, which saves
on another schedule and synchronously: how a run saves changes nothing in its training).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from linnaeus.checkpoint import verify_checkpoint
from tests.conftest import REPO, VENV_BIN, process_running, run_train, tiny_args
from tests.runner.test_resume_exact import _assert_bit_identical, _final_state, _log_step

# 2 epochs of 12 steps, a step checkpoint every 4 steps, written asynchronously.
OPTS = ("TRAIN.EPOCHS", "2", "CHECKPOINT.INTERVAL", "4st", "CHECKPOINT.FILENAME", "checkpoint_step_{step}.pth",
        "CHECKPOINT.ASYNC", "True")
# Seconds from the kill to no process of the job left (measured: about 1 s; see docs/checkpoints.md).
BOUND_S = 30
GONE_LINE = "The launcher of this worker (pid {pid}) is gone"


class Job:
    """One torchrun launch (in a session of its own) and every process it started, by pid."""

    def __init__(self, out: Path, toy_root: Path, *opts: str, hold_first_save_s: float = 0.0,
                 grace_s: float = 0.0) -> None:
        self.log = out / f"launch-{time.monotonic_ns()}.log"
        cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2",
               str(REPO / "tests" / "helpers" / "slow_first_save.py"), str(hold_first_save_s), str(grace_s),
               *tiny_args(out, toy_root, *OPTS, *opts)]
        with open(self.log, "w") as log:
            self.launcher = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        self.pids: set[int] = {self.launcher.pid}
        self.run_dir = out / "tiny"

    def workers(self) -> list[int]:
        return _children(self.launcher.pid)

    def collect(self) -> None:
        """Every process of the job now (launcher, workers, theirs): the ones that must all end."""
        todo = [self.launcher.pid]
        while todo:
            pid = todo.pop()
            self.pids.add(pid)
            todo += _children(pid)

    def wait_until(self, predicate, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.launcher.poll() is not None:
                raise AssertionError(f"the job ended (rc {self.launcher.returncode}) before the interruption point:\n"
                                     f"{self.output()[-4000:]}")
            assert time.monotonic() < deadline, "timed out waiting for the interruption point"
            time.sleep(0.02)

    def seconds_until_all_gone(self, since: float) -> float:
        """Seconds from ``since`` until no process of the job is left; fails after BOUND_S."""
        while True:
            alive = [pid for pid in self.pids if process_running(pid)]
            if not alive:
                return time.monotonic() - since
            if time.monotonic() - since > BOUND_S:
                raise AssertionError(f"processes {alive} of the job still ran {BOUND_S} s after the kill:\n"
                                     f"{self.output()[-4000:]}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill_all(self) -> None:
        for pid in self.pids:
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)
        if self.launcher.poll() is None:
            self.launcher.kill()
        self.launcher.wait(timeout=30)


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    started: list[Job] = []
    yield started
    for job in started:  # also when the test failed
        job.kill_all()


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            kids += [int(k) for k in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass  # already gone
    return kids


def _steps(run_dir: Path) -> list[int]:
    """Steps of the step checkpoints under their final names."""
    names = (p.name for p in (run_dir / "checkpoints").glob("checkpoint_step_*.pth"))
    return sorted(int(m.group(1)) for m in map(re.compile(r"checkpoint_step_(\d+)\.pth").fullmatch, names) if m)


def _assert_all_verify(run_dir: Path) -> None:
    files = sorted((run_dir / "checkpoints").glob("*.pth"))
    assert files, "no checkpoint was committed"
    for path in files:
        result = verify_checkpoint(path)
        assert result.ok, f"{path.name} does not verify: {result}"


def _kill_launcher(job: Job, *, save_in_flight: bool) -> int:
    """SIGKILL the launcher; returns the last step a checkpoint may have (orphans would save up to 24)."""
    job.collect()
    kill_step = _log_step(job.run_dir)
    os.kill(job.launcher.pid, signal.SIGKILL)
    seconds = job.seconds_until_all_gone(since=time.monotonic())
    out = job.output()
    # Each worker says why, once (rank 0 to stdout and log.txt, rank 1 to stderr), and nothing else fails.
    assert out.count(GONE_LINE.format(pid=job.launcher.pid)) == 2, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    print(f"launcher SIGKILL ({'save in flight' if save_in_flight else 'between saves'}) at step {kill_step}: "
          f"all {len(job.pids)} processes gone after {seconds:.1f} s")
    return kill_step


def test_launcher_or_worker_sigkill_stops_the_job_and_the_relaunch_is_exact(
        tmp_path: Path, toy_root: Path, reference: Callable[[int], dict], jobs: list[Job]) -> None:
    """Three deaths in a row on one run dir, each followed by a relaunch that resumes; the last
    relaunch runs to the end and must match the uninterrupted run bit for bit."""
    # 1. The launcher dies between saves: the workers stop at the next step, without saving.
    job = Job(tmp_path, toy_root)
    jobs.append(job)
    job.wait_until(lambda: _log_step(job.run_dir) >= 6 and len(job.workers()) == 2)
    kill_step = _kill_launcher(job, save_in_flight=False)
    saved = _steps(job.run_dir)
    assert saved and saved[-1] <= kill_step + 4, (kill_step, saved)  # orphans would go on to step 24
    _assert_all_verify(job.run_dir)

    # 2. The launcher dies while the relaunch's first save is in flight: it commits, nothing after it.
    job = Job(tmp_path, toy_root, hold_first_save_s=3.0)
    jobs.append(job)
    job.wait_until(lambda: "linnaeus-test-phase fsynced" in job.output())
    assert f"checkpoint_step_{saved[-1]}.pth (epoch 0, step {saved[-1]})" in job.output()
    _kill_launcher(job, save_in_flight=True)
    assert _steps(job.run_dir) == saved + [saved[-1] + 4], "the save in flight did not commit, or another followed"
    saved = _steps(job.run_dir)
    _assert_all_verify(job.run_dir)

    # 3. One worker dies: the other names the cause and stops; torchrun exits non-zero.
    job = Job(tmp_path, toy_root)
    jobs.append(job)
    job.wait_until(lambda: _log_step(job.run_dir) >= saved[-1] + 6 and len(job.workers()) == 2)
    assert f"checkpoint_step_{saved[-1]}.pth (epoch {saved[-1] // 12}, step {saved[-1]})" in job.output()
    job.collect()
    os.kill(max(job.workers()), signal.SIGKILL)  # the later-started worker: local rank 1
    seconds = job.seconds_until_all_gone(since=time.monotonic())
    assert job.launcher.wait() != 0
    assert "rank 0: a collective with the other ranks failed" in job.output(), job.output()[-4000:]
    _assert_all_verify(job.run_dir)
    print(f"worker SIGKILL: all {len(job.pids)} processes gone after {seconds:.1f} s")

    # 4. The relaunch resumes from the newest committed checkpoint and ends as if never interrupted.
    newest = _steps(job.run_dir)[-1]
    out = run_train(tmp_path, toy_root, *OPTS, nproc=2)
    assert f"checkpoint_step_{newest}.pth (epoch {newest // 12}, step {newest})" in out.stdout, out.stdout[-3000:]
    _assert_bit_identical(_final_state(job.run_dir), reference(2))
    _assert_all_verify(job.run_dir)


def test_peer_that_stops_answering_is_given_up_after_the_collective_timeout(tmp_path: Path, toy_root: Path,
                                                                          jobs: list[Job]) -> None:
    """A SIGSTOPped rank is a node that vanished: no connection closes, only the timeout ends the wait."""
    job = Job(tmp_path, toy_root, "TRAIN.COLLECTIVE_TIMEOUT_S", "4")
    jobs.append(job)
    job.wait_until(lambda: _log_step(job.run_dir) >= 2 and len(job.workers()) == 2)
    job.collect()
    rank0, rank1 = sorted(job.workers())
    os.kill(rank1, signal.SIGSTOP)
    stopped_at = time.monotonic()
    while process_running(rank0):
        assert time.monotonic() - stopped_at < BOUND_S, f"rank 0 still waits {BOUND_S} s after its peer stopped"
        time.sleep(0.05)
    waited = time.monotonic() - stopped_at
    os.kill(rank1, signal.SIGKILL)  # the vanished node's process: what the scheduler's cleanup does
    job.seconds_until_all_gone(since=time.monotonic())
    out = job.output()
    assert re.search(r"rank 0: a collective with the other ranks failed .*TRAIN\.COLLECTIVE_TIMEOUT_S = 4 s", out), \
        out[-4000:]
    assert 3.5 < waited < 4 + 10, waited
    print(f"SIGSTOP of rank 1: rank 0 gave up after {waited:.1f} s")



PARENT = "import subprocess, sys, time; c = subprocess.Popen([sys.executable] + sys.argv[1:]); print(c.pid, flush=True); time.sleep(600)"


def test_worker_blocked_when_its_launcher_dies_ends_itself_after_the_save_in_flight(tmp_path: Path) -> None:
    """The main thread never reaches a step boundary (blocked in a read, as in a collective whose
    peer is silent): the watch thread ends the process after its grace, once the async save commits."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(REPO / "tests" / "helpers" / "blocked_orphan.py"),
                               str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    child = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "blocked"
        os.kill(parent.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        while process_running(child):
            assert time.monotonic() - killed_at < BOUND_S, f"the worker still runs {BOUND_S} s after its parent died"
            time.sleep(0.05)
        waited = time.monotonic() - killed_at
    finally:
        for pid in (child, parent.pid):
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)
        parent.wait()
    assert "The launcher of this worker (pid %d) is gone" % parent.pid in parent.stderr.read()
    # Past the 1 s grace: it waited for the save held in its write, which committed.
    assert verify_checkpoint(tmp_path / "checkpoint_epoch_1.pth").ok
    assert 1.0 < waited < BOUND_S, waited
    print(f"parent SIGKILL with the main thread blocked: the worker ended after {waited:.1f} s (grace 1 s)")


def test_collective_timeout_is_validated() -> None:
    from linnaeus.config import ConfigError, load_config

    cfg = REPO / "tests" / "configs" / "tiny.yaml"
    assert load_config(str(cfg), []).TRAIN.COLLECTIVE_TIMEOUT_S == 600
    with pytest.raises(ConfigError, match=r"TRAIN\.COLLECTIVE_TIMEOUT_S must be >= 1 .* got 0"):
        load_config(str(cfg), ["TRAIN.COLLECTIVE_TIMEOUT_S", "0"])
    # Uploads keep the other ranks in 30 s collectives while rank 0 waits for them.
    bucket = ["ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", "r", "ENV.OUTPUT.BUCKET.NAME", "b"]
    with pytest.raises(ConfigError, match=r"TRAIN\.COLLECTIVE_TIMEOUT_S 30 is too short with ENV\.OUTPUT\.BUCKET"):
        load_config(str(cfg), [*bucket, "TRAIN.COLLECTIVE_TIMEOUT_S", "30"])
    assert load_config(str(cfg), [*bucket, "TRAIN.COLLECTIVE_TIMEOUT_S", "31"]).TRAIN.COLLECTIVE_TIMEOUT_S == 31


def test_a_worker_whose_launcher_died_during_its_imports_stops(tmp_path: Path, toy_root: Path) -> None:
    """The watch starts only after the worker's imports (seconds); a launcher that died before
    then has already been replaced as the parent (by init), and the worker must still see that
    its launcher is gone instead of watching its new parent and training on as an orphan."""
    log = tmp_path / "worker.log"
    # A stand-in launcher: starts the worker (with torchrun's marker variable) and dies 1.5 s later,
    # while the worker is still importing torch (its watch starts only after about 4 s).
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; log = open(sys.argv[1], 'w'); "
         "print(subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT, start_new_session=True).pid, "
         "flush=True); time.sleep(1.5)",
         str(log), sys.executable, str(REPO / "tools" / "train.py"), *tiny_args(tmp_path, toy_root, *OPTS)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TORCHELASTIC_RUN_ID": "orphan-test"})
    worker = int(launcher.communicate(timeout=60)[0].split()[-1])
    try:
        deadline = time.monotonic() + 120
        while process_running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        out = log.read_text(errors="replace")
        assert not process_running(worker), f"the orphaned worker still runs:\n{out[-3000:]}"
    finally:
        if process_running(worker):
            os.kill(worker, signal.SIGKILL)
    assert GONE_LINE.format(pid=launcher.pid) in out, out[-3000:]
    assert not _steps(tmp_path / "tiny") and "Saved checkpoint" not in out, "an orphan saved checkpoints"
