"""Sharded checkpoints on node-local directories: recovery from each tier, and what the copies cost.

    python benchmarks/node_local_sharded.py [--size-mb 256] [--rounds 3]

Two processes under torchrun stand in for two nodes, each its own checkpoint directory, with a FSDP2
model of ``--size-mb`` MB of float32 parameters (each rank holds half), the run's bucket a local
``rclone serve s3``.

(a) Relaunch to restored weights (``find_resume_point`` and the restore, where the shards are read
    and, on node-local directories, exchanged), rotating the order within each round:
    - "shared directory": today's layout, one directory both ranks see (the baseline);
    - "own parts": each node's directory holds its own rank's shards;
    - "partner's copy": rank 0's directory emptied (a replaced node); the other node, which holds
      both parts (``CHECKPOINT.REPLICAS`` 1), gives it the checkpoint's directory and rank 0's shards;
    - "bucket": both directories emptied; each node downloads the shared files and its rank's shards.
    Target: the bucket >= 5x the partner's copy. The same rounds time the floor of the two paths,
    their bare operations alone: rank 1 reading rank 0's files of the checkpoint and sending them,
    rank 0 writing and fsyncing them ("bare transfer"), and each node's one ``rclone copy`` of the
    files it downloads in the bucket case, with an fsync ("bare bucket copy").
(b) What the copies cost the training loop: async saves alternating with and without the copies
    (the policy's ``node_copies`` 1 and 0), the time ``save()`` blocks. Target: <= 1.02x. Also the
    bytes sent between nodes per save.

Run it alone on a quiet machine; the load average is printed with the figures.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from results import record  # noqa: E402

CASES = ("shared directory", "own parts", "partner's copy", "bucket", "bare transfer", "bare bucket copy")


def _model(size_mb: int):  # noqa: ANN202 - torch imported lazily: the parent process needs none of it
    import torch
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    width = 1024
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width, bias=False)
                            for _ in range(max(1, size_mb * 2**20 // (4 * width * width)))])
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    return model


def _reset(directory: Path, source: Path | None) -> None:
    """``directory`` holding what ``source`` holds (nothing when None), its writer lock kept."""
    directory.mkdir(parents=True, exist_ok=True)
    for item in directory.iterdir():
        if item.name != ".lock":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    if source is not None:
        for item in source.iterdir():
            if item.name != ".lock":
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, directory / item.name)


def worker(root: Path, size_mb: int, rounds: int) -> None:
    import torch

    from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy
    from linnaeus.checkpoint.formats import read_manifest, upload_part
    from linnaeus.checkpoint.remote import RemoteRun
    from linnaeus.checkpoint.resume import find_resume_point
    from linnaeus.dist import barrier, get_rank, init_distributed
    from node_local import bare_copy, bare_transfer

    torch.set_num_threads(1)
    init_distributed()
    rank = get_rank()
    own, shared = root / f"node{rank}", root / "shared"
    model = _model(size_mb)
    remote = RemoteRun.in_bucket({"ENABLED": True, "REMOTE": "bench", "NAME": "bkt", "PATH_PREFIX": "runs/"}, "bench")

    # (b) async saves with and without the copies of each node's part on the other node.
    blocked: dict[str, list[float]] = {"on": [], "off": []}
    for case in (0, 1):  # untimed: the first save into the directory probes who sees it (a collective)
        with CheckpointManager(own, CheckpointPolicy(keep_last_n=1, async_save=True, node_copies=case),
                               sharded=True) as manager:
            manager.save(epoch=0, step=0, model=model, filename=f"warm_{case}.pth")
    for r in range(rounds):
        for case in (("on", "off") if r % 2 == 0 else ("off", "on")):
            policy = CheckpointPolicy(keep_last_n=1, async_save=True, node_copies=1 if case == "on" else 0)
            with CheckpointManager(own, policy, sharded=True) as manager:
                barrier()
                t0 = time.perf_counter()
                manager.save(epoch=r, step=r, model=model, filename=f"cost_{case}_{r}.pth")
                blocked[case].append(time.perf_counter() - t0)
            barrier()

    # (a) one checkpoint in every tier: a shared directory, each node's own (with the other's part), the bucket.
    with CheckpointManager(shared, CheckpointPolicy(), sharded=True) as manager:
        manager.save(epoch=1, step=100, model=model, filename="checkpoint_epoch_1.pth")
    _reset(own, None)
    with CheckpointManager(own, CheckpointPolicy(node_copies=1), sharded=True) as manager:
        saved = manager.save(epoch=1, step=100, model=model, filename="checkpoint_epoch_1.pth")
    manifest, _ = read_manifest(saved)
    part = sum(e["size"] for e in manifest["files"].values() if e.get("rank") == rank)
    if rank == 1:
        upload_part(saved, remote, 1)
    barrier()
    if rank == 0:
        remote.upload(saved)
    shutil.copytree(own, root / f"kept{rank}", ignore=shutil.ignore_patterns(".lock"))
    barrier()
    seconds: dict[str, list[float]] = {case: [] for case in CASES}
    # What rank 0's node lacks in the partner's case, and what each node downloads in the bucket case.
    mine = [n for n, e in manifest["files"].items() if e.get("rank") in (None, rank)] + ["manifest.json"]
    lacked = [n for n, e in manifest["files"].items() if e.get("rank") in (None, 0)] + ["manifest.json"]
    bare = own / "bare"
    for r in range(rounds):
        for case in CASES[r % len(CASES):] + CASES[:r % len(CASES)]:
            if case.startswith("bare"):
                _reset(own, None)
                bare.mkdir()
                barrier()
                t0 = time.perf_counter()
                if case == "bare transfer":
                    bare_transfer([(root / "kept1" / saved.name / n, bare / n) for n in lacked], rank)
                else:
                    bare_copy(f"{remote.folder}{saved.name}/", mine, bare)
                barrier()
                seconds[case].append(time.perf_counter() - t0)
                continue
            keep = case == "own parts" or (case == "partner's copy" and rank == 1)
            _reset(own, root / f"kept{rank}" if keep else None)
            barrier()
            t0 = time.perf_counter()
            with CheckpointManager(shared if case == "shared directory" else own, sharded=True) as manager:
                point = find_resume_point(manager, remote=remote if case == "bucket" else None)
                assert point is not None and point.step == 100, case
                manager.restore(point.state, path=point.path, model=model)
            seconds[case].append(time.perf_counter() - t0)
            barrier()
    sizes = [part] if rank == 0 else []
    if rank == 0:
        sizes.append(sum(e["size"] for e in manifest["files"].values()))
        print(json.dumps({"part": sizes[0], "total": sizes[1], "blocked": blocked, "recovery": seconds}), flush=True)


def main() -> None:
    from node_local import report, two_nodes

    out = two_nodes(__file__, __doc__, worker, 3, "{size_mb} MB model (FSDP2 over 2 ranks)")
    if out is None:
        return
    rec = out["recovery"]
    print(f"\ncheckpoint {out['total'] / 1e6:.0f} MB; rank 0's part {out['part'] / 1e6:.0f} MB; bytes sent between "
          f"nodes per save with CHECKPOINT.REPLICAS 1: {out['total'] / 1e6:.0f} MB (each node's part, once)")
    print(f"async save() blocked, s: with copies {statistics.median(out['blocked']['on']):.3f}, without "
          f"{statistics.median(out['blocked']['off']):.3f}")
    report(rec, "relaunch to restored weights", [
        record("node_local_sharded", "recovery from the bucket / from a partner's copy",
               [b / p for b, p in zip(rec["bucket"], rec["partner's copy"])], ">= 5.0"),
        record("node_local_sharded", "floor: bare bucket copy / bare transfer from the partner",
               [b / p for b, p in zip(rec["bare bucket copy"], rec["bare transfer"])]),
        record("node_local_sharded", "recovery from a partner's copy / from own parts",
               [p / o for p, o in zip(rec["partner's copy"], rec["own parts"])]),
        record("node_local_sharded", "recovery from own parts / from a shared directory",
               [o / s for o, s in zip(rec["own parts"], rec["shared directory"])]),
        record("node_local_sharded", "async save blocked with copies of each part / without",
               [a / b for a, b in zip(out["blocked"]["on"], out["blocked"]["off"])], "<= 1.02"),
    ])


if __name__ == "__main__":
    main()
