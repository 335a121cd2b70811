"""The writer process: background saves serialised, hashed and written outside the training process.

Byte-identity with a synchronous save over generated states is in tests/checkpoint/test_async_saves.py
(the same property test as the thread writer's). Here: what a user relies on when processes die.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from linnaeus.checkpoint import CheckpointError, CheckpointManager, CheckpointPolicy, InvalidOperationError, load_verified
from linnaeus.checkpoint.disk import AsyncWriter, ProcessWriter, is_temp_name
from linnaeus.checkpoint.policy import InvalidPolicyError
from linnaeus.checkpoint.testing import set_test_phase_hook
from tests.conftest import REPO, process_running

HELPER = REPO / "tests" / "helpers" / "process_writer_save.py"
POLICY = CheckpointPolicy(async_save=True, writer_process=True)


def _state(step: int) -> dict[str, torch.Tensor]:
    return {f"w{i}": torch.full((1 << 18,), float(step)) for i in range(4)}


def _phases(writer: AsyncWriter, tmp: Path) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    set_test_phase_hook(lambda name, nbytes: seen.append((name, nbytes)))
    try:
        frozen = writer.snapshot({"model": _state(1)})
        writer.submit(lambda: writer.write_file(tmp, frozen), "save")
        writer.wait_idle()
    finally:
        set_test_phase_hook(None)
    assert writer.take_error() is None
    return seen


def test_the_writer_process_reports_every_phase_of_its_write_in_the_training_process(tmp_path: Path) -> None:
    # The fault tests stop a save at a phase; with the writer process the phases happen in the
    # child, so they must reach the training process's hook, in order, with the same byte counts.
    process = ProcessWriter("phases")
    process.start()
    assert process.wait_ready(60)
    try:
        got = _phases(process, tmp_path / "process.pth")
    finally:
        process.release_buffers()
    want = _phases(AsyncWriter("phases"), tmp_path / "thread.pth")
    assert [p for p, _ in want][:2] == ["open", "write"] and want[-2:][0][0] == "written"
    assert got == want
    assert (tmp_path / "process.pth").read_bytes() == (tmp_path / "thread.pth").read_bytes()


def test_a_writer_process_killed_mid_write_fails_that_save_commits_nothing_and_the_next_save_works(
        tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, POLICY, name="killed-writer")
    writer = manager._background
    assert isinstance(writer, ProcessWriter) and writer.wait_ready(60)
    manager.save(model=_state(1), epoch=1, step=1)
    manager.wait()
    first_pid = writer.child_pid
    assert first_pid is not None

    def kill_at_write(name: str, nbytes: int) -> None:
        if name == "write" and process_running(first_pid):
            os.kill(first_pid, signal.SIGKILL)

    set_test_phase_hook(kill_at_write)
    try:
        manager.save(model=_state(2), epoch=2, step=2)
        with pytest.raises(CheckpointError) as err:
            manager.wait()
    finally:
        set_test_phase_hook(None)
    message = str(err.value)
    assert f"writer process (pid {first_pid}) exited with code -9" in message and "checkpoint_epoch_2.pth" in message
    assert "nothing was committed" in message and "writable" not in message
    assert not (tmp_path / "checkpoint_epoch_2.pth").exists()
    assert not [p.name for p in tmp_path.iterdir() if is_temp_name(p.name)], "the partial temp file was removed"

    manager.save(model=_state(3), epoch=3, step=3)
    manager.wait()
    assert writer.child_pid not in (None, first_pid), "the next save started a new writer process"
    state = load_verified(tmp_path / "checkpoint_epoch_3.pth")
    assert torch.equal(state["model"]["w0"], _state(3)["w0"])
    manager.close()
    assert writer.child_pid is None, "close() stops the writer process"


def test_the_signals_that_stop_a_run_do_not_stop_its_writer_process_mid_save(tmp_path: Path) -> None:
    # Ctrl-C signals the whole process group and Slurm every process of a step: the training process
    # handles them by committing a last checkpoint, which its writer process must live to write.
    manager = CheckpointManager(tmp_path, POLICY, name="signalled")
    pid = manager._background.child_pid
    assert pid is not None, "the writer process starts with the manager"
    assert manager._background.wait_ready(60)  # the save goes through it
    sent: list[int] = []

    def signal_at_write(name: str, nbytes: int) -> None:
        if name == "write" and not sent:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
                os.kill(pid, sig)
                sent.append(sig)

    set_test_phase_hook(signal_at_write)
    try:
        manager.save(model=_state(1), epoch=1, step=1)
        manager.wait()
    finally:
        set_test_phase_hook(None)
    assert len(sent) == 5 and process_running(pid) and manager._background.child_pid == pid
    assert torch.equal(load_verified(tmp_path / "checkpoint_epoch_1.pth")["model"]["w3"], _state(1)["w3"])
    manager.close()


def test_an_error_in_the_writer_process_reaches_the_caller_with_its_type_and_the_childs_traceback(
        tmp_path: Path) -> None:
    writer = ProcessWriter("errors")
    writer.start()
    assert writer.wait_ready(60)
    try:
        frozen = writer.snapshot({"model": _state(1)})
        writer.submit(lambda: writer.write_file(tmp_path / "missing-dir" / "x.pth", frozen), "save")
        writer.wait_idle()
        error = writer.take_error()
    finally:
        writer.release_buffers()
    assert isinstance(error, FileNotFoundError)
    assert any("raised in the writer process" in note and "write_hashed" in note for note in error.__notes__)


def test_kill_9_of_the_training_process_takes_its_writer_process_with_it_and_a_relaunch_resumes(
        tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(HELPER), str(tmp_path)], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    writer_pid = worker = None
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("linnaeus-test-worker "):
                worker = int(line.split()[1])
            if line.startswith("linnaeus-test-phase write ") and int(line.split()[2]) >= (4 << 20):
                writer_pid = int(line.rsplit("writer=", 1)[1])
                break
        assert writer_pid is not None, "the save never reached its write phase"
        assert process_running(writer_pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while process_running(writer_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker is not None and process_running(worker), "the forked worker still holds the socket"
        assert not process_running(writer_pid), "the writer process outlived the training process it wrote for"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if worker is not None and process_running(worker):
            os.kill(worker, signal.SIGKILL)
    assert [p.name for p in tmp_path.iterdir() if is_temp_name(p.name)], "killed mid-write: a temp file is left"

    manager = CheckpointManager(tmp_path, POLICY, name="relaunch")  # takes the lock, cleans up
    found = manager.load_resumable()
    assert found is not None and found[0].name == "checkpoint_epoch_1.pth"
    assert not [p.name for p in tmp_path.iterdir() if is_temp_name(p.name)]
    manager.close()


def test_writer_process_needs_async_saves_and_the_single_file_format(tmp_path: Path) -> None:
    with pytest.raises(InvalidPolicyError, match="writer_process=True .* needs async_save=True"):
        CheckpointPolicy(writer_process=True)
    with pytest.raises(InvalidOperationError, match="sharded saves are written by torch.distributed.checkpoint"):
        CheckpointManager(tmp_path, POLICY, sharded=True)
