"""Sources: registry, identifier classification, redaction, and the safe download itself
(locking across processes, a server killed mid-transfer, stale temp files) on real servers."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from linnaeus.checkpoint import CheckpointCorruptError, CheckpointError, CheckpointNotFoundError
from linnaeus.checkpoint.sources import (
    DownloadOptions,
    LocalSource,
    RcloneSource,
    cleanup_stale_temps,
    download,
    get_source,
    is_rclone_path,
    is_uri,
    redact,
    register_source,
    registered_schemes,
    temp_path_for,
    unregister_source,
)
from tests.fixtures_rclone import (  # noqa: F401  (fixtures)
    BUCKET,
    REMOTE,
    RcloneServer,
    http_server,
    put,
    rclone_isolated,
    s3_server,
    settle,
)


def _no_temps(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".partial")]


# ------------------------------------------------------------------ registry and names
def test_builtin_schemes_and_classification() -> None:
    assert {"file", "http", "https", "s3", "gs", "az", "b2"} <= set(registered_schemes())
    for uri in ("s3://b/k.pth", "https://h/x.pth", "gs://b/k", "myremote:bkt/x.pth", ":s3,provider=Other:b/k"):
        assert is_uri(uri), uri
    for name in ("model.pth", "runs/x/ckpt.pth", "./a.pth", "/abs/a.pth", "model[1].pth"):
        assert not is_uri(name), name
    assert is_rclone_path("r:x") and not is_rclone_path("dir/r:x")


def test_register_custom_scheme(tmp_path: Path) -> None:
    f = tmp_path / "w.pth"
    f.write_bytes(b"abc")
    register_source("mylab", lambda uri: LocalSource(tmp_path / uri.split("://", 1)[1]))
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_source("mylab", lambda uri: LocalSource(uri))
        src = get_source("mylab://w.pth")
        out = download(src, tmp_path / "cache" / "w.pth")
        assert out.read_bytes() == b"abc"
        assert (tmp_path / "cache" / "w.pth.sha256").read_text().startswith(hashlib.sha256(b"abc").hexdigest())
    finally:
        unregister_source("mylab")
    with pytest.raises(CheckpointNotFoundError, match="no source registered for scheme 'mylab://'"):
        get_source("mylab://w.pth")


def test_cloud_uris_map_to_rclone_without_secrets_on_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-value-123")
    monkeypatch.setenv("LINNAEUS_S3_ENDPOINT", "http://127.0.0.1:9")
    src = get_source("s3://bucket/dir/model.pth")
    assert isinstance(src, RcloneSource) and src.path == ":s3:bucket/dir/model.pth"
    assert src.env["RCLONE_S3_ENDPOINT"] == "http://127.0.0.1:9" and src.env["RCLONE_S3_PROVIDER"] == "Other"
    assert get_source("gs://b/k.pth").path == ":gcs:b/k.pth"
    assert get_source("az://c/k.pth").path == ":azureblob:c/k.pth"
    assert get_source("b2://b/k.pth").path == ":b2:b/k.pth"
    http = get_source("https://user:pw@example.org/a/model%5B1%5D.pth")
    assert http.path == ":http:model[1].pth" and "pw" not in http.display
    with pytest.raises(ValueError, match="query string"):
        get_source("https://example.org/a/m.pth?X-Amz-Signature=abc")
    with pytest.raises(ValueError, match="bucket"):
        get_source("s3://bucket-only")


def test_redact_removes_credentials() -> None:
    text = redact(
        "failed :s3,access_key_id=AK,secret_access_key=SK1234:bkt/x https://u:p@h/x?sig=abc token=zzzz99",
        ["hunter2-secret"],
    )
    assert "SK1234" not in text and "u:p@" not in text and "sig=abc" not in text and "zzzz99" not in text
    assert redact("the hunter2-secret leaked", ["hunter2-secret"]) == "the *** leaked"
    assert redact("lbtest:bkt/model[1].pth") == "lbtest:bkt/model[1].pth"


# ------------------------------------------------------------------ safe download
def test_download_verifies_against_sidecar(tmp_path: Path, s3_server: RcloneServer) -> None:
    data = os.urandom(300_000)
    put(s3_server, "good.pth", data)
    out = download(RcloneSource(f"{REMOTE}:{BUCKET}/good.pth"), tmp_path / "c" / "good.pth")
    assert out.read_bytes() == data
    assert _no_temps(out.parent) == []

    # A sidecar that disagrees with the data: never accepted, nothing under the final name.
    put(s3_server, "bad.pth", data, sidecar=False)
    (s3_server.root / BUCKET / "bad.pth.sha256").write_text("0" * 64 + "  bad.pth\n")
    settle()
    with pytest.raises(CheckpointCorruptError, match="bad.pth"):
        download(RcloneSource(f"{REMOTE}:{BUCKET}/bad.pth"), tmp_path / "c" / "bad.pth", DownloadOptions(retries=2, backoff_s=0.05))
    assert not (tmp_path / "c" / "bad.pth").exists() and _no_temps(tmp_path / "c") == []


class _FlippedInTransit(RcloneSource):
    """The real object, but one byte of its stream changes on the way (the size does not):
    only a hash can tell, and without a sidecar only the remote's md5 is there to tell it."""

    @contextmanager
    def open_stream(self) -> Iterator[Iterator[bytes]]:
        with super().open_stream() as chunks:
            yield self._flip_first(chunks)

    @staticmethod
    def _flip_first(chunks: Iterator[bytes]) -> Iterator[bytes]:
        first = True
        for chunk in chunks:
            if first and chunk:
                chunk, first = bytes([chunk[0] ^ 0x01]) + chunk[1:], False
            yield chunk


def test_download_without_sidecar_uses_remote_md5(tmp_path: Path, s3_server: RcloneServer,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    data = os.urandom(5000)
    put(s3_server, "plain.pth", data, sidecar=False)
    # The remote reports the object's md5; matching bytes are accepted and the log says what was checked.
    with caplog.at_level(logging.INFO, logger="linnaeus.checkpoint.sources.download"):
        out = download(RcloneSource(f"{REMOTE}:{BUCKET}/plain.pth"), tmp_path / "ok" / "plain.pth")
    assert out.read_bytes() == data
    assert "verified md5 from the rclone md5 hash" in caplog.text
    assert (tmp_path / "ok" / "plain.pth.sha256").read_text() == f"{hashlib.sha256(data).hexdigest()}  plain.pth\n"
    # Bytes that differ from the object (same size, so the size check passes) fail the md5 comparison.
    with pytest.raises(CheckpointCorruptError, match=f"md5 is (?!{hashlib.md5(data).hexdigest()}).*says "
                                                     f"{hashlib.md5(data).hexdigest()}"):
        download(_FlippedInTransit(f"{REMOTE}:{BUCKET}/plain.pth"), tmp_path / "bad" / "plain.pth",
                 DownloadOptions(retries=1))
    assert not (tmp_path / "bad" / "plain.pth").exists() and _no_temps(tmp_path / "bad") == []


def _resolve_in_child(cache: str, barrier, results) -> None:  # runs in a forked process
    from linnaeus.checkpoint import resolve
    from tests.fixtures_rclone import bucket_cfg

    barrier.wait()
    path = resolve("shared.pth", cache_dir=cache, bucket=bucket_cfg(), progress=False)
    results.put((os.getpid(), str(path), hashlib.sha256(Path(path).read_bytes()).hexdigest()))


def test_eight_processes_one_transfer(tmp_path: Path, s3_server: RcloneServer) -> None:
    data = os.urandom(2_000_000)
    put(s3_server, "shared.pth", data)
    ctx = mp.get_context("fork")  # children inherit the imported library: no 8x torch import on 2 cores
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_resolve_in_child, args=(str(tmp_path / "cache"), barrier, results)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = [results.get(timeout=5) for _ in procs]
    assert len({pid for pid, _, _ in got}) == 8
    assert {path for _, path, _ in got} == {str(tmp_path / "cache" / "shared.pth")}
    assert {digest for _, _, digest in got} == {hashlib.sha256(data).hexdigest()}
    assert s3_server.get_count(BUCKET, "shared.pth") == 1  # the server saw exactly one transfer
    assert _no_temps(tmp_path / "cache") == []


def _slow_server(tmp_path: Path, port: int | None = None) -> RcloneServer:
    root = tmp_path / "slow-root"
    (root / BUCKET).mkdir(parents=True, exist_ok=True)
    return RcloneServer("s3", root, tmp_path / "slow.log", port=port, extra=("--bwlimit", "1M")).start()


def _wait_for_partial(directory: Path, min_bytes: int, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in directory.glob(".*.partial") if directory.exists() else []:
            if p.stat().st_size >= min_bytes:
                return p
        time.sleep(0.02)
    raise AssertionError(f"no partial download appeared in {directory}")


@pytest.mark.parametrize("restart", [False, True], ids=["server-gone", "server-back"])
def test_server_killed_mid_transfer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rclone_isolated: None, restart: bool) -> None:
    from tests.fixtures_rclone import configure_remote

    server = _slow_server(tmp_path)
    try:
        configure_remote(monkeypatch, server)
        data = os.urandom(4 << 20)  # ~4 s at 1 MiB/s
        put(server, "big.pth", data)
        cache = tmp_path / "cache"
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["path"] = download(
                    RcloneSource(f"{REMOTE}:{BUCKET}/big.pth"), cache / "big.pth",
                    DownloadOptions(retries=3, backoff_s=0.3, progress=False),
                )
            except CheckpointError as e:
                outcome["error"] = e

        worker = threading.Thread(target=run)
        worker.start()
        _wait_for_partial(cache, 256 << 10)
        server.kill()
        assert not (cache / "big.pth").exists()
        if restart:  # same port, no bandwidth limit: the retry completes the file
            server = RcloneServer("s3", server.root, tmp_path / "slow2.log", port=server.port).start()
        worker.join(60)
        assert not worker.is_alive()
    finally:
        server.stop()
    if restart:
        assert outcome["path"].read_bytes() == data
    else:
        err = str(outcome["error"])
        assert "failed after 3 attempt(s)" in err and f"{REMOTE}:{BUCKET}/big.pth" in err
        assert not (cache / "big.pth").exists()
    assert _no_temps(cache) == []


def test_stale_temp_files_are_cleaned(tmp_path: Path) -> None:
    dest = tmp_path / "m.pth"
    live = temp_path_for(dest)  # our own pid: alive, recent → kept
    live.write_bytes(b"x")
    dead = Path(str(temp_path_for(dest)).replace(f".{os.getpid()}.", ".999999999."))
    dead.write_bytes(b"x")
    old = Path(str(temp_path_for(dest)).replace(f".{os.getpid()}.", f".{os.getppid()}."))
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 7 * 3600,) * 2)
    unrelated = tmp_path / "notes.partial"
    unrelated.write_bytes(b"x")
    removed = cleanup_stale_temps(tmp_path, max_age_hours=6)
    assert sorted(removed) == sorted([dead, old])
    assert live.exists() and unrelated.exists()


def test_http_download_and_missing(tmp_path: Path, http_server: RcloneServer) -> None:
    data = os.urandom(100_000)
    put(http_server, "w/model[1].pth", data)
    put(http_server, "w/model1.pth", b"decoy")
    src = get_source(f"{http_server.url}/{BUCKET}/w/model%5B1%5D.pth")
    assert download(src, tmp_path / "model[1].pth").read_bytes() == data
    with pytest.raises(CheckpointNotFoundError, match="no such object"):
        download(get_source(f"{http_server.url}/{BUCKET}/w/absent.pth"), tmp_path / "absent.pth")
