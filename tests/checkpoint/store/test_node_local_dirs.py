"""Two torchrun launchers on 127.0.0.1 stand in for two nodes, each with its own run dir and no
directory shared between them (the checkpoint directory of a multi-node run on node-local disks).
The run finds out and says so; a relaunch in which rank 0 lands on the node whose directory holds
less (an empty disk) refuses on every rank instead of silently starting over; a sharded run, whose
commit needs one directory, refuses at the start."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import torch

from tests.conftest import REPO, TINY_CFG, VENV_BIN
from tests.fixtures_rclone import free_port

SHORT = ("TRAIN.MAX_STEPS_PER_EPOCH", "3")


def _nodes(base_dirs: list[Path], toy_root: Path, *opts: str) -> list[subprocess.CompletedProcess]:
    """One training job of len(base_dirs) nodes, one process each; node n (rank n, static rendezvous)
    keeps its run dir under base_dirs[n]."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(
        [str(VENV_BIN / "torchrun"), f"--nnodes={len(base_dirs)}", f"--node-rank={n}", "--nproc-per-node=1",
         "--master-addr=127.0.0.1", f"--master-port={port}", str(REPO / "tools" / "train.py"),
         "--cfg", str(TINY_CFG), "--opts", "ENV.OUTPUT.BASE_DIR", str(base), "DATA.ROOT", str(toy_root),
         "ENV.INPUT.CACHE_DIR", str(base / "cache"), *SHORT, *opts],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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

    # 2. The relaunch puts rank 0 on node b, whose directory is empty: every rank stops, naming node a's checkpoint.
    swapped = _nodes([b, a], toy_root, "TRAIN.EPOCHS", "2")
    for proc in swapped:
        assert proc.returncode != 0, proc.stdout[-3000:]
        assert (f"rank 1 on {host} sees {a / 'tiny' / 'checkpoints' / 'checkpoint_epoch_1.pth'} (step 3), more "
                f"progress than what rank 0 on {host} resumes from in its own {b / 'tiny' / 'checkpoints'}: "
                "nothing: it would start fresh") in proc.stdout, proc.stdout[-3000:]
    assert "starting fresh" not in swapped[0].stdout and _checkpoints(b) == []

    # 3. With node a as rank 0 again, the run continues where it was; no probe file stays behind, not even
    # one of a launch killed between writing and removing it.
    (a / "tiny" / "checkpoints" / ".sharing-0123456789abcdef-0").write_bytes(b"")
    again = _nodes([a, b], toy_root, "TRAIN.EPOCHS", "2")
    assert [p.returncode for p in again] == [0, 0], again[0].stdout[-3000:]
    assert f"Resumed from {a / 'tiny' / 'checkpoints' / 'checkpoint_epoch_1.pth'} (epoch 1, step 3)" in again[0].stdout
    state = torch.load(a / "tiny" / "checkpoints" / "checkpoint_epoch_2.pth", weights_only=True)
    assert state["progress"]["step"] == 6
    assert not [p for d in (a, b) for p in (d / "tiny" / "checkpoints").glob(".sharing-*")]


def test_sharded_checkpoints_on_node_local_directories_are_refused_at_the_start(tmp_path: Path,
                                                                             toy_root: Path) -> None:
    dirs = [tmp_path / "node_a", tmp_path / "node_b"]
    procs = _nodes(dirs, toy_root, "TRAIN.EPOCHS", "1", "TRAIN.STRATEGY", "fsdp")
    for proc in procs:
        assert proc.returncode != 0, proc.stdout[-3000:]
        assert "sharded checkpoints need one directory that every rank sees" in proc.stdout, proc.stdout[-3000:]
        assert "epoch 0 step 1" not in proc.stdout  # refused before the first step
    assert not [p for d in dirs for p in (d / "tiny" / "checkpoints").glob("*checkpoint_*")]  # no entry, no temp
