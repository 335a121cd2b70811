"""``ENV.OUTPUT.BUCKET.ON_FAILURE warn`` (``BackgroundUploader(on_failure="warn")``): while the bucket is
away, training goes on, each failure is logged once with what is not uploaded yet, no unconfirmed
checkpoint becomes deletable, and everything is uploaded once the bucket is back; a bucket that never
comes back fails the run when it ends. Against a real ``rclone serve s3`` on 127.0.0.1, stopped and
started again on the same port."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import pytest

from linnaeus.checkpoint.remote import BackgroundUploader, UploadError
from linnaeus.config import ConfigError, load_config
from tests.checkpoint.remote.test_uploader import commit, remote_dir, remote_run
from tests.fixtures_rclone import RcloneServer, configure_remote, free_port, rclone_isolated, s3_server  # noqa: F401


def _until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_warn_trains_on_while_the_bucket_is_away_and_uploads_everything_once_it_is_back(
        tmp_path: Path, s3_server: RcloneServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    ckpts = tmp_path / "ck"
    up = BackgroundUploader(remote_run("warn"), retries=2, backoff_s=0.05, on_failure="warn", retry_after_s=0.5)
    first = commit(ckpts, "checkpoint_epoch_1.pth", os.urandom(20_000))
    up.on_commit(first)
    assert up.wait(timeout=60) and up.is_confirmed(first)
    s3_server.stop()  # the bucket goes away mid-run
    caplog.set_level(logging.INFO, logger="linnaeus.checkpoint")
    away = [commit(ckpts, f"checkpoint_epoch_{e}.pth", os.urandom(30_000)) for e in (2, 3)]
    for p in away:
        up.on_commit(p)
        _until(lambda: p in up.unconfirmed)
    up.poll()  # training goes on: nothing is raised
    assert up.unconfirmed == away and not any(up.can_delete(p) for p in away)  # retention keeps them
    warnings = [r.getMessage() for r in caplog.records if "Training goes on" in r.getMessage()]
    assert len(warnings) == 2, warnings  # once per checkpoint, not per retry
    assert "failed after 2 attempts" in warnings[0] and "1 checkpoint(s), 0.0 MB, not uploaded yet" in warnings[0]
    assert "2 checkpoint(s), 0.1 MB, not uploaded yet" in warnings[1] and "retrying every 0.5 s" in warnings[1]
    time.sleep(1.5)  # a few background rounds fail quietly
    assert sum("Training goes on" in r.getMessage() for r in caplog.records) == 2
    s3_server.start()  # back, on the same port
    up.close(timeout=120)  # the deferred uploads go through; nothing to raise
    remote = remote_dir(s3_server, "warn")
    for p in (first, *away):
        assert up.is_confirmed(p) and (remote / p.name).read_bytes() == p.read_bytes()
    assert (remote / "latest").read_text().strip() == "checkpoint_epoch_3.pth"
    assert any("Uploaded" in r.getMessage() and "after earlier failures" in r.getMessage() for r in caplog.records)


def test_warn_fails_the_run_when_the_bucket_is_still_away_after_its_final_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rclone_isolated: None) -> None:  # noqa: F811
    class Dead:  # a remote whose server is not running
        url = f"http://127.0.0.1:{free_port()}"

    configure_remote(monkeypatch, Dead)  # type: ignore[arg-type]
    p = commit(tmp_path / "ck", "checkpoint_epoch_1.pth", b"data")
    up = BackgroundUploader(remote_run("gone"), retries=1, on_failure="warn", retry_after_s=0.2, final_wait_s=1)
    up.on_commit(p)
    _until(lambda: up.unconfirmed == [p])
    up.poll()
    with pytest.raises(UploadError, match=r"checkpoint_epoch_1.pth: not uploaded 1 s after the run ended"):
        up.close(timeout=60)
    assert not up.can_delete(p)


def test_the_policy_is_a_config_key_with_two_values() -> None:
    assert load_config(None, []).ENV.OUTPUT.BUCKET.ON_FAILURE == "stop"
    load_config(None, ["ENV.OUTPUT.BUCKET.ON_FAILURE", "warn"])
    with pytest.raises(ConfigError, match=r"ENV.OUTPUT.BUCKET.ON_FAILURE must be 'stop' .* or 'warn'"):
        load_config(None, ["ENV.OUTPUT.BUCKET.ON_FAILURE", "ignore"])
