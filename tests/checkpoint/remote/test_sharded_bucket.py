"""Sharded checkpoint directories in a run's bucket folder (issue 11 item 7): uploaded file by file with
the manifest last (the remote commit marker), listed as committed only with their manifest, downloaded
into a temp directory verified against the manifest and renamed into place; a 2-rank fsdp run resumed
at 1 rank on a fresh machine. Real ``rclone serve s3`` on 127.0.0.1, real torchrun processes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from linnaeus.checkpoint import CheckpointCorruptError, CheckpointManager, RemoteRun
from linnaeus.checkpoint.formats import MANIFEST, read_manifest
from linnaeus.checkpoint.formats import consolidate as consolidate_model
from linnaeus.checkpoint.formats.sharded.manifest import verify_all
from linnaeus.checkpoint.remote import BackgroundUploader, UploadError
from linnaeus.checkpoint.sources import DownloadOptions, temp_path_for
from tests.conftest import run_train
from tests.fixtures_rclone import (  # noqa: F401  (fixtures)
    BUCKET,
    REMOTE,
    RcloneServer,
    bucket_cfg,
    rclone_isolated,
    s3_server,
    settle,
)

OUT_BUCKET = ("ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE,
              "ENV.OUTPUT.BUCKET.NAME", BUCKET, "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/")
ONE_TRY = DownloadOptions(retries=1, progress=False)


def _save_two(directory: Path) -> list[Path]:
    """Two sharded checkpoints of a small model, written by this one process."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    manager = CheckpointManager(directory, sharded=True)
    paths = []
    for epoch in (1, 2):
        model(torch.randn(4, 8)).sum().backward()
        optimizer.step()
        paths.append(manager.save(epoch=epoch, step=epoch * 10, model=model, optimizer=optimizer))
    manager.close()
    return paths


def test_sharded_directory_uploads_manifest_last_and_only_a_manifest_commits_it(
        tmp_path: Path, s3_server: RcloneServer) -> None:
    local = _save_two(tmp_path / "ck")
    remote = RemoteRun.in_bucket(bucket_cfg("runs/"), "r")
    with BackgroundUploader(remote, retries=1) as uploader:
        for p in local:
            uploader.on_commit(p)
        assert uploader.wait(60)
        assert all(uploader.can_delete(p) for p in local)
    folder = s3_server.root / BUCKET / "runs" / "r"
    for p in local:  # every file of the directory, byte for byte
        manifest, _ = read_manifest(folder / p.name)
        verify_all(folder / p.name, manifest)
    assert (folder / "latest").read_text().strip() == "checkpoint_epoch_2"
    for p in local:  # the manifest, the remote commit marker, arrived after every other file (the server
        # keeps the uploaded mtimes; ctime is when it wrote the file)
        files = list((folder / p.name).iterdir())
        last = max(files, key=lambda q: q.stat().st_ctime_ns)
        assert last.name == MANIFEST, [(q.name, q.stat().st_ctime_ns) for q in files]
    assert remote.list() == ["checkpoint_epoch_2", "checkpoint_epoch_1"]
    assert remote.upload(local[1]) is False  # already there: nothing sent

    # A folder without its manifest (an upload cut short before its commit marker) is never committed:
    # not listed, not fetched; the relaunch takes the older committed one.
    (folder / "checkpoint_epoch_2" / MANIFEST).unlink()
    settle()
    assert remote.list() == ["checkpoint_epoch_1"]
    fresh = tmp_path / "fresh"
    got = remote.fetch_newest(fresh, ONE_TRY)
    assert got == fresh / "checkpoint_epoch_1" and not (fresh / "checkpoint_epoch_2").exists()
    verify_all(got, read_manifest(got)[0])
    assert sorted(q.name for q in got.iterdir()) == sorted(q.name for q in local[0].iterdir())
    assert [q.name for q in fresh.iterdir() if q.name.startswith(".") and q.is_dir()] == []  # no temp dir left


def test_fetch_removes_the_temp_directory_a_killed_download_left(tmp_path: Path, s3_server: RcloneServer) -> None:
    local = _save_two(tmp_path / "ck")
    remote = RemoteRun.in_bucket(bucket_cfg("runs/"), "r")
    assert remote.upload(local[0]) is True
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a real process, gone: the killed downloader's pid
    dead.wait()
    left = temp_path_for(fresh / "checkpoint_epoch_1")
    left = left.with_name(re.sub(r"\.\d+\.([0-9a-f]{8})\.partial$", rf".{dead.pid}.\1.partial", left.name))
    left.mkdir()
    (left / "__0_0.distcp").write_bytes(b"half")
    assert remote.fetch_newest(fresh, ONE_TRY) == fresh / "checkpoint_epoch_1"
    assert not left.exists()


def test_a_local_directory_that_no_longer_matches_its_manifest_is_not_uploaded_nor_deletable(
        tmp_path: Path, s3_server: RcloneServer) -> None:
    local = _save_two(tmp_path / "ck")
    shard = next(q for q in local[1].iterdir() if q.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[0] ^= 0xFF
    shard.write_bytes(bytes(data))
    uploader = BackgroundUploader(RemoteRun.in_bucket(bucket_cfg("runs/"), "r"), retries=1)
    uploader.on_commit(local[1])
    assert uploader.wait(60)
    assert not uploader.can_delete(local[1])
    with pytest.raises(UploadError, match=shard.name):
        uploader.close()
    assert not (s3_server.root / BUCKET / "runs" / "r" / local[1].name / MANIFEST).exists()


def test_fetch_of_a_damaged_remote_shard_names_it_and_leaves_no_directory(
        tmp_path: Path, s3_server: RcloneServer) -> None:
    local = _save_two(tmp_path / "ck")
    remote = RemoteRun.in_bucket(bucket_cfg("runs/"), "r")
    for p in local:
        assert remote.upload(p) is True
    folder = s3_server.root / BUCKET / "runs" / "r"
    shard = next(q for q in (folder / "checkpoint_epoch_2").iterdir() if q.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    settle()
    with pytest.raises(CheckpointCorruptError, match=shard.name):
        remote.fetch("checkpoint_epoch_2", tmp_path / "fresh", ONE_TRY)
    assert not (tmp_path / "fresh" / "checkpoint_epoch_2").exists()
    assert [q.name for q in (tmp_path / "fresh").iterdir() if q.is_dir()] == []
    # fetch_newest skips it (logged) and takes the previous committed directory.
    assert remote.fetch_newest(tmp_path / "fresh", ONE_TRY) == tmp_path / "fresh" / "checkpoint_epoch_1"

    # A restart from step 10 sets the newer folder aside (manifest first), nothing deleted.
    assert remote.entries_after(10) == ["checkpoint_epoch_2"]
    aside = remote.move_aside(["checkpoint_epoch_2"], "abandoned")
    assert aside.endswith("/abandoned/") and remote.list() == ["checkpoint_epoch_1"]
    assert (folder / "abandoned" / "checkpoint_epoch_2" / MANIFEST).is_file() and shard.name in \
        [q.name for q in (folder / "abandoned" / "checkpoint_epoch_2").iterdir()]


def test_two_rank_fsdp_run_uploads_and_a_one_rank_relaunch_on_a_fresh_machine_resumes_from_the_bucket(
        tmp_path: Path, toy_root: Path, s3_server: RcloneServer) -> None:
    opts = (*OUT_BUCKET, "TRAIN.STRATEGY", "fsdp", "TRAIN.MAX_STEPS_PER_EPOCH", "2")
    run_train(tmp_path, toy_root, *opts, "TRAIN.EPOCHS", "1", nproc=2)
    folder = s3_server.root / BUCKET / "runs" / "tiny"
    uploaded = folder / "checkpoint_epoch_1"
    manifest, _ = read_manifest(uploaded)
    verify_all(uploaded, manifest)
    assert manifest["meta"]["world_size"] == 2 and (folder / "latest").read_text().strip() == "checkpoint_epoch_1"
    shutil.rmtree(tmp_path / "tiny")  # a fresh machine: only the bucket holds the run

    proc = run_train(tmp_path, toy_root, *opts, "TRAIN.EPOCHS", "2")
    log = proc.stdout + proc.stderr
    ckpts = tmp_path / "tiny" / "checkpoints"
    assert f"Resumed from {ckpts / 'checkpoint_epoch_1'} (epoch 1, step 2)" in log, log[-4000:]
    assert "each verified against its manifest" in log, log[-4000:]  # fetched as a directory, not found locally
    fetched, _ = consolidate_model(ckpts / "checkpoint_epoch_1")
    remote_model, _ = consolidate_model(uploaded)
    assert fetched.keys() == remote_model.keys() and all(torch.equal(fetched[k], remote_model[k]) for k in fetched)
    state = torch.load(ckpts / "checkpoint_epoch_2" / "state.pt", weights_only=True)
    assert state["progress"]["step"] == 4 and state["meta"]["world_size"] == 1
    settle()
    assert json.loads((folder / "checkpoint_epoch_2" / MANIFEST).read_text())["progress"]["step"] == 4
    assert (folder / "latest").read_text().strip() == "checkpoint_epoch_2"
