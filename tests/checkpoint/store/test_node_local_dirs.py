"""Two torchrun launchers on 127.0.0.1 stand in for two nodes, each with its own run dir and no
directory shared between them (the checkpoint directory of a multi-node run on node-local disks).
The run finds out and says so. Saves land where rank 0 is; before a resume the newest checkpoint any
node holds is sent to the others over the process group, verified, so a relaunch in which rank 0
lands on an empty disk resumes instead of silently starting over, and every rank reads its own
node's copy; the runs end bit-identical to an uninterrupted one. A sharded run, whose commit needs
one directory, refuses at the start."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY_CFG, VENV_BIN, run_train
from tests.fixtures_rclone import free_port

# A constant LR: relaunches that raise TRAIN.EPOCHS then train exactly as one run of the final length.
SHORT = ("TRAIN.MAX_STEPS_PER_EPOCH", "3", "TRAIN.SCHEDULER.NAME", "none")


def _nodes(base_dirs: list[Path], toy_root: Path, *opts: str, same_path: Path | None = None
           ) -> list[subprocess.CompletedProcess]:
    """One training job of len(base_dirs) nodes, one process each; node n (rank n, static rendezvous)
    keeps its run dir under base_dirs[n]. With ``same_path``, each node runs in its own mount namespace
    where base_dirs[n] is mounted at ``same_path``, the ENV.OUTPUT.BASE_DIR of every node: one path,
    a different disk on each node, as node-local disks are."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def command(n: int, base: Path) -> list[str]:
        out = same_path or base
        torchrun = [str(VENV_BIN / "torchrun"), f"--nnodes={len(base_dirs)}", f"--node-rank={n}",
                    "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
                    str(REPO / "tools" / "train.py"), "--cfg", str(TINY_CFG), "--opts", "ENV.OUTPUT.BASE_DIR",
                    str(out), "DATA.ROOT", str(toy_root), "ENV.INPUT.CACHE_DIR", str(out / "cache"), *SHORT, *opts]
        if same_path is None:
            return torchrun
        base.mkdir(parents=True, exist_ok=True)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'mount --bind "{base}" "{same_path}" && exec "$0" "$@"', *torchrun]

    procs = [subprocess.Popen(command(n, base), cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for n, base in enumerate(base_dirs)]
    try:
        return [subprocess.CompletedProcess(p.args, p.wait(timeout=240), p.communicate()[0], "") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _checkpoints(base: Path) -> list[str]:
    folder = base / "tiny" / "checkpoints"
    return sorted(p.name for p in folder.glob("checkpoint_*.pth")) if folder.is_dir() else []


def test_node_local_directories_are_found_and_a_relaunch_never_resumes_less_than_a_node_holds(
        tmp_path: Path, toy_root: Path) -> None:
    a, b = tmp_path / "node_a", tmp_path / "node_b"
    host = socket.gethostname()

    # 1. Node a is rank 0: it saves; the run says the directory is node-local.
    first = _nodes([a, b], toy_root, "TRAIN.EPOCHS", "1")
    assert [p.returncode for p in first] == [0, 0], first[0].stdout[-3000:] + first[1].stdout[-3000:]
    said = f"is node-local: ranks 0 on {host} see {a / 'tiny' / 'checkpoints'}; ranks 1 on {host} see " \
           f"{b / 'tiny' / 'checkpoints'}"
    assert said in first[0].stdout and said in (a / "tiny" / "log.txt").read_text()
    assert _checkpoints(a) == ["checkpoint_epoch_1.pth"] and _checkpoints(b) == []

    # 2. The relaunch puts rank 0 on node b, whose directory is empty: node a's checkpoint is sent to it over
    # the process group, verified, and the run resumes from it instead of starting over.
    swapped = _nodes([b, a], toy_root, "TRAIN.EPOCHS", "2")
    assert [p.returncode for p in swapped] == [0, 0], swapped[0].stdout[-3000:] + swapped[1].stdout[-3000:]
    out = swapped[0].stdout
    assert "Sent checkpoint_epoch_1.pth (step 3, " in out and f"from rank 1 on {host} to the directories of rank(s) 0" \
        in out, out[-3000:]
    assert f"Resumed from {b / 'tiny' / 'checkpoints' / 'checkpoint_epoch_1.pth'} (epoch 1, step 3)" in out
    assert "starting fresh" not in out
    sent = [d / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth" for d in (a, b)]
    assert sent[0].read_bytes() == sent[1].read_bytes()
    assert Path(f"{sent[0]}.sha256").read_bytes() == Path(f"{sent[1]}.sha256").read_bytes()

    # 3. Node a as rank 0 again, its newest is behind node b's now: b's epoch 2 comes over; no probe file
    # stays behind, not even one of a launch killed between writing and removing it.
    (a / "tiny" / "checkpoints" / ".sharing-0123456789abcdef-0").write_bytes(b"")
    again = _nodes([a, b], toy_root, "TRAIN.EPOCHS", "3")
    assert [p.returncode for p in again] == [0, 0], again[0].stdout[-3000:]
    assert f"Resumed from {a / 'tiny' / 'checkpoints' / 'checkpoint_epoch_2.pth'} (epoch 2, step 6)" in again[0].stdout
    assert not [p for d in (a, b) for p in (d / "tiny" / "checkpoints").glob(".sharing-*")]
    _assert_same_training(a / "tiny" / "checkpoints" / "checkpoint_epoch_3.pth", _reference(tmp_path, toy_root, 3))


def _reference(tmp_path: Path, toy_root: Path, epochs: int) -> Path:
    """The final checkpoint of the same run uninterrupted, 2 ranks on one machine."""
    run_train(tmp_path / "reference", toy_root, *SHORT, "TRAIN.EPOCHS", str(epochs), nproc=2)
    return tmp_path / "reference" / "tiny" / "checkpoints" / f"checkpoint_epoch_{epochs}.pth"


def _assert_same_training(path: Path, reference: Path) -> None:
    mine, theirs = (torch.load(p, weights_only=True) for p in (path, reference))
    assert mine["progress"] == theirs["progress"]
    for part in ("model", "optimizer"):
        flat, ref = _tensors(mine[part]), _tensors(theirs[part])
        assert flat.keys() == ref.keys()
        for k in ref:
            assert torch.equal(flat[k], ref[k]), (part, k)


def _tensors(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _tensors(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _tensors(sub, f"{prefix}/{i}").items()}
    return {}


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="mount namespaces (unshare, as root) stand in for node-local disks at one path")
def test_one_path_on_node_local_disks_the_relaunch_resumes_from_what_rank_0_saved_sent_to_the_others(
        tmp_path: Path, toy_root: Path) -> None:
    """The usual multi-node form: every node's launch names the same path, each node's own disk. Saves
    land on rank 0's node only; the relaunch sends the checkpoint to the other node before any rank
    reads it, and ends as if never interrupted."""
    disks, path = [tmp_path / "disk_a", tmp_path / "disk_b"], tmp_path / "scratch"
    path.mkdir()
    first = _nodes(disks, toy_root, "TRAIN.EPOCHS", "1", same_path=path)
    assert [p.returncode for p in first] == [0, 0], first[0].stdout[-3000:] + first[1].stdout[-3000:]
    assert _checkpoints(disks[0]) == ["checkpoint_epoch_1.pth"] and _checkpoints(disks[1]) == []
    assert not path.joinpath("tiny").exists()  # nothing landed on the shared path itself
    relaunch = _nodes(disks, toy_root, "TRAIN.EPOCHS", "2", same_path=path)
    assert [p.returncode for p in relaunch] == [0, 0], relaunch[0].stdout[-3000:] + relaunch[1].stdout[-3000:]
    assert "to the directories of rank(s) 1 over the process group" in relaunch[0].stdout
    assert f"Resumed from {path / 'tiny' / 'checkpoints' / 'checkpoint_epoch_1.pth'} (epoch 1, step 3)" in \
        relaunch[0].stdout
    # Rank 1 could read that path only on its own disk, where the copy now is (without it: an error on every rank).
    assert _checkpoints(disks[1]) == ["checkpoint_epoch_1.pth"]
    _assert_same_training(disks[0] / "tiny" / "checkpoints" / "checkpoint_epoch_2.pth",
                          _reference(tmp_path, toy_root, 2))


def test_sharded_checkpoints_on_node_local_directories_are_refused_at_the_start(tmp_path: Path,
                                                                             toy_root: Path) -> None:
    dirs = [tmp_path / "node_a", tmp_path / "node_b"]
    procs = _nodes(dirs, toy_root, "TRAIN.EPOCHS", "1", "TRAIN.STRATEGY", "fsdp")
    for proc in procs:
        assert proc.returncode != 0, proc.stdout[-3000:]
        assert "sharded checkpoints need one directory that every rank sees" in proc.stdout, proc.stdout[-3000:]
        assert "epoch 0 step 1" not in proc.stdout  # refused before the first step
    assert not [p for d in dirs for p in (d / "tiny" / "checkpoints").glob("*checkpoint_*")]  # no entry, no temp
