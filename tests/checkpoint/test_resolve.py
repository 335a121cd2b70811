"""Resolution order: absolute path → URI → relative path → cache (O(1)) → bucket → error,
against a real ``rclone serve s3`` / ``serve http`` on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from linnaeus.checkpoint import BucketConfig, CheckpointError, CheckpointNotFoundError, resolve
from linnaeus.utils.checkpoint_utils import resolve_checkpoint_path
from tests.conftest import REPO
from tests.fixtures_rclone import (  # noqa: F401  (fixtures)
    ACCESS_KEY,
    BUCKET,
    REMOTE,
    SECRET_KEY,
    RcloneServer,
    bucket_cfg,
    configure_remote,
    http_server,
    put,
    rclone_isolated,
    s3_server,
)


def test_absolute_path_must_exist(tmp_path: Path) -> None:
    f = tmp_path / "a.pth"
    f.write_bytes(b"1")
    assert resolve_checkpoint_path(str(f), tmp_path / "cache", None) == str(f)
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve(str(tmp_path / "missing.pth"), cache_dir=tmp_path / "cache", bucket=bucket_cfg())


def test_cache_hit_needs_no_bucket(tmp_path: Path, rclone_isolated: None) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "w.pth").write_bytes(b"w")
    # The bucket names an unconfigured remote: a cache hit must not even try it.
    cfg = {"ENABLED": True, "REMOTE": "nowhere", "NAME": "b", "PATH_PREFIX": ""}
    assert resolve_checkpoint_path("w.pth", tmp_path / "c", cfg) == str(tmp_path / "c" / "w.pth")


def test_bucket_download_lands_in_cache(tmp_path: Path, s3_server: RcloneServer) -> None:
    data = os.urandom(200_000)
    put(s3_server, "ckpts/convnext_tiny.pth", data)
    cache = tmp_path / "cache"
    path = resolve_checkpoint_path("convnext_tiny.pth", cache, bucket_cfg(prefix="ckpts/"))
    assert path == str(cache / "convnext_tiny.pth") and Path(path).read_bytes() == data
    assert (cache / "convnext_tiny.pth.sha256").read_text() == f"{hashlib.sha256(data).hexdigest()}  convnext_tiny.pth\n"
    assert resolve_checkpoint_path("convnext_tiny.pth", cache, bucket_cfg(prefix="ckpts/")) == path
    assert s3_server.get_count(BUCKET, "ckpts/convnext_tiny.pth") == 1  # second call was a cache hit


def test_missing_everywhere_lists_places(tmp_path: Path, s3_server: RcloneServer) -> None:
    with pytest.raises(CheckpointNotFoundError) as info:
        resolve("absent.pth", cache_dir=tmp_path / "cache", bucket=bucket_cfg(prefix="p/"))
    msg = str(info.value)
    assert str(tmp_path / "cache" / "absent.pth") in msg and f"{REMOTE}:{BUCKET}/p/absent.pth" in msg
    with pytest.raises(CheckpointNotFoundError, match=r"bucket: not searched \(the bucket is disabled\)") as info:
        resolve("absent.pth", cache_dir=tmp_path / "cache", bucket=bucket_cfg(enabled=False))
    # A library message: the caller (the runner) adds which of its config keys is meant.
    assert "ENV." not in str(info.value) and "tools/" not in str(info.value)


def test_enabled_bucket_without_remote_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="the bucket is enabled but its remote is empty") as info:
        resolve("absent.pth", cache_dir=tmp_path / "cache", bucket={"ENABLED": True, "REMOTE": " ", "NAME": "b"})
    assert "rclone remote" in str(info.value) and "ENV." not in str(info.value) and "tools/" not in str(info.value)


def test_relative_paths(tmp_path: Path, s3_server: RcloneServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "ckpt.pth").write_bytes(b"local")
    assert resolve("runs/x/ckpt.pth", cache_dir="cache", bucket=bucket_cfg()) == tmp_path / "runs" / "x" / "ckpt.pth"
    # Not in cwd: looked up with its folders in the cache, then in the bucket.
    put(s3_server, "teams/a/w.pth", b"remote")
    got = resolve("teams/a/w.pth", cache_dir=tmp_path / "cache", bucket=bucket_cfg())
    assert got == tmp_path / "cache" / "teams" / "a" / "w.pth" and got.read_bytes() == b"remote"
    with pytest.raises(CheckpointNotFoundError, match=r"'\.\.'"):
        resolve("../escape.pth", cache_dir=tmp_path / "cache", bucket=bucket_cfg())


def test_glob_characters_are_literal(tmp_path: Path, s3_server: RcloneServer) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "model1.pth").write_bytes(b"decoy: what the glob [1] would match")
    put(s3_server, "model1.pth", b"remote decoy")
    put(s3_server, "model[1].pth", b"the real one")
    got = resolve("model[1].pth", cache_dir=cache, bucket=bucket_cfg())
    assert got == cache / "model[1].pth" and got.read_bytes() == b"the real one"
    assert resolve("model[1].pth", cache_dir=cache, bucket=None).read_bytes() == b"the real one"


def test_recursive_lookup_is_opt_in(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "team" / "v1").mkdir(parents=True)
    (cache / "team" / "v1" / "deep.pth").write_bytes(b"d")
    with pytest.raises(CheckpointNotFoundError):
        resolve("deep.pth", cache_dir=cache)
    assert resolve("deep.pth", cache_dir=cache, recursive_lookup=True) == cache / "team" / "v1" / "deep.pth"
    assert (cache / ".linnaeus-index.json").is_file()
    assert sorted(p.name for p in cache.iterdir()) == [".linnaeus-index.json", ".linnaeus-index.json.lock", "team"]
    (cache / "team" / "v2").mkdir()
    (cache / "team" / "v2" / "deep.pth").write_bytes(b"e")
    (cache / "team" / "v1" / "deep.pth").unlink()  # stale index entry → one rebuild finds v2
    assert resolve("deep.pth", cache_dir=cache, recursive_lookup=True) == cache / "team" / "v2" / "deep.pth"
    (cache / "other").mkdir()
    (cache / "other" / "deep.pth").write_bytes(b"f")
    (cache / "team" / "v2" / "deep.pth").unlink()
    (cache / "team" / "v3").mkdir()
    (cache / "team" / "v3" / "deep.pth").write_bytes(b"g")
    with pytest.raises(CheckpointNotFoundError, match="ambiguous"):
        resolve("deep.pth", cache_dir=cache, recursive_lookup=True)


def test_uri_downloads_are_keyed_by_uri(tmp_path: Path, http_server: RcloneServer) -> None:
    put(http_server, "v1/model.pth", b"one")
    put(http_server, "v2/model.pth", b"two")
    cache = tmp_path / "cache"
    a = resolve(f"{http_server.url}/{BUCKET}/v1/model.pth", cache_dir=cache)
    b = resolve(f"{http_server.url}/{BUCKET}/v2/model.pth", cache_dir=cache)
    assert a.name == b.name == "model.pth" and a != b
    assert (a.read_bytes(), b.read_bytes()) == (b"one", b"two")
    with pytest.raises(CheckpointNotFoundError, match="no such object"):
        resolve(f"{http_server.url}/{BUCKET}/v3/model.pth", cache_dir=cache)


def test_s3_uri_with_endpoint_from_env(tmp_path: Path, s3_server: RcloneServer, monkeypatch: pytest.MonkeyPatch) -> None:
    put(s3_server, "runs/w.pth", b"via s3://")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("LINNAEUS_S3_ENDPOINT", s3_server.url)
    assert resolve(f"s3://{BUCKET}/runs/w.pth", cache_dir=tmp_path / "c").read_bytes() == b"via s3://"


def test_bad_credentials_clear_error_without_secret(tmp_path: Path, s3_server: RcloneServer, monkeypatch: pytest.MonkeyPatch) -> None:
    put(s3_server, "w.pth", b"w")
    wrong = "WRONG-secret-value-0xdeadbeef"
    configure_remote(monkeypatch, s3_server, secret=wrong)
    with pytest.raises(CheckpointError) as info:
        resolve("w.pth", cache_dir=tmp_path / "c", bucket=bucket_cfg(), retries=1)
    msg = str(info.value)
    assert "access denied" in msg and wrong not in msg and SECRET_KEY not in msg
    assert not isinstance(info.value, CheckpointNotFoundError)

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    monkeypatch.setenv("LINNAEUS_S3_ENDPOINT", s3_server.url)
    with pytest.raises(CheckpointError) as info:
        resolve(f"s3://{BUCKET}/w.pth", cache_dir=tmp_path / "c", retries=1)
    assert "access denied" in str(info.value) and wrong not in str(info.value)


def test_unconfigured_remote_says_how_to_configure(tmp_path: Path, rclone_isolated: None) -> None:
    with pytest.raises(CheckpointError, match="RCLONE_CONFIG_NOSUCH_TYPE"):
        resolve("w.pth", cache_dir=tmp_path, bucket={"ENABLED": True, "REMOTE": "nosuch", "NAME": "b"})


def test_bucket_config_from_yacs_node() -> None:
    from yacs.config import CfgNode

    node = CfgNode({"ENABLED": True, "REMOTE": "r:", "NAME": "b", "PATH_PREFIX": "p/q/"})
    assert BucketConfig.from_any(node).object_path("x.pth") == "r:b/p/q/x.pth"
    # The contract (docs/resolve.md): object = REMOTE:NAME/PATH_PREFIX<filename>, the prefix taken as written.
    prefixed = BucketConfig.from_any({"ENABLED": True, "REMOTE": "r", "NAME": "b", "PATH_PREFIX": "models/v2_"})
    assert prefixed.object_path("x.pth") == "r:b/models/v2_x.pth"
    assert BucketConfig.from_any({"ENABLED": True, "REMOTE": "r", "NAME": "", "PATH_PREFIX": ""}).object_path("x") == "r:x"
    with pytest.raises(ValueError, match="unknown keys"):
        BucketConfig.from_any({"ENABLED": True, "REMOTEE": "r"})


def test_cli_resolve_and_download(tmp_path: Path, s3_server: RcloneServer, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    from linnaeus.cli.remote_cmds import main

    put(s3_server, "cli.pth", b"cli bytes")
    monkeypatch.setenv("LINNAEUS_BUCKET_REMOTE", REMOTE)
    monkeypatch.setenv("LINNAEUS_BUCKET_NAME", BUCKET)
    monkeypatch.setenv("LINNAEUS_BUCKET_PREFIX", "")  # set, even empty, it overrides the default "modelZoo/"
    monkeypatch.setenv("LINNAEUS_CACHE_DIR", str(tmp_path / "c"))
    # The module runs on its own (`python -m`), as the lead's linnaeus-ckpt wires it in.
    r = subprocess.run([sys.executable, "-m", "linnaeus.cli.remote_cmds", "resolve", "cli.pth"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "c" / "cli.pth")
    assert main(["download", "cli.pth", "--to", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "cli.pth").read_bytes() == b"cli bytes"
    capsys.readouterr()
    assert main(["resolve", "nope.pth"]) == 2
    assert "Looked in" in capsys.readouterr().err
