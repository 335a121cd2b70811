"""CHECKPOINT.LOCAL_DIR on two "nodes" (torchrun launchers on 127.0.0.1, each its own directory, at
different paths) with CHECKPOINT.REPLICAS 1: every checkpoint rank 0 commits is copied, verified, to
the other node's directory right after its commit, and that node applies the same retention. A
relaunch after rank 0's node was replaced by one with an empty disk resumes from the copy (sent back
over the process group, no bucket in sight) and trains on as if never interrupted."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from linnaeus.checkpoint import verify_checkpoint

from tests.conftest import REPO, run_train
from tests.fixtures_rclone import BUCKET, REMOTE, RcloneServer, rclone_isolated, s3_server  # noqa: F401 (fixtures)
from tests.nodes import NODE_ENV, SHORT, assert_same_training, kill_node, launch_nodes, node_commands, reference_run

KEEP = ("CHECKPOINT.KEEP_LAST_N", "2")


def _held(directory: Path) -> dict[str, bytes]:
    """Every checkpoint file, sidecar and ``latest`` in ``directory``, by name; and no leftovers."""
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert not leftovers, leftovers
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if not p.name.startswith(".")}


def test_each_checkpoint_is_copied_to_the_next_node_and_a_replaced_node_resumes_from_the_copy(
        tmp_path: Path, toy_root: Path) -> None:
    runs = [tmp_path / "node_a", tmp_path / "node_b"]
    local = [tmp_path / "disk_a" / "ckpt", tmp_path / "scratch_b" / "tiny-ckpt"]
    node_opts = [("CHECKPOINT.LOCAL_DIR", str(d)) for d in local]

    first = launch_nodes(runs, toy_root, "TRAIN.EPOCHS", "3", *KEEP, node_opts=node_opts)
    assert [p.returncode for p in first] == [0, 0], first[0].stdout[-3000:] + first[1].stdout[-3000:]
    out = first[0].stdout
    assert f"copied after its commit to the checkpoint directories of rank 1 on {socket.gethostname()}" in out, \
        out[-3000:]
    assert "Copied checkpoint_epoch_3.pth (" in out
    # The same files, byte for byte, on both nodes: retention (keep 2) ran on each; latest names the newest.
    held = _held(local[0])
    assert sorted(held) == ["checkpoint_epoch_2.pth", "checkpoint_epoch_2.pth.sha256", "checkpoint_epoch_3.pth",
                            "checkpoint_epoch_3.pth.sha256", "latest"]
    assert _held(local[1]) == held
    assert not (runs[0] / "tiny" / "checkpoints").exists()  # LOCAL_DIR, not the run dir

    # Rank 0's node is replaced: a fresh machine with an empty disk. The copy on node b comes back.
    shutil.rmtree(local[0])
    relaunch = launch_nodes(runs, toy_root, "TRAIN.EPOCHS", "4", *KEEP, node_opts=node_opts)
    assert [p.returncode for p in relaunch] == [0, 0], relaunch[0].stdout[-3000:] + relaunch[1].stdout[-3000:]
    out = relaunch[0].stdout
    assert "Sent checkpoint_epoch_3.pth (step 9, " in out and "from rank 1 on" in out, out[-3000:]
    host = socket.gethostname()
    # Every rank says where it resumed from, and where its node's copy came from.
    assert f"Resumed from {local[0] / 'checkpoint_epoch_3.pth'} (epoch 3, step 9); this node's copy came from " \
           f"rank 1 on {host} over the process group" in out
    assert f"Resumed from {local[1] / 'checkpoint_epoch_3.pth'} (epoch 3, step 9); this node's own copy" in \
        relaunch[1].stdout
    assert "starting fresh" not in out
    assert_same_training(local[0] / "checkpoint_epoch_4.pth", reference_run(tmp_path, toy_root, 4))
    held = _held(local[0])
    assert sorted(held) == ["checkpoint_epoch_3.pth", "checkpoint_epoch_3.pth.sha256", "checkpoint_epoch_4.pth",
                            "checkpoint_epoch_4.pth.sha256", "latest"]
    assert _held(local[1]) == held

    # Fewer nodes: node b alone, one process, resumes from what it holds (its copies of rank 0's saves).
    alone = run_train(runs[1], toy_root, *SHORT, "TRAIN.EPOCHS", "5", "CHECKPOINT.LOCAL_DIR", str(local[1]))
    assert f"Resumed from {local[1] / 'checkpoint_epoch_4.pth'} (epoch 4, step 12)" in alone.stdout
    assert "world size: 2 (checkpoint) -> 1" in alone.stdout and (local[1] / "checkpoint_epoch_5.pth").is_file()


def test_the_bucket_is_read_only_when_no_node_holds_the_checkpoint(tmp_path: Path, toy_root: Path,
                                                                    s3_server: RcloneServer) -> None:
    """With the bucket behind the nodes: a relaunch with both disks intact, and one with rank 0's disk
    replaced, download nothing (the server counts its GETs); with both disks replaced, every node
    fetches the newest checkpoint from the bucket. Each relaunch trains on as if never interrupted."""
    runs = [tmp_path / "node_a", tmp_path / "node_b"]
    local = [tmp_path / "disk_a", tmp_path / "disk_b"]
    node_opts = [("CHECKPOINT.LOCAL_DIR", str(d)) for d in local]
    bucket = ("ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE, "ENV.OUTPUT.BUCKET.NAME",
              BUCKET, "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/")

    def launch(epochs: int) -> str:
        procs = launch_nodes(runs, toy_root, "TRAIN.EPOCHS", str(epochs), *bucket, node_opts=node_opts)
        assert [p.returncode for p in procs] == [0, 0], procs[0].stdout[-3000:] + procs[1].stdout[-3000:]
        return procs[0].stdout

    def gets(epoch: int) -> int:
        return s3_server.get_count(BUCKET, f"runs/tiny/checkpoint_epoch_{epoch}.pth")

    launch(1)
    assert (s3_server.root / BUCKET / "runs" / "tiny" / "checkpoint_epoch_1.pth").is_file()

    out = launch(2)  # both disks intact
    assert f"Resumed from {local[0] / 'checkpoint_epoch_1.pth'} (epoch 1, step 3)" in out and gets(1) == 0

    shutil.rmtree(local[0])  # rank 0's node replaced: the copy on node b comes back over the process group
    out = launch(3)
    assert "Sent checkpoint_epoch_2.pth (step 6, " in out, out[-3000:]
    assert f"Resumed from {local[0] / 'checkpoint_epoch_2.pth'} (epoch 2, step 6)" in out and gets(2) == 0

    for disk in local:  # both nodes replaced: only the bucket holds the run
        shutil.rmtree(disk)
    out = launch(4)
    assert f"Resumed from {local[0] / 'checkpoint_epoch_3.pth'} (epoch 3, step 9); this node fetched it from the " \
           "run's bucket folder" in out, out[-3000:]
    assert gets(3) == 2  # once per node, each into its own directory
    assert_same_training(local[0] / "checkpoint_epoch_4.pth", reference_run(tmp_path, toy_root, 4))
    assert (local[1] / "checkpoint_epoch_4.pth").read_bytes() == (local[0] / "checkpoint_epoch_4.pth").read_bytes()


def test_a_bucket_newer_than_every_node_is_fetched_rather_than_trained_again(tmp_path: Path, toy_root: Path,
                                                                              s3_server: RcloneServer) -> None:
    """Copies off (CHECKPOINT.REPLICAS 0): epoch 2 was saved on node b alone (rank 0 then) and uploaded;
    node b is replaced. Node a still holds epoch 1, and resuming from it would train epoch 2 again and
    then upload other bytes under its name: the relaunch fetches epoch 2 from the bucket instead."""
    runs = [tmp_path / "node_a", tmp_path / "node_b"]
    local = [tmp_path / "disk_a", tmp_path / "disk_b"]
    opts = ("CHECKPOINT.REPLICAS", "0", "ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE,
            "ENV.OUTPUT.BUCKET.NAME", BUCKET, "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/")

    def launch(order: list[int], epochs: int) -> str:
        procs = launch_nodes([runs[n] for n in order], toy_root, "TRAIN.EPOCHS", str(epochs), *opts,
                             node_opts=[("CHECKPOINT.LOCAL_DIR", str(local[n])) for n in order])
        assert [p.returncode for p in procs] == [0, 0], procs[0].stdout[-3000:] + procs[1].stdout[-3000:]
        return procs[0].stdout

    launch([0, 1], 1)  # rank 0 on node a
    launch([1, 0], 2)  # rank 0 on node b: epoch 1 sent to it, epoch 2 saved there alone
    assert sorted(p.name for p in local[0].glob("*.pth")) == ["checkpoint_epoch_1.pth"]
    shutil.rmtree(local[1])
    out = launch([0, 1], 3)
    assert "holds checkpoint_epoch_2.pth, newer than any node's newest checkpoint (step 3)" in out, out[-3000:]
    assert f"Resumed from {local[0] / 'checkpoint_epoch_2.pth'} (epoch 2, step 6); this node fetched it from the " \
           "run's bucket folder" in out
    assert_same_training(local[0] / "checkpoint_epoch_3.pth", reference_run(tmp_path, toy_root, 3))


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="a mount namespace (unshare, as root) gives node b a small tmpfs of its own")
def test_a_copy_that_fails_on_the_other_node_stops_the_run_on_every_rank(tmp_path: Path, toy_root: Path) -> None:
    """Node b's directory is a 1 MiB tmpfs: the first copy fits, the second does not. The run must not
    go on believing it has copies it lacks: it stops on every rank naming the node and the cause, and
    rank 0's checkpoints are intact."""
    runs = [tmp_path / "node_a", tmp_path / "node_b"]
    local = [tmp_path / "disk_a", tmp_path / "small_b"]
    local[1].mkdir()
    commands = node_commands(runs, toy_root, "TRAIN.EPOCHS", "3",
                             node_opts=[("CHECKPOINT.LOCAL_DIR", str(d)) for d in local])
    commands[1] = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'mount -t tmpfs -o size=1m tmpfs "{local[1]}" && exec "$0" "$@"', *commands[1]]
    logs = [tmp_path / f"node{n}.log" for n in range(2)]
    procs = []
    for command, log in zip(commands, logs):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(command, cwd=REPO, env={**os.environ, **NODE_ENV}, stdout=out,
                                          stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_node(p)
    outputs = [log.read_text() for log in logs]
    assert all(code != 0 for code in codes), outputs[0][-3000:]
    for out in outputs:  # every rank names the node, the cause and what to do
        assert "storing the copy of checkpoint_epoch_" in out and "No space left on device" in out, out[-3000:]
        assert "CHECKPOINT.REPLICAS 0" in out
    saved = sorted(p.name for p in local[0].glob("checkpoint_epoch_*.pth"))
    assert saved and all(verify_checkpoint(local[0] / name).ok for name in saved)
