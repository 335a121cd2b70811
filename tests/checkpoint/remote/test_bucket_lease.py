"""One writer per bucket folder: a second live run with the run's EXPERIMENT.NAME (another run dir,
another node) stops before it reads or writes the folder; a dead run's lease is taken over, logged;
and no upload replaces a committed checkpoint of another identity. Real runs and real ``rclone serve
s3`` on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from linnaeus.checkpoint import CheckpointManager
from linnaeus.checkpoint.errors import BucketConflictError
from linnaeus.checkpoint.remote import LEASE, BackgroundUploader, BucketLease, RemoteRun, UploadError
from tests.conftest import REPO, run_train, tiny_args
from tests.fixtures_rclone import BUCKET, REMOTE, RcloneServer, rclone_isolated, s3_server, settle  # noqa: F401

SHORT = ("TRAIN.MAX_STEPS_PER_EPOCH", "2", "ENV.OUTPUT.BUCKET_LEASE_TTL_S", "6")
OUT_BUCKET = ("ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE,
              "ENV.OUTPUT.BUCKET.NAME", BUCKET, "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/")
FOLDER = f"{REMOTE}:{BUCKET}/runs/tiny/"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_second_live_run_on_the_bucket_folder_stops_and_a_dead_ones_lease_is_taken_over(
        tmp_path: Path, toy_root: Path, s3_server: RcloneServer) -> None:
    remote = s3_server.root / BUCKET / "runs" / "tiny"
    first, second = tmp_path / "node-a", tmp_path / "node-b"
    run_train(first, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "1")
    settle()
    assert not (remote / LEASE).exists()  # a finished run gives its lease back
    epoch_1 = _sha(remote / "checkpoint_epoch_1.pth")

    # The first run is live again (say, relaunched on node A); a requeue starts it on node B too.
    holder = subprocess.Popen([sys.executable, str(REPO / "tests" / "helpers" / "bucket_holder.py"),
                               *tiny_args(first, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "2")],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        proc = run_train(second, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "2", check=False)
        assert proc.returncode != 0
        assert f"is in use by launch" in proc.stderr and f"(pid {holder.pid}, run dir {first / 'tiny'})" in \
            proc.stderr, proc.stderr[-3000:]
        assert "Resumed from" not in proc.stdout + proc.stderr and "Saved checkpoint" not in proc.stdout + proc.stderr
        settle()
        assert _sha(remote / "checkpoint_epoch_1.pth") == epoch_1 and not (remote / "checkpoint_epoch_2.pth").exists()
    finally:
        holder.kill()  # kill -9: its lease stays, its heartbeat stops
        holder.wait()

    # Its process is gone (same host): the relaunch takes the lease over at once, and says so.
    proc = run_train(second, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "2")
    out = proc.stdout + proc.stderr
    assert f"Taking over the writer lease of the bucket folder {FOLDER} from launch" in out, out[-3000:]
    assert f"pid {holder.pid}, run dir {first / 'tiny'}): it ran on this host and its process is gone" in out
    assert f"Resumed from {second / 'tiny' / 'checkpoints' / 'checkpoint_epoch_1.pth'}" in out


def _foreign_lease(folder: RemoteRun, heartbeat: float, ttl_s: float = 6) -> None:
    from linnaeus.checkpoint.sources import rcat

    record = {"launch": "0" * 32, "run_id": "tiny", "host": "another-node", "pid": 4242, "run_dir": "/elsewhere",
              "ttl_s": ttl_s, "heartbeat": heartbeat}
    rcat(json.dumps(record).encode(), folder.folder + LEASE, env=folder.env)


def test_a_lease_from_another_host_is_taken_over_only_once_its_heartbeat_stopped(
        s3_server: RcloneServer, caplog: pytest.LogCaptureFixture) -> None:
    folder = RemoteRun(FOLDER)
    caplog.set_level(logging.WARNING, "linnaeus.checkpoint")

    _foreign_lease(folder, time.time() - 1000)  # long dead
    BucketLease(folder, ttl_s=6).acquire().release()
    assert "another-node, pid 4242, run dir /elsewhere): its last heartbeat was 1000 s ago" in caplog.text

    _foreign_lease(folder, time.time())  # fresh, but nobody beats: taken over after its time-to-live
    start = time.monotonic()
    BucketLease(folder, ttl_s=6).acquire().release()
    assert time.monotonic() - start >= 5

    stop = threading.Event()  # a live holder on another host: refused as soon as its heartbeat moves

    def beat() -> None:
        while not stop.wait(0.5):
            _foreign_lease(folder, time.time())

    _foreign_lease(folder, time.time())
    beating = threading.Thread(target=beat)
    beating.start()
    try:
        with pytest.raises(BucketConflictError, match="is in use by launch 0+ of run tiny on host another-node"):
            BucketLease(folder, ttl_s=6).acquire()
    finally:
        stop.set()
        beating.join()


def test_a_launch_that_lost_its_lease_uploads_nothing_more(tmp_path: Path, s3_server: RcloneServer) -> None:
    folder = RemoteRun(FOLDER)
    lease = BucketLease(folder, ttl_s=60).acquire()
    _foreign_lease(folder, time.time())  # another launch wrote its lease in the same moment
    with CheckpointManager(tmp_path / "ck") as manager:
        path = manager.save(epoch=1, step=1, model=nn.Linear(3, 2))
    uploader = BackgroundUploader(folder, lease=lease, retries=3, backoff_s=0.01)
    uploader.on_commit(path)
    with pytest.raises(UploadError, match="lost the writer lease"):
        uploader.close(timeout=60)
    assert folder.list() == []
    lease.release()
    assert folder.read(LEASE) is not None  # the other launch's lease is not ours to remove


@pytest.mark.parametrize("fmt", ["file", "sharded"])
def test_an_upload_never_replaces_a_committed_checkpoint_of_another_identity(tmp_path: Path, s3_server: RcloneServer,
                                                                              fmt: str) -> None:
    folder = RemoteRun(FOLDER)
    paths = []
    for seed in (1, 2):  # two runs' epoch 1 under one name
        torch.manual_seed(seed)
        with CheckpointManager(tmp_path / f"run{seed}", format=fmt) as manager:
            paths.append(manager.save(epoch=1, step=1, model=nn.Linear(3, 2)))
    assert folder.upload(paths[0]) is True
    with pytest.raises(BucketConflictError, match="refusing to upload .* another identity"):
        folder.upload(paths[1])
    fetched = folder.fetch(paths[0].name, tmp_path / "fetched")  # still the first run's, whole
    from linnaeus.checkpoint.formats import format_of

    assert format_of(fetched).identity(fetched) == format_of(paths[0]).identity(paths[0])
