#!/usr/bin/env python
"""Under ``torchrun --nproc_per_node=2``: the format conformance suite's cases for sharded checkpoints
on node-local directories, each rank its own directory (``<root>/node<rank>``: no directory shared), a
FSDP2 model, through the library's API alone:

- ``save``: two saves; each node's directory lists both, committed, and verifies them (the files it
  holds); a resume on fresh objects restores the newest, equal on every rank to what was saved;
- ``retention``: keep 1 of three saves on every node, no leftovers; a save after the resume records
  the resumed checkpoint's identity as its parent;
- ``upload``: each node's part, then the manifest (rank 0, once node b's confirmation is there), to an
  rclone ``:local:`` folder; a second upload sends nothing; a fetch gives one directory with every
  rank's shards that verifies whole;
- ``damaged``: a byte of node b's shard of the newest flipped: verify on node b fails naming the file,
  and a resume on every rank falls back to the older checkpoint;
- ``delete``: the format's delete on every node leaves no leftover.

Prints ``rank R <case>: ok`` per rank and case.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, verify_checkpoint  # noqa: E402
from linnaeus.checkpoint.formats import format_named, upload_part  # noqa: E402
from linnaeus.checkpoint.remote import RemoteRun  # noqa: E402
from linnaeus.checkpoint.store import leftovers, list_checkpoints  # noqa: E402
from linnaeus.dist import barrier  # noqa: E402
from tests.helpers.group_session import run_in_session  # noqa: E402
from tests.helpers.rank_lines import say  # noqa: E402
from tests.helpers.sharded_two_ranks import full, objects, same, step  # noqa: E402

SHARDED = format_named("sharded")


def run(directory: Path, saves: int, **policy) -> tuple[list[Path], dict]:
    model, optimizer = objects(3)
    paths = []
    with CheckpointManager(directory, CheckpointPolicy(**policy), sharded=True) as manager:
        for epoch in range(1, saves + 1):
            step(model, optimizer)
            paths.append(manager.save(epoch=epoch, step=10 * epoch, model=model, optimizer=optimizer))
    return paths, full(model, optimizer)


def resumed(directory: Path):
    model, optimizer = objects(4)
    with CheckpointManager(directory, sharded=True) as manager:
        point = manager.resume(model=model, optimizer=optimizer)
    return point, full(model, optimizer)


def main(root: str) -> None:
    rank = dist.get_rank()
    base = Path(root)

    mine = base / "save" / f"node{rank}"
    paths, saved = run(mine, 2)
    infos = list_checkpoints(mine)
    assert [(i.name, i.step, i.committed, i.kind) for i in infos] == [
        ("checkpoint_epoch_1", 10, True, "full"), ("checkpoint_epoch_2", 20, True, "full")], infos
    assert all(verify_checkpoint(p).ok for p in paths)
    assert sorted(p.name for p in paths[1].glob("*.distcp")) == [f"__{rank}_0.distcp"]  # its own shards only
    point, restored = resumed(mine)
    assert point is not None and point.path == paths[1] and same(restored, saved)
    say(f"rank {rank} save: ok")

    mine = base / "retention" / f"node{rank}"
    paths, _ = run(mine, 3, keep_last_n=1)
    assert [i.name for i in list_checkpoints(mine)] == [paths[-1].name] and leftovers(mine) == []
    model, optimizer = objects(4)
    with CheckpointManager(mine, sharded=True) as manager:
        assert manager.resume(model=model, optimizer=optimizer).path == paths[-1]
        child = manager.save(epoch=4, step=40, model=model, optimizer=optimizer)
    assert SHARDED.read_info(child).parent_sha256 == SHARDED.identity(paths[-1])
    say(f"rank {rank} retention: ok")

    mine = base / "upload" / f"node{rank}"
    paths, saved = run(mine, 2)
    remote = RemoteRun(f":local:{base / 'bucket'}/")
    if rank == 1:
        assert upload_part(paths[1], remote, 1) is True
    barrier()
    if rank == 0:
        assert remote.list() == []  # the parts without the manifest: not committed remotely
        assert remote.upload(paths[1]) is True and remote.list() == [paths[1].name]
        assert remote.upload(paths[1]) is False
        fetched = remote.fetch(paths[1].name, base / "fetched")
        assert sorted(p.name for p in fetched.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert SHARDED.verify(fetched).ok and not (fetched / ".part.1.json").exists()
    barrier()
    say(f"rank {rank} upload: ok")

    mine = base / "damaged" / f"node{rank}"
    paths, _ = run(mine, 2)
    if rank == 1:
        shard = paths[1] / "__1_0.distcp"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
        result = verify_checkpoint(paths[1])
        assert not result.ok and "__1_0.distcp" in result.reason, result.reason
    barrier()
    point, _ = resumed(mine)
    assert point is not None and point.path == paths[0], point
    say(f"rank {rank} damaged: ok")

    mine = base / "delete" / f"node{rank}"
    paths, _ = run(mine, 2)
    SHARDED.delete(paths[0])
    assert [i.name for i in list_checkpoints(mine)] == [paths[1].name] and leftovers(mine) == []
    say(f"rank {rank} delete: ok")


if __name__ == "__main__":
    run_in_session(lambda: main(sys.argv[1]), Path(sys.argv[1]) / "alive")
