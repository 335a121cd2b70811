"""Lineage (issue 10, items 3 and 5): a deliberate restart from an older checkpoint never mixes two
timelines in one run dir, a fresh start never overwrites a run's checkpoints, and checkpoints
without sidecars are never judged (resumed past, overwritten or deleted) until adopted. Real
training processes on real files, as a user would run them."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import REPO, run_train

SHORT = ("TRAIN.MAX_STEPS_PER_EPOCH", "2")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _meta(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["meta"]


def _ckpt_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linnaeus.cli.ckpt", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def _top_level(ckpts: Path) -> list[str]:
    return sorted(p.name for p in ckpts.iterdir() if p.is_file() and p.suffix == ".pth")


def test_restart_from_an_older_checkpoint_sets_the_abandoned_timeline_aside(tmp_path: Path, toy_root: Path) -> None:
    run, ckpts = tmp_path / "tiny", tmp_path / "tiny" / "checkpoints"
    run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "3", "CHECKPOINT.KEEP_LAST_N", "3")
    old = {e: _sha(ckpts / f"checkpoint_epoch_{e}.pth") for e in (1, 2, 3)}
    run_id = _meta(ckpts / "checkpoint_epoch_1.pth")["run_id"]

    # What the docs say to do to restart from an older file: a new timeline branches off epoch 1.
    proc = run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "2", "CHECKPOINT.KEEP_LAST_N", "2",
                     "TRAIN.RESUME", "checkpoint_epoch_1.pth", "TRAIN.AUTO_RESUME", "False")
    assert f"Resumed from {ckpts / 'checkpoint_epoch_1.pth'} (epoch 1, step 2)" in proc.stdout
    # The abandoned timeline's newer files are moved aside (data + sidecar), never deleted or overwritten.
    aside = [d for d in ckpts.iterdir() if d.is_dir()]
    assert len(aside) == 1 and aside[0].name.startswith("abandoned-") and \
        aside[0].name.endswith("-from-checkpoint_epoch_1"), aside
    assert sorted(p.name for p in aside[0].iterdir()) == [
        "checkpoint_epoch_2.pth", "checkpoint_epoch_2.pth.sha256", "checkpoint_epoch_3.pth",
        "checkpoint_epoch_3.pth.sha256"]
    for e in (2, 3):
        assert _sha(aside[0] / f"checkpoint_epoch_{e}.pth") == old[e]
        check = subprocess.run(["sha256sum", "-c", "--strict", f"checkpoint_epoch_{e}.pth.sha256"], cwd=aside[0],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    assert str(aside[0]) in proc.stdout  # the log says where they went
    # The top level holds the current lineage only: the branch point and the new timeline's epoch 2.
    assert _top_level(ckpts) == ["checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth"]
    new2 = ckpts / "checkpoint_epoch_2.pth"
    assert _sha(new2) != old[2]
    assert (ckpts / "latest").read_text().strip() == "checkpoint_epoch_2.pth"
    meta = _meta(new2)
    assert meta["run_id"] == run_id and meta["parent_sha256"] == old[1]
    assert _meta(ckpts / "checkpoint_epoch_1.pth")["parent_sha256"] == ""  # a fresh start has no parent

    # ls shows each file's lineage: run id and parent (by name where the parent is in the dir).
    ls = _ckpt_cli("ls", str(run), "--no-verify")
    assert ls.returncode == 0, ls.stderr
    header = ls.stdout.splitlines()[1].split()
    assert header[header.index("run")+1] == "parent"
    rows = {line.split()[0]: line.split() for line in ls.stdout.splitlines() if line.startswith("checkpoint_")}
    col = header.index("run") + 1  # the size column is two words ("619.4 KB")
    assert rows["checkpoint_epoch_2.pth"][col:col + 2] == [run_id, "checkpoint_epoch_1.pth"]
    assert rows["checkpoint_epoch_1.pth"][col:col + 2] == [run_id, "(fresh)"]

    # The default relaunch continues the NEW timeline, and retention works within it.
    proc = run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "3", "CHECKPOINT.KEEP_LAST_N", "2")
    assert f"Resumed from {new2} (epoch 2, step 4)" in proc.stdout
    assert _top_level(ckpts) == ["checkpoint_epoch_2.pth", "checkpoint_epoch_3.pth"]
    assert _meta(ckpts / "checkpoint_epoch_3.pth")["parent_sha256"] == _sha(new2)
    assert _sha(aside[0] / "checkpoint_epoch_3.pth") == old[3]  # still there, untouched


def test_fresh_start_in_a_run_dir_with_checkpoints_refuses(tmp_path: Path, toy_root: Path) -> None:
    run, ckpts = tmp_path / "tiny", tmp_path / "tiny" / "checkpoints"
    run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "1")
    before = _sha(ckpts / "checkpoint_epoch_1.pth")

    proc = run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "1", "TRAIN.AUTO_RESUME", "False", check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert "CheckpointIncompatibleError" in err and "checkpoint_epoch_1.pth" in err
    for way in ("TRAIN.AUTO_RESUME True", "TRAIN.RESUME checkpoint_epoch_1.pth", f"linnaeus-ckpt set-aside {run}"):
        assert way in err, err
    assert "Saved checkpoint" not in proc.stdout and _sha(ckpts / "checkpoint_epoch_1.pth") == before

    # The named command moves them aside (nothing deleted); then the fresh start goes ahead.
    out = _ckpt_cli("set-aside", str(run))
    assert out.returncode == 0, out.stderr
    aside = [d for d in ckpts.iterdir() if d.is_dir()]
    assert len(aside) == 1 and aside[0].name.startswith("set-aside-") and str(aside[0]) in out.stdout
    assert _sha(aside[0] / "checkpoint_epoch_1.pth") == before and (aside[0] / "checkpoint_epoch_1.pth.sha256").is_file()
    proc = run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "1", "TRAIN.AUTO_RESUME", "False")
    assert "No checkpoint to resume from: starting fresh" in proc.stdout
    assert _top_level(ckpts) == ["checkpoint_epoch_1.pth"]


def test_checkpoints_without_sidecars_stop_the_run_until_adopted(tmp_path: Path, toy_root: Path) -> None:
    run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "1", name="src")
    run, ckpts = tmp_path / "tiny", tmp_path / "tiny" / "checkpoints"
    ckpts.mkdir(parents=True)
    copied = ckpts / "checkpoint_epoch_1.pth"  # rsync'd without its sidecar
    shutil.copy(tmp_path / "src" / "checkpoints" / "checkpoint_epoch_1.pth", copied)
    before = _sha(copied)

    proc = run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "2", check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert "UnadoptedCheckpointsError" in err and str(copied) in err and "no .sha256 sidecar" in err
    assert f"linnaeus-ckpt adopt {ckpts}" in err, err
    assert "Saved checkpoint" not in proc.stdout and _sha(copied) == before
    assert not (ckpts / "checkpoint_epoch_1.pth.sha256").exists()

    # adopt refuses what is not a whole linnaeus checkpoint, with the reason, and adopts the rest.
    foreign = ckpts / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    out = _ckpt_cli("adopt", str(run))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"ADOPTED  {copied}" in out.stdout
    assert f"REFUSED  {foreign}: not a linnaeus checkpoint: no 'model' state dict; no 'meta' dict" in out.stdout
    assert not (ckpts / "resnet.pth.sha256").exists()
    check = subprocess.run(["sha256sum", "-c", "--strict", "checkpoint_epoch_1.pth.sha256"], cwd=ckpts,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert (ckpts / "checkpoint_epoch_1.pth.sha256").read_text() == \
        (tmp_path / "src" / "checkpoints" / "checkpoint_epoch_1.pth.sha256").read_text()
    foreign.unlink()

    proc = run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "2")
    assert f"Resumed from {copied} (epoch 1, step 2)" in proc.stdout
    assert _top_level(ckpts) == ["checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth"]
