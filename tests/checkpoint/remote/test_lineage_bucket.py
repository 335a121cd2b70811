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


def _top_level(folder: Path) -> dict[str, str]:
    return {p.name: _sha(p) for p in folder.iterdir() if p.is_file()}


def test_a_refused_restart_moves_nothing_and_keeps_config_yaml(tmp_path: Path, toy_root: Path,
                                                                s3_server: RcloneServer) -> None:
    """Every refusal comes before any move: a restart refused at the config diff leaves the newer
    timeline where it was, here and in the bucket, and does not rewrite config.yaml."""
    remote, run = s3_server.root / BUCKET / "runs" / "tiny", tmp_path / "tiny"
    run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "3")
    settle()
    local_before, remote_before = _top_level(run / "checkpoints"), _top_level(remote)
    config_before = (run / "config.yaml").read_bytes()
    proc = run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "3", "MODEL.HYBRID.VIT_HEADS", "4",
                     "TRAIN.RESUME", "checkpoint_epoch_1.pth", "TRAIN.AUTO_RESUME", "False", check=False)
    assert proc.returncode != 0 and "MODEL.HYBRID.VIT_HEADS: 2 (checkpoint) -> 4: refused" in proc.stderr, proc.stderr
    settle()
    assert not [p for p in (run / "checkpoints").iterdir() if p.is_dir()]
    assert not [p for p in remote.iterdir() if p.is_dir()]
    lock = {".lock"}  # its holder record names the last launch
    assert {k: v for k, v in _top_level(run / "checkpoints").items() if k not in lock} == \
        {k: v for k, v in local_before.items() if k not in lock}
    assert _top_level(remote) == remote_before
    assert (run / "config.yaml").read_bytes() == config_before


def test_a_restart_command_relaunched_as_is_continues_its_timeline(tmp_path: Path, toy_root: Path,
                                                                    s3_server: RcloneServer) -> None:
    """A preemptible restart job relaunched with the same command continues the timeline it started,
    on the same machine and on a fresh one; it sets nothing aside again."""
    remote, ckpts = s3_server.root / BUCKET / "runs" / "tiny", tmp_path / "tiny" / "checkpoints"
    restart = (*SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "3", "TRAIN.RESUME", "checkpoint_epoch_1.pth",
               "TRAIN.AUTO_RESUME", "False")
    run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "3")
    run_train(tmp_path, toy_root, *restart)  # the restart: epochs 2 and 3 of a new timeline
    settle()
    new = {e: _sha(ckpts / f"checkpoint_epoch_{e}.pth") for e in (2, 3)}
    [abandoned] = [p.name for p in ckpts.iterdir() if p.is_dir()]

    proc = run_train(tmp_path, toy_root, *restart)  # relaunched as-is (e.g. after a preemption)
    out = proc.stdout + proc.stderr
    assert "a relaunch of the same restart" in out and f"set-aside {tmp_path / 'tiny'} --after checkpoint_epoch_1.pth" in out, out
    assert f"Resumed from {ckpts / 'checkpoint_epoch_3.pth'} (epoch 3, step 6)" in out
    assert [p.name for p in ckpts.iterdir() if p.is_dir()] == [abandoned]
    assert {e: _sha(ckpts / f"checkpoint_epoch_{e}.pth") for e in (2, 3)} == new

    shutil.rmtree(tmp_path / "tiny")  # the same command on a fresh machine: the timeline is in the bucket
    proc = run_train(tmp_path, toy_root, *restart)
    assert f"Resumed from {ckpts / 'checkpoint_epoch_3.pth'} (epoch 3, step 6)" in proc.stdout + proc.stderr
    settle()
    assert len([p for p in remote.iterdir() if p.is_dir()]) == 1
    assert {e: _sha(remote / f"checkpoint_epoch_{e}.pth") for e in (2, 3)} == new

    # The explicit request to restart again: set the timeline past epoch 1 aside, here and in the bucket.
    from linnaeus.cli.ckpt import main as ckpt

    assert ckpt(["set-aside", str(tmp_path / "tiny"), "--after", "checkpoint_epoch_1.pth"]) == 0
    settle()
    assert not (ckpts / "checkpoint_epoch_2.pth").exists() and not (remote / "checkpoint_epoch_2.pth").exists()
    proc = run_train(tmp_path, toy_root, *restart)
    assert f"Resumed from {ckpts / 'checkpoint_epoch_1.pth'} (epoch 1, step 2)" in proc.stdout + proc.stderr


def test_set_aside_covers_the_runs_bucket_folder(tmp_path: Path, toy_root: Path, s3_server: RcloneServer,
                                                 capsys) -> None:
    """After `linnaeus-ckpt set-aside`, a relaunch starts fresh, also on a fresh machine: the bucket
    folder's checkpoints are set aside too (not deleted), and the command says so."""
    from linnaeus.cli.ckpt import main as ckpt

    remote, run = s3_server.root / BUCKET / "runs" / "tiny", tmp_path / "tiny"
    run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "2")
    settle()
    uploaded = {e: _sha(remote / f"checkpoint_epoch_{e}.pth") for e in (1, 2)}
    assert ckpt(["set-aside", str(run)]) == 0
    out = capsys.readouterr().out
    assert "of the run's bucket folder (checkpoint_epoch_2.pth, checkpoint_epoch_1.pth)" in out, out
    settle()
    [aside] = [p for p in remote.iterdir() if p.is_dir()]
    assert {e: _sha(aside / f"checkpoint_epoch_{e}.pth") for e in (1, 2)} == uploaded
    assert not list(remote.glob("*.sha256"))
    proc = run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "1")
    assert "No checkpoint to resume from: starting fresh" in proc.stdout + proc.stderr


def test_set_aside_refuses_when_it_cannot_tell_the_runs_bucket_folder(tmp_path: Path, toy_root: Path,
                                                                      capsys) -> None:
    from linnaeus.cli.ckpt import main as ckpt

    run = tmp_path / "tiny"
    run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "1")
    (run / "config.yaml").unlink()
    assert ckpt(["set-aside", str(run)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml is missing" in err and "--cfg" in err and "--local-only" in err, err
    assert (run / "checkpoints" / "checkpoint_epoch_1.pth").exists()
    assert ckpt(["set-aside", str(run), "--local-only"]) == 0
    assert not (run / "checkpoints" / "checkpoint_epoch_1.pth").exists()
