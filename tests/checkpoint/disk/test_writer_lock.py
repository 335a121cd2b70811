"""One writer per checkpoint dir, and the leftovers of killed saves (issue 10, items 7 and 8).

Real runner processes (tools/train.py on the tiny config) launched twice on one run dir, a real
``kill -9`` of the lock holder, a real ``torchrun`` second launch, and a real pid namespace
(``unshare -fp --mount-proc``) in which a killed writer and its relaunch are both pid 1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, load_verified, verify_checkpoint
from linnaeus.checkpoint.disk import is_temp_name
from linnaeus.checkpoint.formats import is_checkpoint_name, is_pending_sidecar_name
from linnaeus.cli.ckpt import main as ckpt_main
from tests.conftest import REPO, tiny_args, train_cmd

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# Long enough (~30 s of training) for a second launch to start while the first one runs; two
# savers on one dir, async saves, step saves with retention: every path that writes or deletes.
LONG = ("TRAIN.EPOCHS", "14", "CHECKPOINT.KEEP_LAST_N", "3", "CHECKPOINT.ASYNC", "True",
        "CHECKPOINT.WEIGHTS_SAVER.ENABLED", "True", "CHECKPOINT.WEIGHTS_SAVER.INTERVAL", "10st",
        "CHECKPOINT.WEIGHTS_SAVER.FILENAME", "weights_step_{step}.pth", "CHECKPOINT.WEIGHTS_SAVER.KEEP_LAST_N", "2")
WRITER = REPO / "tests" / "helpers" / "ckpt_writer.py"


def _launch(tmp_path: Path, toy_root: Path, label: str, *opts: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / f"{label}.out"
    with open(out, "w") as f:
        proc = subprocess.Popen(train_cmd() + tiny_args(tmp_path, toy_root, *opts), cwd=REPO, env=ENV,
                                stdout=f, stderr=subprocess.STDOUT)
    return proc, out


def _wait_for(predicate, proc: subprocess.Popen, out: Path, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {what}:\n{out.read_text()[-4000:]}")
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s:\n{out.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def _assert_every_file_verifies(ckpts: Path) -> list[str]:
    names = sorted(n for n in os.listdir(ckpts) if is_checkpoint_name(n))
    for name in names:
        assert verify_checkpoint(ckpts / name).ok, f"{name} does not verify"
    leftovers = [n for n in os.listdir(ckpts) if is_temp_name(n) or is_pending_sidecar_name(n)]
    assert leftovers == [], f"leftovers of saves: {leftovers}"
    return names


# ----------------------------------------------------------------------------- item 7: one writer
def test_a_second_launch_on_a_running_run_dir_fails_at_once_naming_the_holder(tmp_path: Path,
                                                                               toy_root: Path) -> None:
    first, first_out = _launch(tmp_path, toy_root, "first", *LONG)
    log = tmp_path / "tiny" / "log.txt"
    try:
        _wait_for(lambda: log.is_file() and "starting fresh" in log.read_text(), first, first_out, "a fresh start")
        start = time.monotonic()
        second = subprocess.run(train_cmd() + tiny_args(tmp_path, toy_root, *LONG), cwd=REPO, env=ENV,
                                capture_output=True, text=True, timeout=240)
        elapsed = time.monotonic() - start
        out = second.stdout + second.stderr
        assert second.returncode != 0, f"the second launch ran beside the first:\n{out[-4000:]}"
        assert first.poll() is None, "the first launch ended before the second one did: make LONG longer"
        assert f"pid {first.pid} on host {socket.gethostname()}" in out, out[-4000:]
        assert "EXPERIMENT.NAME" in out, out[-4000:]  # what to do, in the config keys the user can change
        assert elapsed < 60, f"the second launch took {elapsed:.0f} s to give up"
        assert first.wait(300) == 0, first_out.read_text()[-4000:]
    finally:
        _stop(first)
    names = _assert_every_file_verifies(tmp_path / "tiny" / "checkpoints")
    assert "checkpoint_epoch_14.pth" in names and any(n.startswith("weights_step_") for n in names), names
    # Every file is the first launch's own: one run id, and no save of the second launch.
    run_ids = {load_verified(tmp_path / "tiny" / "checkpoints" / n)["meta"]["run_id"] for n in names}
    assert len(run_ids) == 1, run_ids
    assert "starting fresh" not in second.stdout


def test_kill_9_of_the_holder_frees_the_run_dir_for_a_relaunch(tmp_path: Path, toy_root: Path) -> None:
    first, first_out = _launch(tmp_path, toy_root, "first", *LONG)
    ckpts = tmp_path / "tiny" / "checkpoints"
    try:
        _wait_for(lambda: ckpts.is_dir() and any(n.startswith("checkpoint_") and n.endswith(".pth")
                                                 for n in os.listdir(ckpts)), first, first_out, "a checkpoint")
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
    finally:
        _stop(first)
    relaunch, relaunch_out = _launch(tmp_path, toy_root, "relaunch", *LONG)
    try:
        assert relaunch.wait(300) == 0, relaunch_out.read_text()[-4000:]
    finally:
        _stop(relaunch)
    assert "Resumed from" in relaunch_out.read_text()
    assert "checkpoint_epoch_14.pth" in _assert_every_file_verifies(ckpts)


def test_a_second_ddp_launch_fails_on_every_rank_instead_of_hanging(tmp_path: Path, toy_root: Path) -> None:
    first, first_out = _launch(tmp_path, toy_root, "first", *LONG)
    log = tmp_path / "tiny" / "log.txt"
    try:
        _wait_for(lambda: log.is_file() and "starting fresh" in log.read_text(), first, first_out, "a fresh start")
        second = subprocess.run(train_cmd(2) + tiny_args(tmp_path, toy_root, *LONG), cwd=REPO, env=ENV,
                                capture_output=True, text=True, timeout=240)
        out = second.stdout + second.stderr
        assert second.returncode != 0, out[-4000:]
        assert first.poll() is None, "the first launch ended before the second one did: make LONG longer"
        holder = f"pid {first.pid} on host {socket.gethostname()}"
        assert holder in out, out[-4000:]
        # Rank 1 raised too (naming rank 0's cause) instead of waiting in a collective.
        assert re.search(r"\[rank1\]: \S*DirectoryLockedError: locking checkpoint directory .* failed on rank 0:\n"
                         r"\[rank1\]:\s+rank 0: DirectoryLockedError: .*" + re.escape(holder), out), out[-4000:]
        assert first.wait(300) == 0, first_out.read_text()[-4000:]
    finally:
        _stop(first)
    _assert_every_file_verifies(tmp_path / "tiny" / "checkpoints")


HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy
m = CheckpointManager({directory!r}, CheckpointPolicy())
print("holding", flush=True)
time.sleep(120)
"""


def _holder(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=str(REPO), directory=str(directory))],
                            env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_library_managers_hold_the_lock_share_it_in_process_and_release_it(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from linnaeus.checkpoint import DirectoryLockedError

    directory = tmp_path / "ckpts"
    holder = _holder(directory)
    try:
        with pytest.raises(DirectoryLockedError, match=f"pid {holder.pid} on host {re.escape(socket.gethostname())}"):
            CheckpointManager(directory, CheckpointPolicy())
        # A live holder's in-progress temp: the CLI touches nothing and says why.
        temp = directory / ".checkpoint_epoch_1.pth.tmp-123-abc"
        temp.write_bytes(b"being written")
        assert ckpt_main(["prune", str(directory), "--keep-last", "1"]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert temp.exists()
        # Nor do the commands that move or adopt a run's files.
        (directory / "checkpoint_epoch_1.pth").write_bytes(b"a run's file without its sidecar yet")
        for command in ("set-aside", "adopt"):
            before = sorted(os.listdir(directory))
            assert ckpt_main([command, str(directory)]) == 2, command
            assert f"pid {holder.pid}" in capsys.readouterr().err
            assert sorted(os.listdir(directory)) == before, command
        (directory / "checkpoint_epoch_1.pth").unlink()
    finally:
        _stop(holder)
    # The kernel released the lock with the process: the next writer gets it and cleans up.
    a = CheckpointManager(directory, CheckpointPolicy())
    assert not temp.exists()
    b = CheckpointManager(directory, CheckpointPolicy(), name="weights")  # one process: one shared lock
    a.close()
    other = subprocess.run([sys.executable, "-c", HOLDER.format(repo=str(REPO), directory=str(directory))],
                           env=ENV, capture_output=True, text=True, timeout=60)
    assert other.returncode != 0 and f"pid {os.getpid()}" in other.stderr, other.stderr  # b still holds it
    b.close()
    holder = _holder(directory)  # released on close(): another process gets it
    _stop(holder)


# ----------------------------------------------------------------------------- item 8: pid reuse
def _pid1_writer(directory: Path, n_saves: int, *, kill_at_fsynced_of_save: int | None = None) -> int:
    """Run tests/helpers/ckpt_writer.py as pid 1 of a new pid namespace (as in a container);
    SIGKILL it once save number ``kill_at_fsynced_of_save`` has fsynced its data."""
    cmd = ["unshare", "-fp", "--mount-proc", sys.executable, str(WRITER)]
    if kill_at_fsynced_of_save is None:
        return subprocess.run(cmd + [str(directory), str(n_saves)], env=ENV, timeout=120).returncode
    proc = subprocess.Popen(cmd + ["--phase-delay", "0.02", str(directory), str(n_saves)], env=ENV,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    saves = 0
    try:
        for line in proc.stderr:
            if line.startswith("linnaeus-test-phase open "):
                saves += 1
            elif saves == kill_at_fsynced_of_save and line.startswith("linnaeus-test-phase fsynced"):
                # The writer is unshare's child (pid 1 inside); kill it, not unshare.
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                assert len(children) == 1, children
                os.kill(int(children[0]), signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            proc.wait(30)
        proc.stderr.close()
    return proc.returncode


def test_temps_of_a_killed_pid_1_are_removed_by_a_pid_1_relaunch_and_by_prune(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-fp", "--mount-proc", "true"]).returncode:
        pytest.skip("needs unshare -fp --mount-proc (root, util-linux)")
    directory = tmp_path / "ckpts"
    assert _pid1_writer(directory, 3, kill_at_fsynced_of_save=2) != 0
    temps = [n for n in os.listdir(directory) if is_temp_name(n)]
    assert len(temps) == 1 and re.search(r"\.tmp-1-", temps[0]), temps  # written by pid 1
    size = (directory / temps[0]).stat().st_size
    assert size > 1 << 20, "the leftover is a whole checkpoint's data"

    assert _pid1_writer(directory, 1) == 0  # the relaunch is pid 1 again
    assert [n for n in os.listdir(directory) if is_temp_name(n)] == [], "the relaunch kept a dead pid 1's temp"
    _assert_every_file_verifies(directory)

    # The CLI (not pid 1, and pid 1 of this namespace is alive) removes a fresh one too.
    assert _pid1_writer(directory, 3, kill_at_fsynced_of_save=1) != 0
    assert len([n for n in os.listdir(directory) if is_temp_name(n)]) == 1
    assert ckpt_main(["prune", str(directory), "--keep-last", "5"]) == 0
    assert [n for n in os.listdir(directory) if is_temp_name(n)] == [], "prune kept a dead writer's temp"
    _assert_every_file_verifies(directory)
