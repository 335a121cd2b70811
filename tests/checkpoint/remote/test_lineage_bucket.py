"""Lineage across machines: a deliberate restart from an older checkpoint sets the abandoned
timeline aside in the run's bucket folder too, so a relaunch on a fresh machine continues the new
timeline; a fresh start is refused while the bucket folder holds the run's checkpoints. Real runs,
a real ``rclone serve s3`` on 127.0.0.1."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from tests.conftest import run_train
from tests.fixtures_rclone import BUCKET, REMOTE, RcloneServer, rclone_isolated, s3_server, settle  # noqa: F401

SHORT = ("TRAIN.MAX_STEPS_PER_EPOCH", "2")
OUT_BUCKET = ("ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE,
              "ENV.OUTPUT.BUCKET.NAME", BUCKET, "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_restart_sets_the_abandoned_timeline_aside_in_the_bucket_too(tmp_path: Path, toy_root: Path,
                                                                       s3_server: RcloneServer) -> None:
    remote = s3_server.root / BUCKET / "runs" / "tiny"
    run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "3")
    old = {e: _sha(remote / f"checkpoint_epoch_{e}.pth") for e in (2, 3)}

    # Restart from epoch 1 on purpose, train a new epoch 2.
    run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "2",
              "TRAIN.RESUME", "checkpoint_epoch_1.pth", "TRAIN.AUTO_RESUME", "False")
    settle()
    abandoned = [p for p in remote.iterdir() if p.is_dir() and p.name.startswith("abandoned-")]
    assert len(abandoned) == 1, sorted(p.name for p in remote.iterdir())
    for e, sha in old.items():  # moved, never deleted, each with its sidecar
        assert _sha(abandoned[0] / f"checkpoint_epoch_{e}.pth") == sha
        assert (abandoned[0] / f"checkpoint_epoch_{e}.pth.sha256").read_text().split()[0] == sha
    assert not (remote / "checkpoint_epoch_3.pth").exists()
    new_epoch_2 = _sha(remote / "checkpoint_epoch_2.pth")
    assert new_epoch_2 != old[2]

    # A relaunch on a fresh machine continues the new timeline, not the abandoned one.
    shutil.rmtree(tmp_path / "tiny")
    proc = run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "3")
    ckpts = tmp_path / "tiny" / "checkpoints"
    assert f"Resumed from {ckpts / 'checkpoint_epoch_2.pth'} (epoch 2, step 4)" in proc.stdout + proc.stderr
    assert _sha(remote / "checkpoint_epoch_3.pth") != old[3]  # trained again, from the new epoch 2


def test_fresh_start_refuses_while_the_bucket_folder_holds_the_runs_checkpoints(
        tmp_path: Path, toy_root: Path, s3_server: RcloneServer) -> None:
    run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "1")
    shutil.rmtree(tmp_path / "tiny")  # another machine, same run name
    proc = run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "1", "TRAIN.AUTO_RESUME", "False",
                     check=False)
    assert proc.returncode != 0
    assert f"bucket folder {REMOTE}:{BUCKET}/runs/tiny/" in proc.stderr and "checkpoint_epoch_1.pth" in proc.stderr
    assert "TRAIN.AUTO_RESUME True" in proc.stderr and "EXPERIMENT.NAME" in proc.stderr
    assert "Saved checkpoint" not in proc.stdout + proc.stderr
