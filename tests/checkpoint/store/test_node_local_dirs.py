"""Two torchrun launchers on 127.0.0.1 stand in for two nodes, each with its own run dir and no
directory shared between them (the checkpoint directory of a multi-node run on node-local disks).
The run finds out and says so. Saves land where rank 0 is, and (CHECKPOINT.REPLICAS) are copied to
the other node right after their commit; before a resume the newest checkpoint any node holds is
sent to the others over the process group, verified, so a relaunch in which rank 0 lands on an
empty disk resumes instead of silently starting over, and every rank reads its own node's copy; the
runs end bit-identical to an uninterrupted one. Sharded checkpoints keep each node's ranks' shards
on that node, committed on every node in two phases."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch

from tests.conftest import run_train
from tests.nodes import SHORT, assert_same_training, launch_nodes, reference_checkpoints, reference_run
# Without copies after each commit: a node holds only what rank 0 saved there, or what a resume sent.
NO_REPLICAS = ("CHECKPOINT.REPLICAS", "0")


def _checkpoints(base: Path) -> list[str]:
    folder = base / "tiny" / "checkpoints"
    return sorted(p.name for p in folder.glob("checkpoint_*.pth")) if folder.is_dir() else []


def test_node_local_directories_are_found_and_a_relaunch_never_resumes_less_than_a_node_holds(
        tmp_path: Path, toy_root: Path) -> None:
    a, b = tmp_path / "node_a", tmp_path / "node_b"
    host = socket.gethostname()

    # 1. Node a is rank 0: it saves; the run says the directory is node-local.
    first = launch_nodes([a, b], toy_root, "TRAIN.EPOCHS", "1", *NO_REPLICAS)
    assert [p.returncode for p in first] == [0, 0], first[0].stdout[-3000:] + first[1].stdout[-3000:]
    assert "CHECKPOINT.REPLICAS is 0: checkpoints live only on rank 0's node" in first[0].stdout
    said = f"is node-local: ranks 0 on {host} see {a / 'tiny' / 'checkpoints'}; ranks 1 on {host} see " \
           f"{b / 'tiny' / 'checkpoints'}"
    assert said in first[0].stdout and said in (a / "tiny" / "log.txt").read_text()
    assert _checkpoints(a) == ["checkpoint_epoch_1.pth"] and _checkpoints(b) == []

    # 2. The relaunch puts rank 0 on node b, whose directory is empty: node a's checkpoint is sent to it over
    # the process group, verified, and the run resumes from it instead of starting over.
    swapped = launch_nodes([b, a], toy_root, "TRAIN.EPOCHS", "2", *NO_REPLICAS)
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
    again = launch_nodes([a, b], toy_root, "TRAIN.EPOCHS", "3", *NO_REPLICAS)
    assert [p.returncode for p in again] == [0, 0], again[0].stdout[-3000:]
    assert f"Resumed from {a / 'tiny' / 'checkpoints' / 'checkpoint_epoch_2.pth'} (epoch 2, step 6)" in again[0].stdout
    assert not [p for d in (a, b) for p in (d / "tiny" / "checkpoints").glob(".sharing-*")]
    assert_same_training(a / "tiny" / "checkpoints" / "checkpoint_epoch_3.pth", reference_run(tmp_path, toy_root, 3))


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="mount namespaces (unshare, as root) stand in for node-local disks at one path")
def test_one_path_on_node_local_disks_the_relaunch_resumes_from_what_rank_0_saved_sent_to_the_others(
        tmp_path: Path, toy_root: Path) -> None:
    """The usual multi-node form: every node's launch names the same path, each node's own disk. Saves
    land on rank 0's node only; the relaunch sends the checkpoint to the other node before any rank
    reads it, and ends as if never interrupted."""
    disks, path = [tmp_path / "disk_a", tmp_path / "disk_b"], tmp_path / "scratch"
    path.mkdir()
    first = launch_nodes(disks, toy_root, "TRAIN.EPOCHS", "1", *NO_REPLICAS, same_path=path)
    assert [p.returncode for p in first] == [0, 0], first[0].stdout[-3000:] + first[1].stdout[-3000:]
    assert _checkpoints(disks[0]) == ["checkpoint_epoch_1.pth"] and _checkpoints(disks[1]) == []
    assert not path.joinpath("tiny").exists()  # nothing landed on the shared path itself
    relaunch = launch_nodes(disks, toy_root, "TRAIN.EPOCHS", "2", *NO_REPLICAS, same_path=path)
    assert [p.returncode for p in relaunch] == [0, 0], relaunch[0].stdout[-3000:] + relaunch[1].stdout[-3000:]
    assert "to the directories of rank(s) 1 over the process group" in relaunch[0].stdout
    assert f"Resumed from {path / 'tiny' / 'checkpoints' / 'checkpoint_epoch_1.pth'} (epoch 1, step 3)" in \
        relaunch[0].stdout
    # Rank 1 could read that path only on its own disk, where the copy now is (without it: an error on every rank).
    assert _checkpoints(disks[1]) == ["checkpoint_epoch_1.pth"]
    assert_same_training(disks[0] / "tiny" / "checkpoints" / "checkpoint_epoch_2.pth",
                          reference_run(tmp_path, toy_root, 2))


def _merged(parts: list[Path], into: Path) -> Path:
    """One directory holding every node's part of a sharded checkpoint (to consolidate it whole)."""
    shutil.copytree(parts[0], into)
    for part in parts[1:]:
        for shard in part.glob("*.distcp"):
            shutil.copy2(shard, into / shard.name)
    return into


def _shows_node_parts(directory: Path, capsys: pytest.CaptureFixture[str], *, here: str,
                      inspect: dict[str, str]) -> None:
    """`linnaeus-ckpt ls`, `verify` and `inspect` on one node's directory say which nodes' parts it holds."""
    from linnaeus.cli.ckpt import main

    capsys.readouterr()
    assert main(["ls", str(directory)]) == 0
    listed = capsys.readouterr().out
    assert "node parts here" in listed.splitlines()[1] and here in listed, listed
    assert main(["verify", str(directory)]) == 0
    verified = capsys.readouterr().out
    away = [r for r, held in inspect.items() if held != "all"]
    assert ("on other nodes and were not checked here" in verified) == bool(away), verified
    assert main(["inspect", "--json", str(directory / "checkpoint_epoch_2")]) == 0
    assert json.loads(capsys.readouterr().out)["node_parts"] == inspect


def test_sharded_checkpoints_commit_on_every_node_and_resume_the_newest_every_node_holds(
        tmp_path: Path, toy_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """FSDP2 on two nodes, each its own directory: every node's directory holds its own rank's shards
    and the one manifest (async saves, then synchronous ones). A save committed on node a only (node b's rename never happened) is passed
    over; the relaunch, with rank 0 moved to node b, reads the shards it lacks from node a as the load
    plan needs them and ends bit-identical to an uninterrupted run. A node whose directory was emptied
    stops the relaunch on every rank, naming what each node holds; one that lost a newer part falls back
    to an older checkpoint the nodes hold whole."""
    from linnaeus.checkpoint.disk import is_temp_name, temp_name

    a, b = tmp_path / "node_a", tmp_path / "node_b"
    fsdp = ("TRAIN.STRATEGY", "fsdp", *NO_REPLICAS)  # each node holds its own ranks' shards only
    first = launch_nodes([a, b], toy_root, "TRAIN.EPOCHS", "2", *fsdp, "CHECKPOINT.ASYNC", "True")  # async commits
    assert [p.returncode for p in first] == [0, 0], first[0].stdout[-3000:] + first[1].stdout[-3000:]
    assert "Each node's directory holds its own ranks' shards" in first[0].stdout
    parts = [d / "tiny" / "checkpoints" / "checkpoint_epoch_2" for d in (a, b)]
    assert [sorted(p.name for p in part.glob("*.distcp")) for part in parts] == [["__0_0.distcp"], ["__1_0.distcp"]]
    assert (parts[0] / "manifest.json").read_bytes() == (parts[1] / "manifest.json").read_bytes()
    assert json.loads((parts[0] / "manifest.json").read_text())["parts"] == [[0], [1]]
    _shows_node_parts(a / "tiny" / "checkpoints", capsys, here="1/2 (ranks 0)", inspect={"ranks 0": "all",
                                                                                          "ranks 1": "none"})

    # Node a replaced now (a copy of node b beside an empty node a): no checkpoint is whole on the nodes.
    shutil.copytree(b, tmp_path / "b_copy")
    lost = launch_nodes([tmp_path / "empty_a", tmp_path / "b_copy"], toy_root, "TRAIN.EPOCHS", "3", *fsdp)
    for proc in lost:
        assert proc.returncode != 0, proc.stdout[-3000:]
        assert "no sharded checkpoint of this run is whole on the nodes" in proc.stdout, proc.stdout[-3000:]
        assert "epoch 2 step 7" not in proc.stdout  # refused before the first step

    # Killed between the two phases: node b's part of epoch 2 was never renamed into place (its temp
    # directory, named for the dead writer, is left); node a also holds a temp directory of a killed save.
    parts[1].rename(parts[1].with_name(temp_name("checkpoint_epoch_2")))
    shutil.copytree(parts[0], parts[0].with_name(temp_name("checkpoint_epoch_3")))
    swapped = launch_nodes([b, a], toy_root, "TRAIN.EPOCHS", "3", *fsdp)
    assert [p.returncode for p in swapped] == [0, 0], swapped[0].stdout[-3000:] + swapped[1].stdout[-3000:]
    out = swapped[0].stdout
    assert "Passing over checkpoint_epoch_2: not whole on the nodes" in out, out[-3000:]
    assert f"Resumed from {b / 'tiny' / 'checkpoints' / 'checkpoint_epoch_1'} (epoch 1, step 3); this node's part" in out
    # Rank 0 now runs on node b, which held rank 1's shards: rank 0's come from node a as the load reads them.
    sent = re.search(r"Sending \d+ shard file\(s\) of checkpoint_epoch_1 .* the load plans read (.*)", out)
    assert sent is not None and "__0_0.distcp" in sent.group(1).split(", "), out[-3000:]
    for node in (a, b):  # each node's lowest rank removed what killed saves left in its directory
        assert not [p.name for p in (node / "tiny" / "checkpoints").iterdir() if is_temp_name(p.name)]

    reference = reference_checkpoints(tmp_path, toy_root, 3, "TRAIN.STRATEGY", "fsdp")
    _consolidated_equal([d / "tiny" / "checkpoints" / "checkpoint_epoch_3" for d in (b, a)],
                        reference / "checkpoint_epoch_3", tmp_path / "merged")

    # Node a replaced after that: epoch 3's rank-1 shards are gone, but node b holds epoch 1 whole (the
    # shards its load read then came over): the relaunch falls back to it, and says so.
    shutil.rmtree(a / "tiny" / "checkpoints")
    back = launch_nodes([a, b], toy_root, "TRAIN.EPOCHS", "2", *fsdp)
    assert [p.returncode for p in back] == [0, 0], back[0].stdout[-3000:] + back[1].stdout[-3000:]
    assert "Passing over checkpoint_epoch_2, checkpoint_epoch_3: not whole on the nodes" in back[0].stdout, \
        back[0].stdout[-3000:]
    assert f"Resumed from {a / 'tiny' / 'checkpoints' / 'checkpoint_epoch_1'} (epoch 1, step 3)" in back[0].stdout
    # Node b's part of epoch 3, which no relaunch can take, is removed as the leftover it is (the run, told to end
    # at epoch 2, never saves epoch 3 again), so neither retention nor `latest` counts it.
    assert "Removed checkpoint_epoch_2, checkpoint_epoch_3 from this node's" in back[1].stdout, back[1].stdout[-3000:]
    assert not (b / "tiny" / "checkpoints" / "checkpoint_epoch_3").exists()
    assert (b / "tiny" / "checkpoints" / "latest").read_text().strip() == "checkpoint_epoch_2"


def _consolidated_equal(parts: list[Path], reference: Path, merged: Path) -> None:
    from linnaeus.checkpoint.formats import consolidate

    (model, rest), (ref_model, ref_rest) = consolidate(_merged(parts, merged)), consolidate(reference)
    assert rest["progress"] == ref_rest["progress"] and model.keys() == ref_model.keys()
    for k in ref_model:
        assert torch.equal(model[k], ref_model[k]), k


def test_each_nodes_sharded_part_is_copied_to_the_next_node_and_a_replaced_node_resumes_from_it(
        tmp_path: Path, toy_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CHECKPOINT.REPLICAS 1 (the default): each node's shards are copied to the other node after every
    commit. Node a's directory emptied (a replaced node): the relaunch gives it the checkpoint's directory
    and the shards it reads from node b, with no bucket, and ends bit-identical to an uninterrupted run;
    then node b alone (one process) resumes from what it holds, resharded from 2 ranks to 1."""
    a, b = tmp_path / "node_a", tmp_path / "node_b"
    fsdp = ("TRAIN.STRATEGY", "fsdp")
    first = launch_nodes([a, b], toy_root, "TRAIN.EPOCHS", "2", *fsdp, "CHECKPOINT.ASYNC", "True")
    assert [p.returncode for p in first] == [0, 0], first[0].stdout[-3000:] + first[1].stdout[-3000:]
    assert "copied after its commit to the next 1 node(s)" in first[0].stdout
    for node in (a, b):  # every rank's shards on both nodes
        part = node / "tiny" / "checkpoints" / "checkpoint_epoch_2"
        assert sorted(p.name for p in part.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    _shows_node_parts(b / "tiny" / "checkpoints", capsys, here="2/2 (ranks 0,1)",
                      inspect={"ranks 0": "all", "ranks 1": "all"})

    shutil.rmtree(a / "tiny" / "checkpoints")
    relaunch = launch_nodes([a, b], toy_root, "TRAIN.EPOCHS", "3", *fsdp)
    assert [p.returncode for p in relaunch] == [0, 0], relaunch[0].stdout[-3000:] + relaunch[1].stdout[-3000:]
    out = relaunch[0].stdout
    assert "Gave the directory of checkpoint_epoch_2 (its manifest, .metadata and state.pt) from rank 1 to rank(s) 0" \
        in out, out[-3000:]
    assert f"Resumed from {a / 'tiny' / 'checkpoints' / 'checkpoint_epoch_2'} (epoch 2, step 6)" in out
    reference = reference_checkpoints(tmp_path, toy_root, 3, "TRAIN.STRATEGY", "fsdp")
    _consolidated_equal([d / "tiny" / "checkpoints" / "checkpoint_epoch_3" for d in (a, b)],
                        reference / "checkpoint_epoch_3", tmp_path / "merged")

    alone = run_train(b, toy_root, *SHORT, *fsdp, "TRAIN.EPOCHS", "4")
    assert f"Resumed from {b / 'tiny' / 'checkpoints' / 'checkpoint_epoch_3'} (epoch 3, step 9)" in alone.stdout
    assert "world size: 2 (checkpoint) -> 1" in alone.stdout



def test_three_nodes_keep_each_part_on_the_next_node_and_a_replaced_node_gets_its_part_from_there(
        tmp_path: Path, toy_root: Path) -> None:
    """Three launchers as three nodes, CHECKPOINT.REPLICAS 1: each node's part goes to the next node in
    the ring only (sent point to point), so each directory holds two of the three parts. Node b's
    directory emptied: its rank's shards come back from node c, the one node that holds them besides
    it (bit-identity after such a transfer: the two-node tests)."""
    nodes = [tmp_path / f"node_{n}" for n in "abc"]
    fsdp = ("TRAIN.STRATEGY", "fsdp")
    first = launch_nodes(nodes, toy_root, "TRAIN.EPOCHS", "1", *fsdp)
    assert [p.returncode for p in first] == [0, 0, 0], first[0].stdout[-3000:] + first[1].stdout[-3000:]
    held = [sorted(p.name for p in (n / "tiny" / "checkpoints" / "checkpoint_epoch_1").glob("*.distcp"))
            for n in nodes]
    assert held == [["__0_0.distcp", "__2_0.distcp"], ["__0_0.distcp", "__1_0.distcp"],
                    ["__1_0.distcp", "__2_0.distcp"]], held

    shutil.rmtree(nodes[1] / "tiny" / "checkpoints")
    again = launch_nodes(nodes, toy_root, "TRAIN.EPOCHS", "2", *fsdp)
    assert [p.returncode for p in again] == [0, 0, 0], again[0].stdout[-3000:] + again[1].stdout[-3000:]
    assert f"Resumed from {nodes[1] / 'tiny' / 'checkpoints' / 'checkpoint_epoch_1'} (epoch 1, step 3)" in \
        again[1].stdout, again[1].stdout[-3000:]
    sent = re.search(r"Sending \d+ shard file\(s\) of checkpoint_epoch_1 .* the load plans read (.*)", again[0].stdout)
    assert sent is not None and "__1_0.distcp" in sent.group(1).split(", "), again[0].stdout[-3000:]
