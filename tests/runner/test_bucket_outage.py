"""A whole training run with ``ENV.OUTPUT.BUCKET.ON_FAILURE warn`` whose bucket goes away mid-run: it
trains on, warns about the checkpoints not uploaded yet, keeps them, and once the bucket is back (here,
while the run waits at its end) uploads every one and exits 0. A real ``rclone serve s3`` on 127.0.0.1,
stopped and started again on the same port, and a real training process, paused by a test instrument
at a known step while the server is stopped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, tiny_args
from tests.fixtures_rclone import (  # noqa: F401  (fixtures)
    BUCKET,
    REMOTE,
    RcloneServer,
    configure_remote,
    rclone_isolated,
    s3_server,
)

HELPER = REPO / "tests" / "helpers" / "sharded_ids_train.py"
OPTS = ("ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE, "ENV.OUTPUT.BUCKET.NAME", BUCKET,
        "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/", "ENV.OUTPUT.BUCKET.ON_FAILURE", "warn",
        "ENV.OUTPUT.BUCKET.UPLOAD_RETRIES", "1", "ENV.OUTPUT.BUCKET.RETRY_AFTER_S", "1",
        "CHECKPOINT.INTERVAL", "2st", "CHECKPOINT.FILENAME", "checkpoint_step_{step}.pth",
        "TRAIN.EPOCHS", "1", "TRAIN.MAX_STEPS_PER_EPOCH", "8")


def _until(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_warn_trains_on_while_the_bucket_is_away_and_uploads_everything_once_it_is_back(
        tmp_path: Path, toy_root: Path, s3_server: RcloneServer) -> None:  # noqa: F811
    remote = s3_server.root / BUCKET / "runs" / "tiny"
    pause, log = tmp_path / "pause", tmp_path / "run.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LINNAEUS_TEST_IDS": str(tmp_path / "ids"),
           "LINNAEUS_TEST_PAUSE_AT": "3", "LINNAEUS_TEST_PAUSE": str(pause)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(HELPER), *tiny_args(tmp_path, toy_root, *OPTS)], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _until(pause.exists, proc, "the pause at step 3")
        _until(lambda: (remote / "checkpoint_step_2.pth.sha256").exists(), proc, "the upload of step 2")
        s3_server.stop()  # the bucket goes away; training goes on
        pause.unlink()
        _until(lambda: re.search(r"Saved checkpoint \S+checkpoint_step_8\.pth", log.read_text()) is not None
               and "Training goes on" in log.read_text(), proc, "the last step's checkpoint and a warning")
        assert proc.poll() is None  # trained to the end; now waiting for the uploads it could not make
        s3_server.start()  # back, on the same port
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert proc.returncode == 0, output[-4000:]
    warnings = [line for line in output.splitlines() if "Training goes on" in line]
    assert warnings and all("not uploaded yet" in w for w in warnings), warnings
    for step in (2, 4, 6, 8):  # everything, byte for byte, and the remote latest moved to the newest
        local = tmp_path / "tiny" / "checkpoints" / f"checkpoint_step_{step}.pth"
        assert (remote / local.name).read_bytes() == local.read_bytes()
    assert (remote / "latest").read_text().strip() == "checkpoint_step_8.pth"
