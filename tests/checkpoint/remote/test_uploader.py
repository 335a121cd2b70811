"""Background upload (data → .sha256 → latest, verified, retried, surfaced) and auto-resume
from the bucket, against a real ``rclone serve s3`` on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from linnaeus.checkpoint import RemoteRun, read_latest
from linnaeus.checkpoint.disk import format_sidecar
from linnaeus.checkpoint.ordering import progress_from_name
from linnaeus.checkpoint.remote import BackgroundUploader, UploadError
from linnaeus.checkpoint.sources import DownloadOptions
from tests.conftest import REPO, poll_until_raises
from tests.fixtures_rclone import (  # noqa: F401  (fixtures)
    BUCKET,
    RCLONE,
    REMOTE,
    RcloneServer,
    bucket_cfg,
    configure_remote,
    free_port,
    put,
    rclone_isolated,
    s3_server,
    settle,
)

OUT_BUCKET = {"ENABLED": True, "REMOTE": REMOTE, "NAME": BUCKET, "PATH_PREFIX": "runs/"}


def remote_run(exp: str) -> RemoteRun:
    return RemoteRun.in_bucket(OUT_BUCKET, exp)


def commit(directory: Path, name: str, data: bytes, latest: bool = True) -> Path:
    """What the store leaves after a commit: data, sidecar, latest."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)
    (directory / (name + ".sha256")).write_text(format_sidecar(hashlib.sha256(data).hexdigest(), name))
    if latest:
        (directory / "latest").write_text(name + "\n")
    return directory / name


def remote_dir(server: RcloneServer, exp: str) -> Path:
    return server.root / BUCKET / "runs" / exp


def test_uploads_data_sidecar_then_latest(tmp_path: Path, s3_server: RcloneServer) -> None:
    ckpts = tmp_path / "exp1" / "checkpoints"
    up = BackgroundUploader(remote_run("exp1"), retries=2, backoff_s=0.1)
    first = commit(ckpts, "checkpoint_epoch_1.pth", os.urandom(50_000))
    assert not up.can_delete(first)  # nothing is deletable before its upload is confirmed
    up.on_commit(first)
    second = commit(ckpts, "checkpoint_epoch_2.pth", os.urandom(60_000))
    up.on_commit(second)
    up.close(timeout=120)
    remote = remote_dir(s3_server, "exp1")
    for p in (first, second):
        assert (remote / p.name).read_bytes() == p.read_bytes()
        assert (remote / (p.name + ".sha256")).read_text() == (p.parent / (p.name + ".sha256")).read_text()
        assert up.is_confirmed(p) and up.can_delete(p)
    assert (remote / "latest").read_text().strip() == "checkpoint_epoch_2.pth"
    assert remote_run("exp1").newest() == f"{REMOTE}:{BUCKET}/runs/exp1/checkpoint_epoch_2.pth"
    with pytest.raises(Exception, match="closed"):
        up.on_commit(second)


def test_failed_upload_is_reported_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rclone_isolated: None) -> None:
    class Dead:  # a remote whose server is not running
        url = f"http://127.0.0.1:{free_port()}"

    configure_remote(monkeypatch, Dead)  # type: ignore[arg-type]
    p = commit(tmp_path / "ck", "checkpoint_epoch_1.pth", b"data")
    up = BackgroundUploader(remote_run("exp2"), retries=2, backoff_s=0.05)
    up.on_commit(p)
    assert up.wait(timeout=60)
    assert not up.is_confirmed(p) and not up.can_delete(p)
    with pytest.raises(UploadError, match="checkpoint_epoch_1.pth") as info:
        up.poll()
    assert "failed after 2 attempts" in str(info.value)
    up.poll()  # reported once, not again
    up.close()


def test_enqueue_existing_skips_what_is_already_remote(tmp_path: Path, s3_server: RcloneServer) -> None:
    ckpts = tmp_path / "ck"
    a = commit(ckpts, "checkpoint_epoch_1.pth", b"a" * 1000)
    b = commit(ckpts, "checkpoint_epoch_2.pth", b"b" * 1000)  # local latest now names b
    with BackgroundUploader(remote_run("exp3"), retries=2, backoff_s=0.1) as up:
        up.on_commit(a)
    # The marker may only name confirmed data: b is not uploaded yet, so there is no marker.
    assert not (remote_dir(s3_server, "exp3") / "latest").exists()
    with BackgroundUploader(remote_run("exp3"), retries=2, backoff_s=0.1) as up:  # a relaunch
        assert up.enqueue_existing(ckpts) == 2
    assert up.is_confirmed(a) and up.is_confirmed(b)
    assert (remote_dir(s3_server, "exp3") / "latest").read_text().strip() == b.name
    log = s3_server.log.read_text()
    assert log.count("CREATE OBJECT: bkt runs/exp3/checkpoint_epoch_1.pth\n") == 1  # a was not sent again
    assert log.count("CREATE OBJECT: bkt runs/exp3/checkpoint_epoch_2.pth\n") == 1


def test_sort_key_orders_epochs_and_steps_numerically() -> None:
    names = ["checkpoint_epoch_10.pth", "checkpoint_epoch_9.pth", "checkpoint_epoch_9_step_950.pth",
             "checkpoint_epoch_9_step_1000.pth", "checkpoint_epoch_2.pth", "custom.pth"]
    assert sorted(names, key=progress_from_name) == [
        "custom.pth", "checkpoint_epoch_2.pth", "checkpoint_epoch_9.pth", "checkpoint_epoch_9_step_950.pth",
        "checkpoint_epoch_9_step_1000.pth", "checkpoint_epoch_10.pth"]


def test_resume_from_bucket_falls_back_past_corrupt_latest(tmp_path: Path, s3_server: RcloneServer) -> None:
    run = remote_dir(s3_server, "exp4")
    datas = {e: os.urandom(20_000) for e in (8, 9, 10)}
    for e, d in datas.items():
        put(s3_server, f"runs/exp4/checkpoint_epoch_{e}.pth", d)
    put(s3_server, "runs/exp4/weights_epoch_11.pth", b"weights only: never a resume candidate")
    put(s3_server, "runs/exp4/checkpoint_epoch_11.pth", b"no sidecar: not committed remotely", sidecar=False)
    (run / "latest").write_text("checkpoint_epoch_10.pth\n")
    (run / "checkpoint_epoch_10.pth").write_bytes(b"bit rot")  # no longer matches its .sha256
    settle()

    assert remote_run("exp4").newest().endswith("/checkpoint_epoch_10.pth")
    local = tmp_path / "fresh" / "checkpoints"
    got = remote_run("exp4").fetch_newest(local, DownloadOptions(retries=1))
    assert got == local / "checkpoint_epoch_9.pth" and got.read_bytes() == datas[9]
    assert read_latest(local) == "checkpoint_epoch_9.pth"
    assert not (local / "checkpoint_epoch_10.pth").exists()

    (run / "latest").unlink()  # no marker: newest committed by name (10 > 9 numerically)
    (run / "checkpoint_epoch_10.pth").write_bytes(datas[10])
    settle()
    assert remote_run("exp4").fetch_newest(tmp_path / "other", DownloadOptions(retries=1)).name == "checkpoint_epoch_10.pth"
    assert remote_run("nothing-here").newest() is None
    assert remote_run("nothing-here").fetch_newest(tmp_path / "none") is None


def test_upload_script(tmp_path: Path, s3_server: RcloneServer, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture) -> None:
    from linnaeus.cli.remote_cmds import main

    script = REPO / "tools" / "scripts" / "upload_checkpoints.sh"
    r = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "LINNAEUS_BUCKET_REMOTE" in r.stdout
    ck = tmp_path / "weights.pth"
    ck.write_bytes(b"pretrained")
    for var, value in {"LINNAEUS_BUCKET_REMOTE": REMOTE, "LINNAEUS_BUCKET_NAME": BUCKET, "LINNAEUS_BUCKET_PREFIX": "pre/"}.items():
        monkeypatch.setenv(var, value)
    # Into a run's folder, a file without its sidecar is not a committed checkpoint: refused.
    # (A model-zoo upload, the default, computes the sidecar: tests/runner/test_bucket_workflows.py.)
    assert main(["upload", "--output", "--experiment", "run1", str(ck)]) == 1
    assert "sidecar" in capsys.readouterr().err
    r = subprocess.run([script, "--write-sidecar", str(ck)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    remote = s3_server.root / BUCKET / "pre"
    assert (remote / "weights.pth").read_bytes() == b"pretrained"
    assert (remote / "weights.pth.sha256").read_text().split()[0] == hashlib.sha256(b"pretrained").hexdigest()


# ----------------------------------------------------------------------------- the worker survives any error
@pytest.fixture
def rclone_with_bad_lsjson(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The real rclone, except that ``lsjson`` prints something that is not JSON (as a broken
    build, a proxy's error page or a truncated pipe would)."""
    from linnaeus.checkpoint.sources import rclone_binary

    wrapper = tmp_path / "rclone-bad-json"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = lsjson ] && {{ echo "<html>502 Bad Gateway"; exit 0; }}; done\n'
                       f'exec {RCLONE} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("LINNAEUS_RCLONE", str(wrapper))
    rclone_binary.cache_clear()
    yield
    rclone_binary.cache_clear()


def test_uploader_survives_bad_json_from_rclone(tmp_path: Path, s3_server: RcloneServer,
                                                 rclone_with_bad_lsjson: None) -> None:
    ckpts = tmp_path / "ck"
    first = commit(ckpts, "checkpoint_epoch_1.pth", b"a" * 1000)
    second = commit(ckpts, "checkpoint_epoch_2.pth", b"b" * 1000)
    up = BackgroundUploader(remote_run("badjson"), retries=2, backoff_s=0.01)
    up.on_commit(first)
    up.on_commit(second)  # queued behind the first: the worker must still be there for it
    error = poll_until_raises(up.poll, UploadError)
    assert "checkpoint_epoch_1.pth" in str(error) and "JSONDecodeError" in str(error)
    started = time.monotonic()
    with pytest.raises(UploadError, match="checkpoint_epoch_2.pth"):
        up.close(timeout=60)  # the second item failed too (same rclone), and was reported, not lost
    assert time.monotonic() - started < 60
    assert not up.can_delete(first) and not up.can_delete(second)


def test_uploader_survives_an_oserror_and_uploads_the_next(tmp_path: Path, s3_server: RcloneServer) -> None:
    ckpts = tmp_path / "ck"
    broken = commit(ckpts, "checkpoint_epoch_1.pth", b"a" * 1000)
    side = ckpts / "checkpoint_epoch_1.pth.sha256"
    side.unlink()
    side.mkdir()  # reading the sidecar raises IsADirectoryError, an OSError
    good = commit(ckpts, "checkpoint_epoch_2.pth", b"b" * 1000)
    up = BackgroundUploader(remote_run("oserror"), retries=1)
    up.on_commit(broken)
    up.on_commit(good)
    error = poll_until_raises(up.poll, UploadError)
    assert "checkpoint_epoch_1.pth" in str(error)
    assert up.wait(timeout=60)
    up.close(timeout=60)  # the failure was reported by poll(); the good file went up
    assert up.is_confirmed(good) and not up.can_delete(broken)
    assert (remote_dir(s3_server, "oserror") / good.name).read_bytes() == good.read_bytes()


def test_bucket_listing_orders_by_the_progress_stored_in_sidecars(tmp_path: Path, s3_server: RcloneServer) -> None:
    """Names that say nothing about progress (a fixed ``last.pth`` rewritten each epoch, a
    ``best.pth``): the remote order must come from what the files hold, as locally."""
    from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy
    from linnaeus.checkpoint.disk import sidecar_progress

    ckpts = tmp_path / "ck"
    model = torch.nn.Linear(2, 2)
    saves = (("zzz_early.pth", 1, 10), ("aaa_latest_work.pth", 3, 30), ("mmm_middle.pth", 2, 20))
    manager = CheckpointManager(ckpts, CheckpointPolicy())
    for name, epoch, step in saves:
        manager.save(epoch=epoch, step=step, model=model, filename=name)
        assert sidecar_progress((ckpts / (name + ".sha256")).read_text())["step"] == step
    with BackgroundUploader(remote_run("byprogress"), retries=2, backoff_s=0.1) as up:
        for name, _, _ in saves:
            up.on_commit(ckpts / name)
    put(s3_server, "runs/byprogress/checkpoint_epoch_99.pth", b"hand-uploaded, sidecar without progress")
    settle()
    run = remote_run("byprogress")
    # Stored progress first; the hand-uploaded file (no progress line) below, whatever its name says.
    assert run.list() == ["aaa_latest_work.pth", "mmm_middle.pth", "zzz_early.pth", "checkpoint_epoch_99.pth"]
    assert run.newest().endswith("/aaa_latest_work.pth")
    # The sidecar is still sha256sum's format.
    sidecar = (ckpts / "mmm_middle.pth.sha256").read_text()
    assert subprocess.run(["sha256sum", "-c", "--strict", "-"], input=sidecar, cwd=ckpts, text=True,
                          capture_output=True).returncode == 0
