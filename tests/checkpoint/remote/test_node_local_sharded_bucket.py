"""Sharded checkpoints on node-local directories with the run's bucket folder behind them: two torchrun
launchers on 127.0.0.1 stand in for two nodes (FSDP2, one rank each, each node its own directory),
the local rclone S3 server for the bucket. Each node uploads its own rank's shards and a confirmation;
rank 0 uploads the manifest, the remote commit marker, once the other node's part is confirmed. A
relaunch takes from the bucket only the files no node holds, each once, by the node whose rank saved
it (a node lost without a copy of its part, a shard lost on the other); the run ends as if never
interrupted. A fresh machine with one process then resumes the bucket's newest, resharded from two
ranks to one."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tests.checkpoint.store.test_node_local_dirs import _consolidated_equal
from tests.conftest import run_train
from tests.fixtures_rclone import BUCKET, REMOTE, RcloneServer, rclone_isolated, s3_server  # noqa: F401 (fixtures)
from tests.nodes import SHORT, launch_nodes, reference_checkpoints

FSDP = ("TRAIN.STRATEGY", "fsdp")
BUCKET_OPTS = ("ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE, "ENV.OUTPUT.BUCKET.NAME", BUCKET,
               "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/")


def test_each_node_uploads_its_part_and_a_relaunch_takes_what_no_node_holds_from_the_bucket(
        tmp_path: Path, toy_root: Path, s3_server: RcloneServer) -> None:
    runs = [tmp_path / "node_a", tmp_path / "node_b"]
    local = [tmp_path / "disk_a", tmp_path / "disk_b"]
    node_opts = [("CHECKPOINT.LOCAL_DIR", str(d)) for d in local]
    folder = s3_server.root / BUCKET / "runs" / "tiny"

    def launch(epochs: int, *opts: str) -> list[str]:
        procs = launch_nodes(runs, toy_root, "TRAIN.EPOCHS", str(epochs), *FSDP, *BUCKET_OPTS, *opts,
                             node_opts=node_opts)
        assert [p.returncode for p in procs] == [0, 0], procs[0].stdout[-3000:] + procs[1].stdout[-3000:]
        return [p.stdout for p in procs]

    def gets(epoch: int, name: str) -> int:
        return s3_server.get_count(BUCKET, f"runs/tiny/checkpoint_epoch_{epoch}/{name}")

    # Copies off: each node alone holds its rank's shards. Both parts and the one manifest reach the bucket.
    out = launch(2, "CHECKPOINT.REPLICAS", "0", "CHECKPOINT.ASYNC", "True")
    assert "Each node uploads its own ranks' shards of every sharded checkpoint" in out[0], out[0][-3000:]
    for epoch in (1, 2):
        remote = folder / f"checkpoint_epoch_{epoch}"
        for node, shard in ((0, "__0_0.distcp"), (1, "__1_0.distcp")):
            held = local[node] / f"checkpoint_epoch_{epoch}"
            assert (remote / shard).read_bytes() == (held / shard).read_bytes()
            assert (remote / "manifest.json").read_bytes() == (held / "manifest.json").read_bytes()
        confirmation = json.loads((remote / ".part.1.json").read_text())
        assert confirmation["files"] == {"__1_0.distcp": (remote / "__1_0.distcp").stat().st_size}
        # The manifest, the remote commit, went up last: after node b's shards and its confirmation.
        created = re.findall(rf"CREATE OBJECT: {BUCKET} runs/tiny/checkpoint_epoch_{epoch}/(\S+)$",
                             s3_server.log.read_text(errors="replace"), re.M)
        assert created[-1] == "manifest.json" and {"__1_0.distcp", ".part.1.json", "__0_0.distcp"} < set(created)
    assert (folder / "latest").read_text().strip() == "checkpoint_epoch_2"

    # Node b replaced, with no copy of its part anywhere but the bucket, and node a's shard of epoch 2 lost too:
    # each file no node holds is downloaded once, by the node whose rank saved it; node b gets the shared files.
    shutil.rmtree(local[1])
    (local[0] / "checkpoint_epoch_2" / "__0_0.distcp").unlink()
    out = launch(3, "CHECKPOINT.REPLICAS", "0")
    assert f"Resumed from {local[0] / 'checkpoint_epoch_2'} (epoch 2, step 6); 1 shard file(s) of this node's part " \
           "that no node held came from the run's bucket folder" in out[0], out[0][-3000:]
    assert f"Resumed from {local[1] / 'checkpoint_epoch_2'} (epoch 2, step 6); this node's part came from the " \
           "run's bucket folder (1 shard file(s) and the shared files)" in out[1], out[1][-3000:]
    assert gets(2, "__0_0.distcp") == 1 and gets(2, "__1_0.distcp") == 1 and gets(1, "__0_0.distcp") == 0

    reference = reference_checkpoints(tmp_path, toy_root, 3, *FSDP)
    _consolidated_equal([d / "checkpoint_epoch_3" for d in local], reference / "checkpoint_epoch_3",
                        tmp_path / "merged")

    # Both nodes gone, one fresh machine with one process: the bucket's newest, whole, resharded 2 -> 1.
    alone = run_train(tmp_path / "fresh", toy_root, *SHORT, *FSDP, *BUCKET_OPTS, "TRAIN.EPOCHS", "4")
    fresh = tmp_path / "fresh" / "tiny" / "checkpoints"
    assert f"Resumed from {fresh / 'checkpoint_epoch_3'} (epoch 3, step 9)" in alone.stdout, alone.stdout[-3000:]
    assert "world size: 2 (checkpoint) -> 1" in alone.stdout
