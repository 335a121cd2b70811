"""ENV.OUTPUT.BUCKET.INTERVAL: frequent local saves, rarer uploads. A checkpoint goes to the bucket
when the upload interval fell due since the last one that did; the others stay local, where
retention may delete them, and the run's last checkpoint goes up at its end whatever the interval.
On node-local directories with sharded checkpoints every node uploads its part of the same ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from linnaeus.checkpoint.remote import UploadCadence
from linnaeus.config import ConfigError

from tests.conftest import run_train
from tests.fixtures_rclone import BUCKET, REMOTE, RcloneServer, rclone_isolated, s3_server  # noqa: F401 (fixtures)
from tests.nodes import SHORT, launch_nodes

BUCKET_OPTS = ("ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE, "ENV.OUTPUT.BUCKET.NAME", BUCKET,
               "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/")
EVERY_STEP = ("CHECKPOINT.INTERVAL", "1st", "CHECKPOINT.FILENAME", "step_{step}.pth")


def _due(cadence: UploadCadence, saves: list[tuple[int, int, bool, int]]) -> list[int]:
    return [step for epoch, step, end, ms in saves
            if cadence.due(epoch=epoch, step=step, end_of_epoch=end, elapsed_ms=ms)]


def test_a_checkpoint_is_uploaded_when_the_interval_fell_due_since_the_last_one_uploaded() -> None:
    saves = [(0, s, False, 0) for s in range(1, 12)]
    assert _due(UploadCadence("4st"), saves) == [4, 8]
    resumed = UploadCadence("4st")
    resumed.start(epoch=0, step=5, elapsed_ms=0)  # counted from the resumed progress
    assert _due(resumed, saves[5:]) == [8]
    # Saves every 3 steps with uploads every 4: the first save past each multiple goes up.
    assert _due(UploadCadence("4st"), [(0, s, False, 0) for s in (3, 6, 9, 12, 15)]) == [6, 9, 12]
    # Epochs of 10 steps, a save mid-epoch and one at its end (``epoch``: epochs completed).
    by_epoch = [save for e in range(1, 5) for save in ((e - 1, 10 * e - 5, False, 0), (e, 10 * e, True, 0))]
    assert _due(UploadCadence("2ep"), by_epoch) == [20, 40]  # the end-of-epoch saves of every second epoch
    timed = [(0, s, False, ms) for s, ms in ((1, 20_000), (2, 61_000), (3, 100_000), (4, 125_000))]
    assert _due(UploadCadence("1min"), timed) == [2, 4]
    assert _due(UploadCadence(["3st", "1min"]), timed) == [2, 3, 4]


def test_a_bad_upload_interval_is_refused_naming_the_key(tmp_path: Path, toy_root: Path) -> None:
    from linnaeus.config import load_config

    with pytest.raises(ConfigError, match=r"ENV.OUTPUT.BUCKET.INTERVAL .*'5 steps'"):
        load_config(None, ["ENV.OUTPUT.BUCKET.INTERVAL", "5 steps"])


def test_local_saves_every_step_uploads_every_fourth_and_the_last(tmp_path: Path, toy_root: Path,
                                                                  s3_server: RcloneServer) -> None:
    run_train(tmp_path, toy_root, *SHORT, *EVERY_STEP, *BUCKET_OPTS, "TRAIN.EPOCHS", "3",
              "CHECKPOINT.KEEP_LAST_N", "2", "ENV.OUTPUT.BUCKET.INTERVAL", "4st")
    folder = s3_server.root / BUCKET / "runs" / "tiny"
    assert sorted(p.name for p in folder.glob("step_*.pth")) == ["step_4.pth", "step_8.pth", "step_9.pth"]
    assert (folder / "latest").read_text().strip() == "step_9.pth"
    local = tmp_path / "tiny" / "checkpoints"  # retention deleted the held-back ones as any other
    assert sorted(p.name for p in local.glob("step_*.pth")) == ["step_8.pth", "step_9.pth"]


def test_every_node_uploads_its_part_of_the_same_checkpoints(tmp_path: Path, toy_root: Path,
                                                             s3_server: RcloneServer) -> None:
    """Two launchers as two nodes, FSDP2, each its own directory: rank 0 uploads the manifest only once
    node b's part is confirmed, so a node that decided otherwise would stall the run's end."""
    runs = [tmp_path / "node_a", tmp_path / "node_b"]
    procs = launch_nodes(runs, toy_root, "TRAIN.STRATEGY", "fsdp", "TRAIN.EPOCHS", "2", *EVERY_STEP, *BUCKET_OPTS,
                         "ENV.OUTPUT.BUCKET.INTERVAL", "4st",
                         node_opts=[("CHECKPOINT.LOCAL_DIR", str(tmp_path / d)) for d in ("disk_a", "disk_b")])
    assert [p.returncode for p in procs] == [0, 0], procs[0].stdout[-3000:] + procs[1].stdout[-3000:]
    assert "Uploads to lbtest:bkt/runs/tiny/ follow ENV.OUTPUT.BUCKET.INTERVAL 4st" in procs[0].stdout
    folder = s3_server.root / BUCKET / "runs" / "tiny"
    uploaded = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert uploaded == ["step_4", "step_6"], uploaded  # nothing of the others, not even a part
    for name in uploaded:
        assert sorted(p.name for p in (folder / name).iterdir()) == [
            ".metadata", ".part.1.json", "__0_0.distcp", "__1_0.distcp", "manifest.json", "state.pt"]
