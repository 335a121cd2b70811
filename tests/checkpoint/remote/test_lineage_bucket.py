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


def test_a_restart_sets_the_newer_timeline_aside_here_and_in_the_bucket_and_relaunches_continue_it(
        tmp_path: Path, toy_root: Path, s3_server: RcloneServer, capsys) -> None:
    """One run's whole story, in one test so that its three-epoch start is trained once:
    a restart refused at the config diff moves nothing and keeps config.yaml; a restart from an older
    checkpoint sets the abandoned timeline aside, locally and in the bucket (moved, never deleted);
    the same restart command relaunched as-is (e.g. after a preemption) continues the timeline it
    started, on the same machine and on a fresh one, and sets nothing aside again; so does the plain
    command on a fresh machine; `set-aside --after` is the explicit request to restart again, also on
    that fresh machine, which holds only the checkpoint its relaunch downloaded."""
    from linnaeus.cli.ckpt import main as ckpt

    remote, run = s3_server.root / BUCKET / "runs" / "tiny", tmp_path / "tiny"
    ckpts = run / "checkpoints"
    restart = (*SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "3", "TRAIN.RESUME", "checkpoint_epoch_1.pth",
               "TRAIN.AUTO_RESUME", "False")
    run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "3")
    settle()

    # 1. Every refusal comes before any move.
    local_before, remote_before = _top_level(ckpts), _top_level(remote)
    config_before = (run / "config.yaml").read_bytes()
    proc = run_train(tmp_path, toy_root, *restart, "MODEL.HYBRID.VIT_HEADS", "4", check=False)
    assert proc.returncode != 0 and "MODEL.HYBRID.VIT_HEADS: 2 (checkpoint) -> 4: refused" in proc.stderr, proc.stderr
    settle()
    assert not [p for p in ckpts.iterdir() if p.is_dir()]
    assert not [p for p in remote.iterdir() if p.is_dir()]
    lock = {".lock"}  # its holder record names the last launch
    assert {k: v for k, v in _top_level(ckpts).items() if k not in lock} == \
        {k: v for k, v in local_before.items() if k not in lock}
    assert _top_level(remote) == remote_before
    assert (run / "config.yaml").read_bytes() == config_before

    # 2. The restart: epochs 2 and 3 of a new timeline; the old ones are set aside, here and in the bucket.
    old = {e: remote_before[f"checkpoint_epoch_{e}.pth"] for e in (2, 3)}
    run_train(tmp_path, toy_root, *restart)
    settle()
    [abandoned] = [p for p in remote.iterdir() if p.is_dir()]
    assert abandoned.name.startswith("abandoned-"), abandoned
    for e, sha in old.items():  # moved, never deleted, each with its sidecar
        assert _sha(abandoned / f"checkpoint_epoch_{e}.pth") == sha
        assert (abandoned / f"checkpoint_epoch_{e}.pth.sha256").read_text().split()[0] == sha
    [abandoned_here] = [p.name for p in ckpts.iterdir() if p.is_dir()]
    new = {e: _sha(ckpts / f"checkpoint_epoch_{e}.pth") for e in (2, 3)}
    assert all(new[e] != old[e] for e in (2, 3))
    assert {e: _sha(remote / f"checkpoint_epoch_{e}.pth") for e in (2, 3)} == new

    # 3. The restart command relaunched as-is continues its timeline.
    proc = run_train(tmp_path, toy_root, *restart)
    out = proc.stdout + proc.stderr
    assert "a relaunch of the same restart" in out and f"set-aside {run} --after checkpoint_epoch_1.pth" in out, out
    assert f"Resumed from {ckpts / 'checkpoint_epoch_3.pth'} (epoch 3, step 6)" in out
    assert [p.name for p in ckpts.iterdir() if p.is_dir()] == [abandoned_here]
    assert {e: _sha(ckpts / f"checkpoint_epoch_{e}.pth") for e in (2, 3)} == new

    # 4. On a fresh machine the timeline comes from the bucket, with the restart command and with the plain one.
    for command in (restart, (*SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "3")):
        shutil.rmtree(run)
        proc = run_train(tmp_path, toy_root, *command)
        assert f"Resumed from {ckpts / 'checkpoint_epoch_3.pth'} (epoch 3, step 6)" in proc.stdout + proc.stderr
        settle()
        assert [p.name for p in remote.iterdir() if p.is_dir()] == [abandoned.name]
        assert {e: _sha(remote / f"checkpoint_epoch_{e}.pth") for e in (2, 3)} == new

    # 5. The explicit request to restart again: set the timeline past epoch 1 aside, here and in the bucket.
    assert ckpt(["set-aside", str(run), "--after", "checkpoint_epoch_1.pth"]) == 0
    out = capsys.readouterr().out
    assert "downloaded checkpoint_epoch_1.pth from the run's bucket folder" in out, out
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
