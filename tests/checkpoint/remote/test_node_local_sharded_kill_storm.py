"""Kill -9 storm against a two-node FSDP2 job (two torchrun launchers on 127.0.0.1, each its own
CHECKPOINT.LOCAL_DIR, copies off) that saves a sharded checkpoint every step asynchronously, committed
on both nodes in two phases, and uploads each node's part to the local rclone S3 server, the manifest
last. Each kill hits the whole job, or node b first, at a random moment of the saves and uploads.
After every kill: each file under a final name on either node matches its manifest; every manifest in
the bucket has every file it lists there, byte for byte; and the relaunch resumes exactly the newest
step the nodes hold whole between them, never one committed on one node only, and reads no shard
from the bucket. Node b renames its part
of each checkpoint 0.5-0.8 s after node a (tests/helpers/uneven_commit_train.py); every other kill lands
in that time, between the nodes' commits, and the test requires that some did."""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from pathlib import Path

from tests.conftest import REPO, wait_for_line
from tests.fixtures_rclone import BUCKET, REMOTE, RcloneServer, rclone_isolated, s3_server  # noqa: F401 (fixtures)
from tests.nodes import await_resume, kill_nodes, node_commands, start_nodes

KILLS = 3
# Node b renames its part of each checkpoint a random moment after node a: kills land between the commits.
UNEVEN = REPO / "tests" / "helpers" / "uneven_commit_train.py"
OPTS = ("TRAIN.STRATEGY", "fsdp", "CHECKPOINT.REPLICAS", "0", "CHECKPOINT.ASYNC", "True", "CHECKPOINT.INTERVAL", "1st",
        "CHECKPOINT.FILENAME", "step_{step}.pth", "CHECKPOINT.KEEP_LAST_N", "3", "TRAIN.EPOCHS", "100",
        "ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE, "ENV.OUTPUT.BUCKET.NAME", BUCKET,
        "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/")


def _files_match(directory: Path, manifest: dict, names: list[str]) -> None:
    for name in names:
        data = (directory / name).read_bytes()
        entry = manifest["files"][name]
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"], directory / name


def _held(directory: Path) -> dict[str, tuple[int, str, set[int]]]:
    """Each final-named sharded checkpoint on a node: (its step, its manifest's bytes, the ranks whose
    shards are here), every file present checked against the manifest."""
    out = {}
    for entry in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        raw = (entry / "manifest.json").read_bytes()  # a final name without a manifest would fail here
        manifest = json.loads(raw)
        present = [n for n in manifest["files"] if (entry / n).exists()]
        _files_match(entry, manifest, present)
        ranks = {manifest["files"][n]["rank"] for n in present if "rank" in manifest["files"][n]}
        out[entry.name] = (manifest["progress"]["step"], hashlib.sha256(raw).hexdigest(), ranks)
    return out


def _newest_whole(nodes: list[dict[str, tuple[int, str, set[int]]]]) -> int:
    whole = [held[name][0] for held in nodes for name in held
             if all(name in other and other[name][1] == held[name][1] for other in nodes)
             and set().union(*(other[name][2] for other in nodes)) == {0, 1}]
    return max(whole, default=-1)


def test_kill9_storm_never_resumes_a_step_not_committed_on_every_node(tmp_path: Path, toy_root: Path,
                                                                     s3_server: RcloneServer) -> None:
    rng = random.Random(2424)
    runs = [tmp_path / "node_a", tmp_path / "node_b"]
    local = [tmp_path / "disk_a", tmp_path / "disk_b"]
    node_opts = [("CHECKPOINT.LOCAL_DIR", str(d)) for d in local]
    folder = s3_server.root / BUCKET / "runs" / "tiny"
    newest, partial_seen = -1, 0
    for launch in range(KILLS + 1):
        logs = [tmp_path / f"launch{launch}-node{n}.log" for n in range(2)]
        procs = start_nodes(node_commands(runs, toy_root, *OPTS, node_opts=node_opts, script=UNEVEN), logs)
        try:
            await_resume(logs[0], procs, newest)
            if launch == KILLS:
                break
            wait_for_line(r"Uploaded checkpoint \S+/step_\d+ ", logs[0], procs, timeout=120)
            if launch % 2 == 0:  # while node b holds back its rename, node a's is done: between the commits
                seen = logs[1].read_text().count("held-back")
                while logs[1].read_text().count("held-back") == seen:
                    assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
                    time.sleep(0.01)
                time.sleep(rng.uniform(0.1, 0.4))
            else:  # anywhere in the saves and uploads
                time.sleep(rng.uniform(0, 1.0))
                if rng.random() < 0.5:  # node b first; node a then fails on its own, or is killed
                    kill_nodes(procs[1:])
                    time.sleep(rng.uniform(0, 0.3))
        finally:
            kill_nodes(procs)
        nodes = [_held(d) for d in local]
        newest = _newest_whole(nodes)
        assert newest > 0, f"no step whole on the nodes after kill {launch + 1}: {nodes}"
        partial_seen += sum(1 for held in nodes for name in held if held[name][0] > newest)
        for entry in (p for p in folder.iterdir() if p.is_dir()):  # the bucket: a manifest vouches for every file
            if (entry / "manifest.json").exists():
                manifest = json.loads((entry / "manifest.json").read_bytes())
                _files_match(entry, manifest, sorted(manifest["files"]))
    # The storm reached what it is about: a step committed on node a only, which no relaunch took.
    assert partial_seen > 0, "no kill landed between the nodes' commits"
    # Every relaunch resumed from the nodes' own parts: not one shard file was read from the bucket.
    shard_gets = re.findall(rf"GET OBJECT Bucket: {BUCKET} Object: runs/tiny/step_\d+/__\d+_\d+\.distcp$",
                            s3_server.log.read_text(errors="replace"), re.M)
    assert shard_gets == [], shard_gets[:5]
