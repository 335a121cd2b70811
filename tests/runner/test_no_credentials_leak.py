"""Credentials in checkpoint identifiers never reach a run's outputs: secrets planted in every
identifier key (URL user-info), a bucket connection string and the bucket's credential
environment, through a failing fresh start (one process and DDP), a relaunch that passes over its
TRAIN.RESUME, and the config diff on resume; then stdout, stderr and every file the runs wrote
(log.txt, config.yaml, load_report.json, TensorBoard events, checkpoints and their meta) are
scanned for the secret."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from linnaeus.checkpoint.resolve import uri_cache_path
from tests.conftest import REPO, tiny_args, train_cmd

SECRET = "s3cret"
URL = f"http://user:{SECRET}TOKEN@127.0.0.1:1/ckpt.pth"
REMOTE = f":s3,access_key_id=AKIAEXAMPLE,secret_access_key={SECRET}KEY:"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "AWS_SECRET_ACCESS_KEY": f"{SECRET}ENV",
       "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}
IDENTIFIERS = ("MODEL.PRETRAINED", URL.replace("ckpt", "p0"), "MODEL.PRETRAINED_CONVNEXT", URL.replace("ckpt", "p1"),
               "MODEL.PRETRAINED_ROPEVIT", URL.replace("ckpt", "p2"), "ENV.INPUT.BUCKET.REMOTE", REMOTE,
               "ENV.OUTPUT.BUCKET.REMOTE", REMOTE)
SHORT = ("TRAIN.MAX_STEPS_PER_EPOCH", "2", "ENV.INPUT.DOWNLOAD_RETRIES", "1")


def _run(out: Path, toy_root: Path, *opts: str, name: str, nproc: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(nproc) + tiny_args(out, toy_root, *SHORT, *opts, name=name), cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def _leaks(out: Path, procs: list[subprocess.CompletedProcess]) -> list[str]:
    found = [f"{p.args[-1]} stdout/stderr" for p in procs if SECRET in p.stdout + p.stderr]
    for path in out.rglob("*"):
        if path.is_file() and SECRET.encode() in path.read_bytes():
            found.append(str(path.relative_to(out)))
    return found


def test_no_secret_in_any_output(tmp_path: Path, toy_root: Path) -> None:
    procs = []
    # Failure paths: TRAIN.RESUME cannot be fetched (one process, and the peer rank's error under DDP).
    for nproc in (1, 2):
        proc = _run(tmp_path, toy_root, "TRAIN.RESUME", URL, *IDENTIFIERS, name=f"fail{nproc}", nproc=nproc)
        assert proc.returncode != 0, proc.stdout[-2000:]
        assert "http://***@127.0.0.1:1/ckpt.pth" in proc.stderr, proc.stderr[-3000:]  # named, redacted
        procs.append(proc)
    # A run, then a relaunch whose TRAIN.RESUME (found in the cache, older than the run's newest)
    # is passed over with a warning; the relaunch also diffs the config (identifiers changed).
    procs.append(_run(tmp_path, toy_root, "TRAIN.EPOCHS", "2", name="run"))
    assert procs[-1].returncode == 0, procs[-1].stderr[-3000:]
    cached = uri_cache_path(URL, (tmp_path / "cache").absolute(), "ckpt.pth")
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "run" / "checkpoints" / "checkpoint_epoch_1.pth", cached)
    procs.append(_run(tmp_path, toy_root, "TRAIN.EPOCHS", "3", "TRAIN.RESUME", URL, *IDENTIFIERS, name="run"))
    assert procs[-1].returncode == 0, procs[-1].stderr[-3000:]
    assert "is older than this run's newest checkpoint" in procs[-1].stdout
    assert "MODEL.PRETRAINED:" in procs[-1].stdout  # the config diff logged the identifiers (redacted)
    assert list((tmp_path / "run" / "tensorboard").rglob("events*"))
    assert _leaks(tmp_path, procs) == []


def test_no_secret_in_cli_output(tmp_path: Path) -> None:
    """The CLI commands that take identifiers and remotes print none of their secrets."""
    ckpt = REPO / ".venv" / "bin" / "linnaeus-ckpt"
    ckpt_cmd = [str(ckpt)] if ckpt.exists() else ["python", "-m", "linnaeus.cli.ckpt"]
    local = tmp_path / "w.pth"
    local.write_bytes(b"weights")
    runs = [
        ["resolve", URL, "--cache-dir", str(tmp_path / "cache"), "--retries", "1"],
        ["download", URL, "--to", str(tmp_path / "dl"), "--cache-dir", str(tmp_path / "cache"), "--retries", "1"],
        ["resolve", "missing.pth", "--cache-dir", str(tmp_path / "cache"), "--remote", REMOTE, "--bucket", "b",
         "--retries", "1"],
        ["upload", str(local), "--write-sidecar", "--remote", REMOTE, "--bucket", "b"],
    ]
    for args in runs:
        proc = subprocess.run(ckpt_cmd + args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0, (args, proc.stdout, proc.stderr)  # nothing listens there: each fails
        assert SECRET not in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr)
