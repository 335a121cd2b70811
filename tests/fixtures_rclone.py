"""Real rclone servers on 127.0.0.1 for the resolver/upload tests (started and stopped by pid).

Import the fixtures into a test module with ``from tests.fixtures_rclone import *``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

RCLONE = str(Path(sys.executable).parent / "rclone")
ACCESS_KEY = "linnaeus-test-access"
SECRET_KEY = "linnaeus-test-secret-Zq93vX"  # asserted never to appear in messages
REMOTE = "lbtest"  # the rclone remote configured through RCLONE_CONFIG_LBTEST_*
BUCKET = "bkt"
DIR_CACHE_S = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RcloneServer:
    """``rclone serve s3|http <root>`` on 127.0.0.1:<port>, logging at -vv to ``log``."""

    def __init__(self, kind: str, root: Path, log: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.kind, self.root, self.log, self.extra = kind, root, log, extra
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "RcloneServer":
        # Tests seed objects straight into the root dir: a short directory cache lets the server see
        # them (after DIR_CACHE_S). 0s would make rclone's cache cleaner spin and hog a core.
        args = [RCLONE, "serve", self.kind, str(self.root), "--addr", f"127.0.0.1:{self.port}", "-vv",
                "--dir-cache-time", f"{int(DIR_CACHE_S * 1000)}ms", *self.extra]
        if self.kind == "s3":
            args += ["--auth-key", f"{ACCESS_KEY},{SECRET_KEY}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        logf.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve {self.kind} exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rclone serve {self.kind} did not listen on {self.port} within 20 s")

    def kill(self) -> None:
        """SIGKILL by pid, as a crashed or preempted server would die."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def get_count(self, bucket: str, key: str) -> int:
        """Server-side evidence: how many GETs of ``bucket/key`` the server served."""
        if self.kind == "s3":
            pattern = re.compile(rf"GET OBJECT Bucket: {re.escape(bucket)} Object: {re.escape(key)}$", re.M)
        else:
            pattern = re.compile(rf"{re.escape(bucket + '/' + key)}: Open: flags=O_RDONLY", re.M)
        return len(pattern.findall(self.log.read_text(errors="replace")))


def configure_remote(monkeypatch: pytest.MonkeyPatch, server: RcloneServer, name: str = REMOTE, secret: str = SECRET_KEY) -> None:
    up = name.upper()
    for key, value in {
        "TYPE": "s3",
        "PROVIDER": "Rclone",
        "ENDPOINT": server.url,
        "ACCESS_KEY_ID": ACCESS_KEY,
        "SECRET_ACCESS_KEY": secret,
    }.items():
        monkeypatch.setenv(f"RCLONE_CONFIG_{up}_{key}", value)


@pytest.fixture
def rclone_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user rclone.conf, fast failure on dead servers."""
    conf = tmp_path / "rclone.conf"
    conf.write_text("")
    monkeypatch.setenv("RCLONE_CONFIG", str(conf))
    monkeypatch.setenv("RCLONE_LOW_LEVEL_RETRIES", "1")
    monkeypatch.setenv("RCLONE_RETRIES", "1")
    monkeypatch.setenv("RCLONE_CONTIMEOUT", "3s")
    monkeypatch.setenv("RCLONE_TIMEOUT", "10s")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)


def _server(tmp_path: Path, kind: str, extra: tuple[str, ...] = ()) -> Iterator[RcloneServer]:
    root = tmp_path / f"{kind}-root"
    (root / BUCKET).mkdir(parents=True)
    server = RcloneServer(kind, root, tmp_path / f"{kind}-server.log", extra=extra).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rclone_isolated: None) -> Iterator[RcloneServer]:
    """``rclone serve s3`` over ``<tmp>/s3-root`` (bucket ``bkt``), with remote ``lbtest`` configured."""
    for server in _server(tmp_path, "s3"):
        configure_remote(monkeypatch, server)
        yield server


@pytest.fixture
def http_server(tmp_path: Path, rclone_isolated: None) -> Iterator[RcloneServer]:
    """``rclone serve http`` over ``<tmp>/http-root`` (folder ``bkt``)."""
    yield from _server(tmp_path, "http")


def put(server: RcloneServer, key: str, data: bytes, *, sidecar: bool = True, bucket: str = BUCKET) -> Path:
    """Seed an object (and its sha256sum-format sidecar) straight into the server's root dir."""
    import hashlib

    path = server.root / bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if sidecar:
        Path(str(path) + ".sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    settle()
    return path


def settle() -> None:
    """Wait out the server's directory cache after writing into its root dir directly."""
    time.sleep(DIR_CACHE_S * 3)


def bucket_cfg(prefix: str = "", enabled: bool = True) -> dict:
    return {"ENABLED": enabled, "REMOTE": REMOTE, "NAME": BUCKET, "PATH_PREFIX": prefix}
