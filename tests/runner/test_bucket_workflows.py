"""The checkpoint guide's bucket workflows as written (issue 12, items 1, 2 and 6).

Real rclone throughout. Backblaze B2 itself cannot be reached from a test, so the B2 default is
checked where it can be: the argv and environment linnaeus gives the real rclone binary, and
what rclone then sends to a B2 authorize endpoint on 127.0.0.1 (``RCLONE_B2_ENDPOINT``). The
whole flow runs against ``rclone serve s3`` with the remote given explicitly.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import logging
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import pytest
import torch
import yaml

from linnaeus.checkpoint import (
    BucketConfig,
    CheckpointError,
    CheckpointManager,
    CheckpointPolicy,
    Interval,
    InvalidOperationError,
    RemoteRun,
    parse_interval,
    resolve,
)
from linnaeus.checkpoint.ordering import progress_from_name
from linnaeus.checkpoint.sources import get_source, rclone_binary
from linnaeus.cli.remote_cmds import main as remote_cmds
from linnaeus.config import build_policy, load_config
from linnaeus.config.errors import ConfigError
from linnaeus.utils.checkpoint_utils import input_resolver
from tests.conftest import REPO, run_train
from tests.fixtures_rclone import (  # noqa: F401  (fixtures)
    ACCESS_KEY,
    BUCKET,
    RCLONE,
    REMOTE,
    SECRET_KEY,
    RcloneServer,
    put,
    rclone_isolated,
    s3_server,
)

SCRIPT = REPO / "tools" / "scripts" / "upload_checkpoints.sh"
KEY_ID = "0042b2keyid-test"
APP_KEY = "K004secret-b2-app-key-Zz81"  # asserted never to appear on argv or in messages
ZOO = "linnaeus-checkpoints"  # the guide's NAME (the default), holding PATH_PREFIX "modelZoo/"

# The guide's bucket block, verbatim.
GUIDE_BLOCK = {"ENV": {"INPUT": {"CACHE_DIR": "/path/to/checkpoints",
                                 "BUCKET": {"ENABLED": True, "NAME": ZOO, "PATH_PREFIX": "modelZoo/"}}}}


@pytest.fixture
def no_b2_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY", "RCLONE_B2_ACCOUNT", "RCLONE_B2_KEY",
                "LINNAEUS_BUCKET_REMOTE", "LINNAEUS_BUCKET_NAME", "LINNAEUS_BUCKET_PREFIX"):
        monkeypatch.delenv(var, raising=False)


def _write_cfg(tmp_path: Path, tree: dict, name: str = "guide.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


# ------------------------------------------------------------------ item 1: config load
@pytest.mark.parametrize("section", ["INPUT", "OUTPUT"])
def test_enabled_bucket_without_remote_or_b2_credentials_fails_at_config_load(
        tmp_path: Path, section: str, no_b2_env: None) -> None:
    tree = {"ENV": {section: {"BUCKET": {"ENABLED": True}}}}
    with pytest.raises(ConfigError) as info:
        load_config(str(_write_cfg(tmp_path, tree)))
    msg = str(info.value)
    for needed in (f"ENV.{section}.BUCKET.REMOTE", f"ENV.{section}.BUCKET.ENABLED", "B2_APPLICATION_KEY_ID",
                   "B2_APPLICATION_KEY", "rclone"):
        assert needed in msg, (needed, msg)


def test_guide_block_loads_as_b2_with_the_guide_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         no_b2_env: None) -> None:
    monkeypatch.setenv("B2_APPLICATION_KEY_ID", KEY_ID)
    monkeypatch.setenv("B2_APPLICATION_KEY", APP_KEY)
    cfg = load_config(str(_write_cfg(tmp_path, GUIDE_BLOCK)))
    assert BucketConfig.from_any(cfg.ENV.INPUT.BUCKET).folder() == f":b2:{ZOO}/modelZoo/"
    # NAME and PATH_PREFIX default to the guide's values: ENABLED alone means the same bucket.
    bare = load_config(str(_write_cfg(tmp_path, {"ENV": {"INPUT": {"BUCKET": {"ENABLED": True}},
                                                         "OUTPUT": {"BUCKET": {"ENABLED": True}}}}, "bare.yaml")))
    for node in (bare.ENV.INPUT.BUCKET, bare.ENV.OUTPUT.BUCKET):
        assert BucketConfig.from_any(node).folder() == f":b2:{ZOO}/modelZoo/"
    assert RemoteRun.in_bucket(bare.ENV.OUTPUT.BUCKET, "exp").env == {"RCLONE_B2_ACCOUNT": KEY_ID,
                                                                      "RCLONE_B2_KEY": APP_KEY}
    # rclone's own variables count as credentials too (and win, as for b2:// URIs).
    monkeypatch.delenv("B2_APPLICATION_KEY_ID")
    monkeypatch.delenv("B2_APPLICATION_KEY")
    monkeypatch.setenv("RCLONE_B2_ACCOUNT", KEY_ID)
    monkeypatch.setenv("RCLONE_B2_KEY", APP_KEY)
    load_config(str(_write_cfg(tmp_path, GUIDE_BLOCK)))


# ------------------------------------------------------------------ item 1: what rclone gets
class _B2AuthRecorder(http.server.BaseHTTPRequestHandler):
    """Stands in for api.backblazeb2.com: records the Authorization of each authorize call, refuses it."""

    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        body = b'{"status": 401, "code": "bad_auth_token", "message": "test server"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def b2_auth_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _B2AuthRecorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _B2AuthRecorder.seen = []
    monkeypatch.setenv("RCLONE_B2_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    try:
        yield _B2AuthRecorder.seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def recorded_rclone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The real rclone behind a wrapper that appends its argv, and the B2 variables it was given,
    to a log (one line each)."""
    log = tmp_path / "rclone-calls.log"
    wrapper = tmp_path / "rclone-recording"
    wrapper.write_text(
        "#!/bin/bash\n"
        f"{{ printf 'ARGV'; printf ' %q' \"$@\"; echo; echo \"ENV account=$RCLONE_B2_ACCOUNT key=$RCLONE_B2_KEY\"; }}"
        f" >> '{log}'\n"
        f"exec '{RCLONE}' \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("LINNAEUS_RCLONE", str(wrapper))
    rclone_binary.cache_clear()
    yield log
    rclone_binary.cache_clear()  # monkeypatch restores LINNAEUS_RCLONE; the next call finds the real binary


def test_b2_default_gives_rclone_the_credentials_in_its_environment_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture, rclone_isolated: None, no_b2_env: None, b2_auth_server: list[tuple[str, str]],
        recorded_rclone: Path, restore_linnaeus_logger: None) -> None:
    monkeypatch.setenv("B2_APPLICATION_KEY_ID", KEY_ID)
    monkeypatch.setenv("B2_APPLICATION_KEY", APP_KEY)
    cfg = load_config(str(_write_cfg(tmp_path, GUIDE_BLOCK)), opts=["ENV.INPUT.CACHE_DIR", str(tmp_path / "cache"),
                                                                    "ENV.OUTPUT.BUCKET.ENABLED", "True"])
    caplog.set_level(logging.DEBUG)
    # A cache miss goes to the bucket: B2 (here, the stand-in) refuses the test credentials.
    with pytest.raises(CheckpointError, match="access denied") as miss:
        input_resolver(cfg.ENV.INPUT, retries=1)("convnext_tiny_22k_1k_384.pth")
    # The output bucket's uploads go the same way.
    ck = tmp_path / "checkpoint_epoch_1.pth"
    ck.write_bytes(b"weights")
    (tmp_path / "checkpoint_epoch_1.pth.sha256").write_text(f"{hashlib.sha256(b'weights').hexdigest()}  {ck.name}\n")
    with pytest.raises(CheckpointError, match="access denied") as upload:
        RemoteRun.in_bucket(cfg.ENV.OUTPUT.BUCKET, "exp").upload(ck)
    # The guide's one-argument upload, with no remote anywhere: the model zoo on B2.
    zoo_file = tmp_path / "zoo_weights.pth"
    zoo_file.write_bytes(b"zoo")
    assert remote_cmds(["upload", str(zoo_file)]) == 1
    cli_err = capsys.readouterr().err
    assert "access denied" in cli_err

    calls = recorded_rclone.read_text().splitlines()
    argv = [c for c in calls if c.startswith("ARGV")]
    assert any(f":b2:{ZOO}/modelZoo/convnext_tiny_22k_1k_384.pth" in a for a in argv), argv
    assert any(f":b2:{ZOO}/modelZoo/exp/checkpoint_epoch_1.pth" in a for a in argv), argv
    assert any(f":b2:{ZOO}/modelZoo/zoo_weights.pth" in a for a in argv), argv
    assert all(line == f"ENV account={KEY_ID} key={APP_KEY}" for line in calls if line.startswith("ENV")), calls
    # rclone really authenticated with them: HTTP basic auth of <key id>:<key> to the authorize endpoint.
    basic = "Basic " + base64.b64encode(f"{KEY_ID}:{APP_KEY}".encode()).decode()
    assert b2_auth_server and all(path.endswith("/b2_authorize_account") and auth == basic
                                  for path, auth in b2_auth_server), b2_auth_server
    # Never on argv, never in a message or a log line.
    for text in ("\n".join(argv), str(miss.value), str(upload.value), cli_err, caplog.text):
        assert APP_KEY not in text and KEY_ID not in text


def test_b2_default_without_credentials_in_the_library_names_the_variables(
        no_b2_env: None, tmp_path: Path, capsys: pytest.CaptureFixture, restore_linnaeus_logger: None) -> None:
    # The library (no config validation in between) says the same thing at the first use.
    with pytest.raises(CheckpointError, match="B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY missing"):
        resolve("absent.pth", cache_dir=tmp_path, bucket={"ENABLED": True, "NAME": ZOO, "PATH_PREFIX": "modelZoo/"})
    # And so does the one-argument upload, before anything is transferred or written.
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"w")
    assert remote_cmds(["upload", str(weights)]) == 1
    err = capsys.readouterr().err
    assert "B2_APPLICATION_KEY_ID" in err and "rclone remote" in err
    assert not (tmp_path / "w.pth.sha256").exists()


# ------------------------------------------------------------------ items 1 + 2: the whole flow on a real S3 server
def test_one_argument_upload_then_bare_name_resolves_through_the_config(
        tmp_path: Path, s3_server: RcloneServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        no_b2_env: None, restore_linnaeus_logger: None) -> None:
    """The guide: upload_checkpoints.sh /path/to/checkpoint.pth, then MODEL.PRETRAINED <that name>.
    The remote is the local S3 server, named explicitly (B2 cannot be reached); NAME and
    PATH_PREFIX are the defaults, so the file lands at linnaeus-checkpoints/modelZoo/<name>.
    The script runs once as the user runs it; the later calls go to its Python entry point in-process
    (each interpreter start imports torch: seconds)."""
    (s3_server.root / ZOO).mkdir()
    weights = tmp_path / "downloads" / "convnext_tiny_22k_1k_384.pth"
    weights.parent.mkdir()
    data = os.urandom(200_000)
    weights.write_bytes(data)
    monkeypatch.setenv("LINNAEUS_BUCKET_REMOTE", REMOTE)
    r = subprocess.run([SCRIPT, str(weights)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == weights.name  # the bare name, alone on stdout
    assert "verified" in r.stderr and "MODEL.PRETRAINED" in r.stderr
    remote = s3_server.root / ZOO / "modelZoo"
    assert (remote / weights.name).read_bytes() == data
    assert (remote / f"{weights.name}.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert (weights.parent / f"{weights.name}.sha256").is_file()  # computed because the file had none
    # Again: nothing to send, still the name to use.
    assert remote_cmds(["upload", str(weights)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == weights.name and "already remote" in err, err

    # A run configured with the guide's block (remote given explicitly) finds it by that name.
    monkeypatch.delenv("LINNAEUS_BUCKET_REMOTE")
    cfg_file = _write_cfg(tmp_path, {"ENV": {"INPUT": {"CACHE_DIR": str(tmp_path / "cache"),
                                                       "BUCKET": {"ENABLED": True, "REMOTE": REMOTE}}}})
    cfg = load_config(str(cfg_file))
    got = input_resolver(cfg.ENV.INPUT, progress=False)(out.strip())
    assert got == tmp_path / "cache" / weights.name and got.read_bytes() == data

    # --cfg reads ENV.INPUT.BUCKET: a second file goes to the same model zoo.
    other = tmp_path / "downloads" / "rope_vit.pth"
    other.write_bytes(b"rope")
    assert remote_cmds(["upload", "--cfg", str(cfg_file), str(other)]) == 0
    assert capsys.readouterr().out.strip() == "rope_vit.pth"
    assert (remote / "rope_vit.pth").read_bytes() == b"rope"


def test_upload_to_a_runs_output_folder_stays_an_explicit_option(
        tmp_path: Path, s3_server: RcloneServer, no_b2_env: None, restore_linnaeus_logger: None) -> None:
    cfg_file = _write_cfg(tmp_path, {"EXPERIMENT": {"NAME": "my_run"}, "ENV": {"OUTPUT": {"BUCKET": {
        "ENABLED": True, "REMOTE": REMOTE, "NAME": BUCKET, "PATH_PREFIX": "runs/"}}}})
    ck = tmp_path / "checkpoint_epoch_1.pth"
    ck.write_bytes(b"run bytes")
    # A run's file without its sidecar is uncommitted: refused unless --write-sidecar.
    assert remote_cmds(["upload", "--output", "--cfg", str(cfg_file), str(ck)]) == 1
    assert not (s3_server.root / BUCKET / "runs").exists()
    assert remote_cmds(["upload", "--output", "--cfg", str(cfg_file), "--write-sidecar", "--latest", str(ck)]) == 0
    folder = s3_server.root / BUCKET / "runs" / "my_run"
    assert (folder / ck.name).read_bytes() == b"run bytes" and (folder / "latest").read_text().strip() == ck.name


# ------------------------------------------------------------------ item 6: file-name fields, "ba", S3_ENDPOINT_URL
def test_ba_is_an_alias_of_st_in_intervals(tmp_path: Path) -> None:
    assert parse_interval("500ba") == parse_interval("500st") == Interval(500, "st")
    cfg = load_config(str(_write_cfg(tmp_path, {"CHECKPOINT": {"INTERVAL": "500ba",
                                                               "FILENAME": "ckpt_step_{step}.pth"}})))
    assert build_policy(cfg).interval == Interval(500, "st")
    # A step interval still needs {step} in the name, whichever spelling chose it.
    with pytest.raises(ConfigError, match=r"CHECKPOINT.FILENAME.*\{step\}"):
        load_config(str(_write_cfg(tmp_path, {"CHECKPOINT": {"INTERVAL": "500ba"}}, "nostep.yaml")))
    # Composer-style names (ep<E>-ba<B>) order by their batch count when only the name is known.
    assert progress_from_name("ep1-ba1000-rank0.pt") > progress_from_name("ep1-ba500-rank0.pt")


def _tiny_objects():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_run_name_fields_and_run_timestamp_survive_a_relaunch(tmp_path: Path) -> None:
    policy = CheckpointPolicy(interval=parse_interval("1ep"),
                              filename="{dataset}_{run_timestamp}_e{epoch}_of_{n_epochs}.pth")
    fields = {"dataset": "inat", "n_epochs": 5}
    first = CheckpointManager(tmp_path, policy, run_timestamp="20260101-090000", name_fields=fields)
    model, opt = _tiny_objects()
    path1 = first.save(epoch=1, step=10, model=model, optimizer=opt)
    first.close()
    assert path1.name == "inat_20260101-090000_e1_of_5.pth"

    # The relaunch starts later (its own time would be 20260102-...) and may train longer.
    again = CheckpointManager(tmp_path, policy, run_timestamp="20260102-120000",
                              name_fields={"dataset": "inat", "n_epochs": 8})
    model, opt = _tiny_objects()
    resumed = again.resume(model=model, optimizer=opt)  # auto-resume finds the file by itself
    assert resumed is not None and resumed.path == path1
    assert again.run_timestamp == "20260101-090000"
    path2 = again.save(epoch=2, step=20, model=model, optimizer=opt)
    again.close()
    assert path2.name == "inat_20260101-090000_e2_of_8.pth"
    assert torch.load(path2, weights_only=True)["meta"]["run_timestamp"] == "20260101-090000"

    # A template with a run field the manager was not given fails when the manager is made, not at a save.
    with pytest.raises(InvalidOperationError, match=r"\{n_epochs\}.*name_fields"):
        CheckpointManager(tmp_path / "other", policy, name_fields={"dataset": "inat"})


def test_run_timestamp_survives_a_relaunch_of_sharded_checkpoints(tmp_path: Path) -> None:
    """The sharded (DCP directory) saver records it too, so the relaunch keeps the first launch's."""
    policy = CheckpointPolicy(filename="ck_{run_timestamp}_e{epoch}")
    first = CheckpointManager(tmp_path, policy, sharded=True, run_timestamp="20260101-090000")
    model, opt = _tiny_objects()
    assert first.save(epoch=1, step=1, model=model, optimizer=opt).name == "ck_20260101-090000_e1"
    first.close()
    again = CheckpointManager(tmp_path, policy, sharded=True, run_timestamp="20260102-120000")
    resumed = again.resume(model=model, optimizer=opt)
    assert resumed is not None and resumed.path.name == "ck_20260101-090000_e1"
    assert again.save(epoch=2, step=2, model=model, optimizer=opt).name == "ck_20260101-090000_e2"
    again.close()


def test_s3_endpoint_url_is_read_for_s3_uris(tmp_path: Path, s3_server: RcloneServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Composer's S3_ENDPOINT_URL (CoreWeave, MinIO...): s3:// downloads from the local S3 server."""
    for var in ("LINNAEUS_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "LINNAEUS_S3_PROVIDER",
                "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    data = os.urandom(50_000)
    put(s3_server, "zoo/w.pth", data)
    got = resolve(f"s3://{BUCKET}/zoo/w.pth", cache_dir=tmp_path / "cache", progress=False)
    assert got.read_bytes() == data
    # The more specific variables still win over it.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    assert get_source(f"s3://{BUCKET}/zoo/w.pth").env["RCLONE_S3_ENDPOINT"] == "http://127.0.0.1:9"


def test_runner_names_files_with_the_runs_fields_across_a_relaunch(tmp_path: Path, toy_root: Path) -> None:
    """The runner gives DATA.DATASET / TRAIN.EPOCHS to both savers, and a relaunch (auto-resume)
    finds the first launch's files and keeps naming with its {run_timestamp}."""
    opts = ("TRAIN.MAX_STEPS_PER_EPOCH", "2", "CHECKPOINT.INTERVAL", "2ba",
            "CHECKPOINT.FILENAME", "{dataset}_{run_timestamp}_s{step}_of_{n_epochs}.pth",
            "CHECKPOINT.WEIGHTS_SAVER.ENABLED", "True", "CHECKPOINT.WEIGHTS_SAVER.FILENAME",
            "weights_{dataset}_{run_timestamp}_e{epoch}.pth")
    run_train(tmp_path, toy_root, *opts, "TRAIN.EPOCHS", "1")
    ckpts = tmp_path / "tiny" / "checkpoints"
    first = sorted(p.name for p in ckpts.glob("*.pth"))
    stamp = re.fullmatch(r"toy_(\d{8}-\d{6})_s2_of_1\.pth", first[0])
    assert stamp and first == [f"toy_{stamp[1]}_s2_of_1.pth", f"weights_toy_{stamp[1]}_e1.pth"], first
    proc = run_train(tmp_path, toy_root, *opts, "TRAIN.EPOCHS", "2")
    assert f"Resumed from {ckpts / first[0]}" in proc.stdout + proc.stderr
    assert {f"toy_{stamp[1]}_s4_of_2.pth", f"weights_toy_{stamp[1]}_e2.pth"} <= {p.name for p in ckpts.glob("*.pth")}
    assert torch.load(ckpts / f"toy_{stamp[1]}_s4_of_2.pth", weights_only=True)["meta"]["run_timestamp"] == stamp[1]
