"""Crash safety and hostile files: kill -9 at every step of a save, corrupt and malicious files.

Kill tests fork a real writer process (tests/helpers/ckpt_writer.py) that reports each step of
the store's commit protocol over a pipe and waits; the test SIGKILLs it at the chosen step,
then checks that resume finds exactly the newest committed checkpoint and never a partial one.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "helpers"))
from ckpt_writer import check_consistent, expected_model, make_policy, run_writer  # noqa: E402

from linnaeus.checkpoint import (  # noqa: E402
    CheckpointCorruptError,
    CheckpointIncompatibleError,
    CheckpointManager,
    load_verified,  # noqa: E402
    read_latest,  # noqa: E402
    verify_checkpoint,
)
from linnaeus.checkpoint.disk import (
    LOCK_NAME,  # noqa: E402
    is_temp_name,  # noqa: E402
    read_sidecar,
    sha256_file,  # noqa: E402
    sidecar_path,
)
from linnaeus.checkpoint.formats import (  # noqa: E402
    commit_file,  # noqa: E402
    is_checkpoint_name,
    is_pending_sidecar_name,
)
from linnaeus.checkpoint.testing import set_test_phase_hook  # noqa: E402
from tests.conftest import REPO

FORK = multiprocessing.get_context("fork")
# After these steps the new checkpoint has its final name: resume must pick it up.
COMMITTED = {"renamed", "dir-synced", "sidecar-replaced", "sidecar-synced", "latest-temp", "latest", "deleted-data"}
WRITE_PHASES = [("open", 1), ("write", 1), ("write", 3), ("write", 5), ("written", 1), ("fsynced", 1)]
PHASES = WRITE_PHASES + [("sidecar-temp", 1), ("sidecar", 1), ("renamed", 1), ("dir-synced", 1),
                         ("latest-temp", 1), ("latest", 1)]
# Overwriting a committed file: the new hash waits in a pending sidecar until the data has its name.
OVERWRITE_PHASES = WRITE_PHASES + [("pending-temp", 1), ("pending", 1), ("renamed", 1), ("dir-synced", 1),
                                   ("sidecar-replaced", 1), ("sidecar-synced", 1), ("latest-temp", 1), ("latest", 1)]
FIXED_NAME = "last.pth"
# (scenario, phase, occurrence). "empty": first save into an empty dir. "three": a fourth save
# that also triggers retention (keep-last 3) of the oldest file. "overwrite": the save of step 4
# into last.pth, which holds step 3 and is the run's only checkpoint (SAVE_LAST_ONLY-style name).
KILL_POINTS = ([("empty", p, n) for p, n in PHASES] + [("three", p, n) for p, n in PHASES + [("deleted-data", 1)]]
               + [("overwrite", p, n) for p, n in OVERWRITE_PHASES])
STEPS_BEFORE = {"empty": 0, "three": 3, "overwrite": 3}


def _child(directory: str, conn, filename: str | None) -> None:  # runs in the forked writer process
    def pause(phase: str, nbytes: int) -> None:
        conn.send((phase, nbytes))
        conn.recv()

    set_test_phase_hook(pause)
    run_writer(directory, 1, filename)
    conn.send(("done", 0))


def _kill_during_save(directory: Path, phase: str, occurrence: int, filename: str | None = None) -> int:
    """Run one save in a child process and SIGKILL it at ``phase`` (its ``occurrence``-th time).

    Returns the bytes written so far when killed.
    """
    parent_end, child_end = FORK.Pipe()
    proc = FORK.Process(target=_child, args=(str(directory), child_end, filename))
    proc.start()
    seen: Counter[str] = Counter()
    try:
        while True:
            assert parent_end.poll(60), "writer child stopped reporting phases"
            got, nbytes = parent_end.recv()
            assert got != "done", f"save finished without reaching phase {phase!r} #{occurrence}"
            seen[got] += 1
            if got == phase and seen[got] == occurrence:
                os.kill(proc.pid, signal.SIGKILL)
                proc.join(30)
                assert proc.exitcode == -signal.SIGKILL
                return nbytes
            parent_end.send(None)
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(30)


def _assert_no_partial_under_final_name(directory: Path) -> None:
    for name in os.listdir(directory):
        if is_checkpoint_name(name):
            assert sidecar_path(directory / name).exists(), f"{name} visible under its final name without a sidecar"
            assert verify_checkpoint(directory / name).ok, f"{name} visible under its final name but invalid"
        else:
            assert (name in ("latest", LOCK_NAME) or name.endswith(".sha256") or is_temp_name(name)
                    or is_pending_sidecar_name(name)), f"unexpected file {name}"


@pytest.fixture(scope="module")
def three_saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("base")
    assert run_writer(base, 3) == 3
    return base


@pytest.fixture(scope="module")
def last_saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.pth at step 3, already overwritten twice, and nothing else."""
    base = tmp_path_factory.mktemp("last")
    assert run_writer(base, 3, FIXED_NAME) == 3
    assert sorted(os.listdir(base)) == sorted([LOCK_NAME, FIXED_NAME, FIXED_NAME + ".sha256", "latest"])
    return base


def test_kill_minus_9_at_every_step_of_a_save(tmp_path: Path, three_saved: Path, last_saved: Path) -> None:
    covered = []
    for i, (scenario, phase, occurrence) in enumerate(KILL_POINTS):
        directory = tmp_path / f"k{i}"
        source = {"three": three_saved, "overwrite": last_saved}.get(scenario)
        if source is not None:
            shutil.copytree(source, directory)
        else:
            directory.mkdir()
        filename = FIXED_NAME if scenario == "overwrite" else None
        nbytes = _kill_during_save(directory, phase, occurrence, filename)
        covered.append(f"{scenario}:{phase}#{occurrence}@{nbytes}B")
        _assert_no_partial_under_final_name(directory)

        manager = CheckpointManager(directory, make_policy(), name="writer")  # cleans leftovers
        leftovers = [n for n in os.listdir(directory)
                     if is_temp_name(n) or is_pending_sidecar_name(n)
                     or (n.endswith(".sha256") and not (directory / n[:-7]).exists())]
        assert leftovers == [], f"after kill at {scenario}:{phase}: leftovers not cleaned: {leftovers}"
        # After cleanup every checkpoint's own sidecar holds its hash (sha256sum -c works again).
        for name in filter(is_checkpoint_name, os.listdir(directory)):
            assert read_sidecar(directory / name) == sha256_file(directory / name), f"{scenario}:{phase}: {name}"
        expected = STEPS_BEFORE[scenario] + (1 if phase in COMMITTED else 0)
        found = manager.load_resumable()
        if expected == 0:
            assert found is None, f"kill at {phase}: resumed from {found and found[0]} though nothing was committed"
        else:
            assert found is not None, f"kill at {scenario}:{phase}: no resumable checkpoint"
            assert check_consistent(found[1]) == expected, f"kill at {scenario}:{phase}: resumed the wrong checkpoint"
            assert manager.find_resumable() == found[0]
        # The directory stays usable: a relaunch continues from where the last commit left off.
        assert run_writer(directory, 1, filename) == expected + 1
    distinct = len(set(covered))
    print(f"\nkill -9 points covered: {distinct}: {', '.join(covered)}")
    assert distinct == len(KILL_POINTS) == 39


def test_kill_fresh_interpreter_via_phase_delay(tmp_path: Path) -> None:
    """The standalone script in a fresh interpreter, paused by its --phase-delay hook and killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/helpers/ckpt_writer.py"), "--phase-delay", "0.05",
                             str(tmp_path), "3"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    latest_seen = 0
    try:
        for line in proc.stderr:
            if line.startswith("linnaeus-test-phase latest "):
                latest_seen += 1
            elif latest_seen == 2 and line.startswith("linnaeus-test-phase fsynced"):
                os.kill(proc.pid, signal.SIGKILL)  # third save: data fsynced, not yet committed
                break
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert any(is_temp_name(n) for n in os.listdir(tmp_path)), "the kill should have left the temp file behind"
    _assert_no_partial_under_final_name(tmp_path)
    found = CheckpointManager(tmp_path, make_policy(), name="writer").load_resumable()
    assert found is not None and check_consistent(found[1]) == 2
    assert not any(is_temp_name(n) for n in os.listdir(tmp_path))


# ----------------------------------------------------------------------------- corrupt files
def _saved_steps(directory: Path, n: int) -> list[Path]:
    run_writer(directory, n)
    return sorted(directory.glob("ckpt_step_*.pth"), key=lambda p: int(p.stem.split("_")[-1]))


def test_truncated_newest_is_skipped_for_the_older_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = _saved_steps(tmp_path, 3)
    newest = paths[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    result = verify_checkpoint(newest)
    assert not result.ok and "does not match" in result.reason
    with pytest.raises(CheckpointCorruptError) as err:
        load_verified(newest)
    assert str(newest) in str(err.value) and err.value.expected_sha256 and err.value.actual_sha256
    with caplog.at_level(logging.WARNING, logger="linnaeus.checkpoint"):
        found = CheckpointManager(tmp_path, make_policy(), name="writer").load_resumable()
    assert found is not None and check_consistent(found[1]) == 2
    assert any(newest.name in r.getMessage() for r in caplog.records), "the skipped file must be named in a warning"


def test_bit_flip_is_detected_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = _saved_steps(tmp_path, 3)
    newest = paths[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside tensor data: loads fine, only the hash can tell
    newest.write_bytes(bytes(data))
    assert torch.load(newest, weights_only=True)["progress"]["step"] == 3
    with pytest.raises(CheckpointCorruptError, match="does not match"):
        load_verified(newest)
    with caplog.at_level(logging.WARNING, logger="linnaeus.checkpoint"):
        manager = CheckpointManager(tmp_path, make_policy(), name="writer")
        assert manager.find_resumable() == paths[-2]
    assert any(newest.name in r.getMessage() and "expected sha256" in r.getMessage() for r in caplog.records)


def test_latest_pointing_to_missing_file_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``latest`` names the newest checkpoint, which is then lost (deleted by hand, a partial
    restore): resume must not trust the pointer but fall back to the newest file that exists,
    say why, and a relaunch must leave ``latest`` naming a real file again."""
    paths = _saved_steps(tmp_path, 3)
    newest = paths[-1]
    assert read_latest(tmp_path) == newest.name  # the pointer names the file about to go ...
    newest.unlink()
    sidecar_path(newest).unlink()
    assert read_latest(tmp_path) == newest.name  # ... and now dangles
    with caplog.at_level(logging.WARNING, logger="linnaeus.checkpoint"):
        manager = CheckpointManager(tmp_path, make_policy(), name="writer")
        assert manager.find_resumable() == paths[-2]
        found = manager.load_resumable()
    assert found is not None and found[0] == paths[-2] and check_consistent(found[1]) == 2
    assert any("latest" in r.getMessage() and newest.name in r.getMessage() and "does not exist" in r.getMessage()
               for r in caplog.records), "the dangling latest must be named in a warning"
    assert run_writer(tmp_path, 1) == 3  # the relaunch continues from step 2 ...
    assert read_latest(tmp_path) == newest.name and verify_checkpoint(newest).ok  # ... and latest is real again


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"model": {"w": torch.zeros(2)}, "meta": {"format_version": 1}, "progress": {"step": 10**6},
                "payload": _Evil(marker)}, path)
    import hashlib

    sidecar_path(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")


def test_malicious_pickle_is_refused_without_executing(tmp_path: Path) -> None:
    # Positive control: the payload really runs when loaded unsafely.
    control_marker = tmp_path / "control_marker"
    _malicious_checkpoint(tmp_path / "control.bin", control_marker)
    torch.load(tmp_path / "control.bin", weights_only=False)
    assert control_marker.exists()

    ckpt_dir = tmp_path / "ckpts"
    good = _saved_steps(ckpt_dir, 1)[0]
    marker = tmp_path / "marker"
    evil = ckpt_dir / "ckpt_step_999.pth"  # newest by name, matching sidecar
    _malicious_checkpoint(evil, marker)

    result = verify_checkpoint(evil)
    assert not result.ok and "weights_only" in result.reason
    with pytest.raises(CheckpointCorruptError, match="weights_only"):
        CheckpointManager(ckpt_dir, make_policy(), name="writer").load(evil)
    found = CheckpointManager(ckpt_dir, make_policy(), name="writer").load_resumable()
    assert found is not None and found[0] == good
    proc = subprocess.run([sys.executable, "-m", "linnaeus.cli.ckpt", "verify", str(evil)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "BAD" in proc.stdout
    assert not marker.exists(), "the malicious pickle was executed"


def test_overwriting_another_savers_file_is_refused(tmp_path: Path) -> None:
    run_writer(tmp_path, 1)
    other = CheckpointManager(tmp_path, make_policy(), name="someone-else")
    with pytest.raises(Exception, match="belongs to saver 'writer'"):
        with other.begin(epoch=0, step=1, end_of_epoch=False) as ckpt:
            ckpt["model"] = expected_model(1)
    assert check_consistent(load_verified(tmp_path / "ckpt_step_1.pth")) == 1


# ----------------------------------------------------------------------------- newer format
def _commit_newer_format(directory: Path, step: int, *, version: int = 2, drop_progress: bool = False) -> Path:
    """Commit step ``step`` as a newer linnaeus would: intact, sidecar and all, but meta.format_version > 1."""
    state = torch.load(next(directory.glob("ckpt_step_*.pth")), weights_only=True)
    state["model"] = expected_model(step)
    state["progress"] = {**state["progress"], "step": step}
    state["meta"] = {**state["meta"], "step": step, "format_version": version, "file": f"ckpt_step_{step}.pth"}
    if drop_progress:  # a newer layout might keep progress elsewhere: the file cannot be ordered
        del state["progress"]
        del state["meta"]["step"]
    return commit_file(directory, f"ckpt_step_{step}.pth", state, update_latest=True).path


def test_newer_format_version_is_incompatible_not_corrupt(tmp_path: Path) -> None:
    _saved_steps(tmp_path, 2)
    newer = _commit_newer_format(tmp_path, 3)
    with pytest.raises(CheckpointIncompatibleError) as err:
        load_verified(newer)
    text = str(err.value)
    assert str(newer) in text and "format_version 2" in text and "format_version <= 1" in text
    assert "upgrade linnaeus" in text and "Delete or replace" not in text
    assert err.value.path == newer
    result = verify_checkpoint(newer)
    assert not result.ok and result.incompatible and "upgrade linnaeus" in result.reason
    proc = subprocess.run([sys.executable, "-m", "linnaeus.cli.ckpt", "verify", str(newer)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "upgrade linnaeus" in proc.stdout


@pytest.mark.parametrize("drop_progress", [False, True], ids=["ordered", "progress-unreadable"])
def test_auto_resume_stops_at_a_newer_format_instead_of_falling_back(tmp_path: Path, drop_progress: bool) -> None:
    """A newer linnaeus wrote the run's newest state: resuming from step 2 would silently lose step 3."""
    _saved_steps(tmp_path, 2)
    newer = _commit_newer_format(tmp_path, 3, drop_progress=drop_progress)
    manager = CheckpointManager(tmp_path, make_policy(), name="writer")
    for find in (manager.find_resumable, manager.load_resumable):
        with pytest.raises(CheckpointIncompatibleError) as err:
            find()
        assert str(newer) in str(err.value) and "upgrade linnaeus" in str(err.value)
        assert "format_version 2" in str(err.value)
    # This linnaeus cannot judge the file, so its retention never deletes it.
    assert newer.name not in [i.name for i in manager.checkpoints()]
    assert newer.exists()


def test_damaged_file_of_a_newer_format_is_still_skipped_as_corrupt(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    _saved_steps(tmp_path, 2)
    newer = _commit_newer_format(tmp_path, 3)
    data = newer.read_bytes()
    newer.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointCorruptError):
        load_verified(newer)
    with caplog.at_level(logging.WARNING, logger="linnaeus.checkpoint"):
        found = CheckpointManager(tmp_path, make_policy(), name="writer").load_resumable()
    assert found is not None and check_consistent(found[1]) == 2
    assert any(newer.name in r.getMessage() and "Skipping" in r.getMessage() for r in caplog.records)
