"""Each checkpoint failure names its real cause and the right next step: a failed ``latest``
after the commit, a full disk during torch.save, a foreign state dict given to resume from, a
file this process may not read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

from linnaeus.checkpoint import CheckpointError, CheckpointManager, CheckpointPolicy, verify_checkpoint
from tests.conftest import REPO, run_train

HELPER = REPO / "tests" / "helpers" / "honest_errors.py"
# We run as root, which reads any file: the helpers run without the capabilities that let it.
DROP = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search")


def _helper(*args: str, prefix: tuple[str, ...] = ()) -> str:
    proc = subprocess.run([*prefix, sys.executable, str(HELPER), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_failed_latest_after_the_commit_says_the_data_is_committed(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    (tmp_path / "latest").mkdir()  # a real failure of the pointer's rename: a directory is in the way
    with pytest.raises(CheckpointError) as info:
        manager.save(epoch=1, step=10, model=torch.nn.Linear(4, 4))
    msg = str(info.value)
    assert "nothing was committed" not in msg
    assert "checkpoint_epoch_1.pth was committed" in msg and "'latest'" in msg and "IsADirectoryError" in msg
    assert verify_checkpoint(tmp_path / "checkpoint_epoch_1.pth").ok


def test_disk_full_during_torch_save_reports_the_oserror(tmp_path: Path) -> None:
    out = _helper("fsize", str(tmp_path))
    assert "unexpected pos" not in out, out
    assert "nothing was committed" in out and "File too large" in out and "cause: OSError" in out, out
    left = [p.name for p in tmp_path.iterdir() if p.name != ".lock"]  # .lock: the directory's writer lock
    assert not left, f"the failed save left files behind: {left}"


def test_disk_full_during_a_sharded_save_reports_the_oserror(tmp_path: Path) -> None:
    sync, background = _helper("fsize-sharded", str(tmp_path)).splitlines()[:2]
    for line in (sync, background):
        assert "unexpected pos" not in line, line
        assert line.startswith("CheckpointError: save of") and "nothing was committed" in line, line
        assert "File too large" in line, line
    for run in ("False", "True"):  # nothing of the failed saves is left: no directory, no temp directory
        assert sorted(p.name for p in (tmp_path / run).iterdir()) == [".lock"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, tiny filesystem (tmpfs, 256 KiB) that a checkpoint cannot fit on."""
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.parametrize("background", [False, True], ids=["sync", "async"])
def test_a_full_disk_during_a_sharded_save_says_no_space_left(small_disk: Path, background: bool) -> None:
    manager = CheckpointManager(small_disk / "ck", CheckpointPolicy(async_save=background), format="sharded")
    with pytest.raises(CheckpointError) as info:
        manager.save(epoch=1, step=1, model=torch.nn.Linear(512, 512))
        manager.wait()
    manager.close_after_error()
    assert "No space left on device" in str(info.value) and "unexpected pos" not in str(info.value), info.value
    assert sorted(p.name for p in (small_disk / "ck").iterdir()) == [".lock"]


def test_foreign_state_dict_as_train_resume_points_to_pretrained(tmp_path: Path, toy_root: Path) -> None:
    foreign = tmp_path / "some_weights.pth"
    torch.save(torch.nn.Linear(4, 4).state_dict(), foreign)
    proc = run_train(tmp_path, toy_root, "TRAIN.RESUME", str(foreign), "TRAIN.EPOCHS", "1", check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode != 0
    assert "corrupt" not in err and "Delete" not in err, err[-3000:]
    assert "is not a linnaeus training checkpoint" in err and f"MODEL.PRETRAINED {foreign}" in err, err[-3000:]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop CAP_DAC_OVERRIDE")
def test_permission_error_is_reported_as_such_not_as_corruption(tmp_path: Path) -> None:
    # We run as root, which reads any file: the helper runs without the capabilities that let it.
    own = CheckpointManager(tmp_path / "run")
    own.save(epoch=1, step=10, model=torch.nn.Linear(4, 4))
    newest = own.save(epoch=2, step=20, model=torch.nn.Linear(4, 4))
    own.close()  # releases the directory's writer lock for the helper
    torch.save(own.load(newest), tmp_path / "elsewhere.pth")  # an explicit target without a sidecar
    for path in (newest, tmp_path / "elsewhere.pth"):
        path.chmod(0)
    drop = ("setpriv", "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search")
    out = _helper("unreadable", str(tmp_path), prefix=drop)
    explicit, auto = out.splitlines()
    for line, path in ((explicit, tmp_path / "elsewhere.pth"), (auto, newest)):
        assert line.startswith("CheckpointUnreadableError: cannot read checkpoint"), out
        assert f"{path}: PermissionError" in line and "corrupt" not in line and "Delete" not in line, out


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop CAP_DAC_OVERRIDE")
def test_verify_cli_reports_an_unreadable_file_as_unreadable(tmp_path: Path) -> None:
    own = CheckpointManager(tmp_path / "run")
    path = own.save(epoch=1, step=10, model=torch.nn.Linear(4, 4))
    own.close()
    path.chmod(0)
    cli = Path(sys.executable).parent / "linnaeus-ckpt"
    proc = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                           "--inh-caps=-dac_override,-dac_read_search", str(cli), "verify", str(path.parent)],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "cannot read" in out and "PermissionError" in out and "Traceback" not in out, out
    assert "corrupt" not in out.lower() and "not damage (do not delete it)" in out, out


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop CAP_DAC_OVERRIDE")
def test_an_unreadable_shard_is_reported_as_unreadable_not_as_damage(tmp_path: Path) -> None:
    own = CheckpointManager(tmp_path / "run", format="sharded")
    own.save(epoch=1, step=10, model=torch.nn.Linear(4, 4))
    newest = own.save(epoch=2, step=20, model=torch.nn.Linear(4, 4))
    own.close()
    shard = next(newest.glob("*.distcp"))
    shard.chmod(0)
    out = _helper("unreadable-shard", str(tmp_path), prefix=DROP)
    resume, verify = out.splitlines()[:2]  # then "no error": verify reports, it does not raise
    # Resume stops at it (falling back past it would lose its progress) and says why, as for a file.
    assert resume.startswith("CheckpointUnreadableError: cannot read checkpoint"), out
    assert f"{shard}: PermissionError" in resume and "corrupt" not in resume.lower(), out
    assert "unreadable=True" in verify and "not damage (do not delete it)" in verify, out
    cli = Path(sys.executable).parent / "linnaeus-ckpt"
    proc = subprocess.run([*DROP, str(cli), "verify", str(newest.parent)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert f"BAD  {newest}: cannot read it" in proc.stdout and "not damage (do not delete it)" in proc.stdout, proc.stdout
    # Its manifest unreadable instead: still no silent fall back to the older checkpoint.
    shard.chmod(0o644)
    (newest / "manifest.json").chmod(0)
    resume = _helper("unreadable-shard", str(tmp_path), prefix=DROP).splitlines()[0]
    assert resume.startswith("CheckpointUnreadableError: cannot read checkpoint"), resume
    assert "manifest.json: PermissionError" in resume, resume
