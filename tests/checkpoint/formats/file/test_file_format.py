"""The on-disk protocol: commit, sidecars, listing order, verification, retention planning, cleanup, RNG state."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from linnaeus.checkpoint import (
    CheckpointCorruptError,
    CheckpointInfo,
    CheckpointManager,
    CheckpointNotFoundError,
    InvalidOperationError,
    collect_rng_state,
    list_checkpoints,
    load_verified,
    read_latest,
    restore_rng_state,
    unwrap_model,
    verify_checkpoint,
)
from linnaeus.checkpoint.disk import FileTailHasher, HashingWriter, is_temp_name, read_sidecar, sha256_file, sidecar_path, temp_name
from linnaeus.checkpoint.formats import commit_file, is_checkpoint_name, is_pending_sidecar_name, write_latest
from linnaeus.checkpoint.formats.file.names import pending_sidecar_name
from linnaeus.checkpoint.state import make_meta
from linnaeus.checkpoint.store import cleanup_stale, plan_retention
from linnaeus.checkpoint.testing import set_test_phase_hook
from tests.conftest import REPO


def _full_state(step: int, epoch: int = 0, **metrics: float) -> dict:
    return {
        "model": {"w": torch.full((1000,), float(step))},
        "progress": {"epoch": epoch, "step": step, "epoch_step": 0, "samples": 0},
        "meta": make_meta(kind="full", saver="checkpoint", file=f"s{step}.pth", run_id="r", epoch=epoch, step=step,
                          metrics=metrics),
    }


def test_commit_writes_data_sidecar_and_latest(tmp_path: Path) -> None:
    result = commit_file(tmp_path, "ckpt_1.pth", _full_state(1), update_latest=True)
    assert sorted(os.listdir(tmp_path)) == ["ckpt_1.pth", "ckpt_1.pth.sha256", "latest"]
    data = (tmp_path / "ckpt_1.pth").read_bytes()
    assert result.sha256 == hashlib.sha256(data).hexdigest() and result.size == len(data)
    assert (tmp_path / "latest").read_text() == "ckpt_1.pth\n"
    # sha256sum's line, then the progress the file holds (a comment line, for bucket listings).
    assert (tmp_path / "ckpt_1.pth.sha256").read_text() == (
        f"{result.sha256}  ckpt_1.pth\n# linnaeus-progress v1 step=1 epoch=0 epoch_step=0\n")
    # The sidecar is what coreutils expects.
    check = subprocess.run(["sha256sum", "-c", "--strict", "ckpt_1.pth.sha256"], cwd=tmp_path, capture_output=True,
                           text=True)
    assert check.returncode == 0 and "ckpt_1.pth: OK" in check.stdout
    commit_file(tmp_path, "weights_1.pth", {"model": {}}, update_latest=False)
    assert read_latest(tmp_path) == "ckpt_1.pth"


def test_hashing_writer_matches_file_for_small_and_large_writes(tmp_path: Path) -> None:
    with open(tmp_path / "f", "wb") as raw:
        writer = HashingWriter(raw, FileTailHasher(tmp_path / "f"))
        for chunk in (b"abc", os.urandom(3 << 20), b"", os.urandom(100)):
            writer.write(chunk)
            writer.write(memoryview(chunk))
        digest = writer.digest()
    assert digest.sha256 == hashlib.sha256((tmp_path / "f").read_bytes()).hexdigest()


def test_failed_serialisation_leaves_nothing_behind(tmp_path: Path) -> None:
    commit_file(tmp_path, "ckpt_1.pth", _full_state(1), update_latest=True)

    def broken(obj, f) -> None:
        f.write(b"x" * (2 << 20))
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        commit_file(tmp_path, "ckpt_2.pth", _full_state(2), update_latest=True, serialize=broken)
    assert sorted(os.listdir(tmp_path)) == ["ckpt_1.pth", "ckpt_1.pth.sha256", "latest"]
    assert read_latest(tmp_path) == "ckpt_1.pth"


@pytest.mark.parametrize("name", ["checkpoint_epoch_3.pth", "latest", "w.safetensors", "a.b.c", "x"])
def test_temp_names_never_look_like_checkpoints(name: str) -> None:
    tmp = temp_name(name)
    assert is_temp_name(tmp) and not is_checkpoint_name(tmp) and tmp.startswith(".")
    assert not tmp.endswith((".pth", ".sha256", ".safetensors"))


def test_listing_orders_by_stored_progress_not_mtime(tmp_path: Path) -> None:
    for step in (30, 10, 20):
        commit_file(tmp_path, f"s{step}.pth", _full_state(step), update_latest=False)
    os.utime(tmp_path / "s10.pth", (2e9, 2e9))  # oldest checkpoint, newest mtime
    assert [i.step for i in list_checkpoints(tmp_path)] == [10, 20, 30]
    assert CheckpointManager(tmp_path).find_resumable() == tmp_path / "s30.pth"
    # A checkpoint whose sidecar was never written is not committed, so never resumed from.
    commit_file(tmp_path, "s40.pth", _full_state(40), update_latest=False)
    sidecar_path(tmp_path / "s40.pth").unlink()
    assert CheckpointManager(tmp_path).find_resumable() == tmp_path / "s30.pth"


def test_verify_reports_each_kind_of_problem(tmp_path: Path) -> None:
    path = commit_file(tmp_path, "a.pth", _full_state(1), update_latest=False).path
    assert verify_checkpoint(path).ok
    assert verify_checkpoint(tmp_path / "nope.pth").reason == "file does not exist"

    sidecar = sidecar_path(path)
    good_sidecar = sidecar.read_text()
    sidecar.write_text(good_sidecar.replace("a.pth", "b.pth"))
    assert "is for file 'b.pth'" in verify_checkpoint(path).reason
    sidecar.write_text("not a hash\n")
    assert "sha256sum format" in verify_checkpoint(path).reason
    sidecar.unlink()
    assert "no .sha256 sidecar" in verify_checkpoint(path).reason
    assert verify_checkpoint(path, require_sidecar=False).ok
    with pytest.raises(CheckpointCorruptError, match="never committed"):
        load_verified(path)
    assert load_verified(path, require_sidecar=False)["progress"]["step"] == 1
    with pytest.raises(CheckpointNotFoundError) as missing:
        load_verified(tmp_path / "nope.pth")
    # Names the file, what was expected and what to do.
    assert str(tmp_path / "nope.pth") in str(missing.value) and "does not exist" in str(missing.value)
    assert "Expected a checkpoint file" in str(missing.value) and f"linnaeus-ckpt ls {tmp_path}" in str(missing.value)
    with pytest.raises(CheckpointNotFoundError, match="is a directory"):
        load_verified(tmp_path)

    # Structure: a dict of tensors that is no linnaeus checkpoint.
    other = commit_file(tmp_path, "c.pth", {"meta": {"format_version": 99}}, update_latest=False).path
    result = verify_checkpoint(other)
    assert not result.ok and "no 'model' state dict" in result.reason and "format_version 99" in result.reason


def test_load_error_names_file_and_hashes(tmp_path: Path) -> None:
    path = commit_file(tmp_path, "a.pth", _full_state(1), update_latest=False).path
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(CheckpointCorruptError) as err:
        load_verified(path)
    e = err.value
    assert e.path == path and e.expected_sha256 == read_sidecar(path) and e.actual_sha256 != e.expected_sha256
    assert str(path) in str(e) and e.expected_sha256 in str(e) and e.actual_sha256 in str(e)


def _info(name: str, step: int, acc: float | None = None) -> CheckpointInfo:
    return CheckpointInfo(path=Path(name), size=1, committed=True, kind="full", step=step, epoch=step,
                          metrics={} if acc is None else {"acc": acc})


def test_plan_retention() -> None:
    infos = [_info("a", 1, 0.9), _info("b", 2, 0.1), _info("c", 3, math.nan), _info("d", 4, 0.5), _info("e", 5)]
    names = lambda doomed: sorted(i.name for i in doomed)  # noqa: E731
    assert names(plan_retention(infos, keep_last_n=0)) == []
    assert names(plan_retention(infos, keep_last_n=2)) == ["a", "b", "c"]
    assert names(plan_retention(infos, keep_last_n=1, keep_best_n=2, monitor="acc", mode="max")) == ["b", "c"]
    assert names(plan_retention(infos, keep_last_n=1, keep_best_n=1, monitor="acc", mode="min")) == ["a", "c", "d"]
    assert names(plan_retention(infos, keep_last_n=1, protect={"a"})) == ["b", "c", "d"]
    # The newest is kept whatever keep_last_n says, and order comes from progress, not list order.
    assert names(plan_retention(list(reversed(infos)), keep_last_n=1)) == ["a", "b", "c", "d"]


def test_cleanup_under_the_writer_lock_removes_every_other_processs_leftovers(tmp_path: Path) -> None:
    """Holding the lock, no other writer is alive: the pid in a name decides nothing (pids are reused;
    a live process that does not hold the lock is no writer here). Only this process's own files stay."""
    commit_file(tmp_path, "a.pth", _full_state(1), update_latest=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        leftovers = [
            f".b.pth.tmp-{_dead_pid()}-abcd1234",  # a dead writer's, named before writer tokens
            f".c.pth.tmp-{os.getpid()}-{'0' * 12}-abcd1234",  # this pid, another process: pid reuse
            f".d.pth.tmp-{live.pid}-{'1' * 12}-abcd1234",  # a live pid that does not hold the lock
            "gone.pth.sha256",  # a sidecar without its data
        ]
        own = temp_name("e.pth")  # this process's save in progress
        for name in leftovers + [own]:
            (tmp_path / name).write_bytes(b"partial")
        assert cleanup_stale(tmp_path, min_age_s=3600) == []  # spared: younger than asked for
        assert sorted(p.name for p in cleanup_stale(tmp_path)) == sorted(leftovers)
        assert (tmp_path / own).exists()
        assert verify_checkpoint(tmp_path / "a.pth").ok
    finally:
        live.kill()
        live.wait()


def test_without_the_lock_a_writer_is_dead_if_its_pid_is_or_is_ours_under_another_token() -> None:
    """The rule for a filesystem that cannot lock: a live pid other than ours may be a writer."""
    from linnaeus.checkpoint.disk import writer_id
    from linnaeus.checkpoint.store.retention import _dead_writer

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not _dead_writer(f"{live.pid}-{'1' * 12}", exclusive=False)
        assert not _dead_writer(str(live.pid), exclusive=False)
        assert _dead_writer(f"{live.pid}-{'1' * 12}", exclusive=True)
    finally:
        live.kill()
        live.wait()
    assert _dead_writer(str(_dead_pid()), exclusive=False)
    assert _dead_writer(f"{os.getpid()}-{'0' * 12}", exclusive=False)  # pid 1 again, in a container
    assert not _dead_writer(writer_id(), exclusive=False) and not _dead_writer(writer_id(), exclusive=True)


def test_bad_latest_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_latest(tmp_path, "ok.pth")
    assert read_latest(tmp_path) == "ok.pth"
    (tmp_path / "latest").write_text("../../etc/passwd\n")
    with caplog.at_level(logging.WARNING, logger="linnaeus.checkpoint"):
        assert read_latest(tmp_path) is None
    assert "expected a checkpoint file name" in caplog.text


def test_rng_state_roundtrip_is_weights_only_safe(tmp_path: Path) -> None:
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's legacy state
    state = collect_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    expected = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    restore_rng_state(loaded)
    assert (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()) == expected


def test_unwrap_model_sees_through_data_parallel() -> None:
    # torch.compile's wrapper (``_orig_mod``) takes the same path; importing dynamo costs ~10 s, so not here.
    model = nn.Linear(2, 2)
    assert unwrap_model(nn.DataParallel(model)) is model
    assert unwrap_model(nn.DataParallel(nn.DataParallel(model))) is model


# ----------------------------------------------------------------------------- overwrite
def _snapshots_at_each_phase(tmp_path: Path, save) -> dict[str, Path]:
    """Run ``save()`` and copy the checkpoint dir at every phase: what a kill there would leave."""
    import shutil

    directory, snaps = tmp_path / "d", {}

    def hook(phase: str, nbytes: int) -> None:
        if phase != "write":
            snaps[phase] = shutil.copytree(directory, tmp_path / f"snap-{len(snaps)}-{phase}")

    set_test_phase_hook(hook)
    try:
        save(directory)
    finally:
        set_test_phase_hook(None)
    return snaps


def test_overwriting_a_committed_file_is_old_or_new_at_every_instant(tmp_path: Path) -> None:
    commit_file(tmp_path / "d", "last.pth", _full_state(1), update_latest=True)
    snaps = _snapshots_at_each_phase(
        tmp_path, lambda d: commit_file(d, "last.pth", _full_state(2), update_latest=True))
    assert list(snaps) == ["open", "written", "fsynced", "pending-temp", "pending", "renamed", "dir-synced",
                           "sidecar-replaced", "sidecar-synced", "latest-temp", "latest"]
    for phase, snap in snaps.items():
        new = phase in {"renamed", "dir-synced", "sidecar-replaced", "sidecar-synced", "latest-temp", "latest"}
        assert verify_checkpoint(snap / "last.pth").ok, phase
        assert load_verified(snap / "last.pth")["progress"]["step"] == (2 if new else 1), phase
        # As if the writer had been killed here: its temp and pending files now belong to a dead pid.
        # Cleanup then finishes the pending sidecar (data is new) or drops it (data is old).
        dead = str(_dead_pid())
        for name in os.listdir(snap):
            os.rename(snap / name, snap / name.replace(f"-{os.getpid()}", f"-{dead}"))
        cleanup_stale(snap)
        assert not any(is_pending_sidecar_name(n) or is_temp_name(n) for n in os.listdir(snap)), phase
        assert read_sidecar(snap / "last.pth") == sha256_file(snap / "last.pth"), phase
    final = tmp_path / "d"
    assert sorted(os.listdir(final)) == ["last.pth", "last.pth.sha256", "latest"]
    assert load_verified(final / "last.pth")["progress"]["step"] == 2


def test_a_new_name_is_committed_sidecar_first_without_pending(tmp_path: Path) -> None:
    snaps = _snapshots_at_each_phase(tmp_path, lambda d: commit_file(d, "a.pth", _full_state(1), update_latest=False))
    assert list(snaps) == ["open", "written", "fsynced", "sidecar-temp", "sidecar", "renamed", "dir-synced"]


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_cleanup_leaves_a_live_writers_pending_sidecar_alone(tmp_path: Path) -> None:
    """A live writer holds the directory's lock: cleanup refuses and touches nothing; once it is
    dead, its pending sidecar is settled (dropped here: the data is still the old file)."""
    from linnaeus.checkpoint import DirectoryLockedError

    path = commit_file(tmp_path, "last.pth", _full_state(1), update_latest=False).path
    old_sidecar = sidecar_path(path).read_text()
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from linnaeus.checkpoint import CheckpointManager\n"
            "m = CheckpointManager(%r); print('holding', flush=True); time.sleep(60)\n") % (
        str(REPO), str(tmp_path))
    live = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "holding"
        pending = tmp_path / f".last.pth.sha256.pending-{live.pid}-{'2' * 12}"
        pending.write_text("0" * 64 + "  last.pth\n")
        assert is_pending_sidecar_name(pending.name) and not is_checkpoint_name(pending.name)
        assert pending_sidecar_name("last.pth").startswith(f".last.pth.sha256.pending-{os.getpid()}-")
        assert is_pending_sidecar_name(pending_sidecar_name("last.pth"))
        with pytest.raises(DirectoryLockedError, match=f"pid {live.pid} "):
            cleanup_stale(tmp_path)
        assert pending.exists()
        assert verify_checkpoint(path).ok and sidecar_path(path).read_text() == old_sidecar
    finally:
        live.kill()
        live.wait()
    assert cleanup_stale(tmp_path) == [pending] and not pending.exists()
    assert sidecar_path(path).read_text() == old_sidecar


def test_pending_sidecar_does_not_hide_damage(tmp_path: Path) -> None:
    path = commit_file(tmp_path, "last.pth", _full_state(1), update_latest=False).path
    (tmp_path / f".last.pth.sha256.pending-{_dead_pid()}").write_text("1" * 64 + "  last.pth\n")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert "does not match" in verify_checkpoint(path).reason
    with pytest.raises(CheckpointCorruptError, match="does not match"):
        load_verified(path)


def test_meta_extra_cannot_replace_core_meta_keys() -> None:
    meta = make_meta(kind="full", saver="s", file="f.pth", run_id="r", epoch=0, step=1, extra={"note": "x"})
    assert meta["note"] == "x" and meta["format_version"] == 1
    with pytest.raises(InvalidOperationError, match=r"f\.pth sets \['format_version', 'kind'\]"):
        make_meta(kind="full", saver="s", file="f.pth", run_id="r", epoch=0, step=1,
                  extra={"format_version": 2, "kind": "weights"})
