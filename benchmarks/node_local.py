"""Node-local checkpoint directories: recovery from a peer's copy against the bucket, and what the copies cost.

    python benchmarks/node_local.py [--size-mb 256] [--rounds 5]

Two processes under torchrun stand in for two nodes, each with its own checkpoint directory (so the
library finds them node-local), the run's bucket a local ``rclone serve s3``. The state is a model
of ``--size-mb`` MB of float32 parameters, saved as one verified single-file checkpoint.

(a) Recovery, rotating the order within each round: the resume decision and verified load
    (``find_resume_point``: the probe of the directories, the copy between nodes, the load), with
    - both nodes holding the checkpoint ("own copy");
    - rank 0's directory emptied, the copy coming from the other node over the process group
      ("peer's copy");
    - both emptied, every node fetching it from the bucket, verified ("bucket").
    Target: the bucket >= 5x the peer's copy. The same rounds time the floor of each path, the bare
    operations alone: rank 1 reading the file and sending it, rank 0 writing it and fsyncing it
    ("bare transfer": no hash, no resume decision, no load), and both nodes' ``rclone copy`` of
    the uploaded file with an fsync ("bare bucket copy"); their ratio is what this machine allows.
(b) What the copies cost rank 0's training loop, alternating with and without them
    (``CHECKPOINT.REPLICAS`` 1 and 0): the time ``save()`` blocks, and the time of the 5
    forward/backward steps that follow it (the copy is sent from a thread while they run).
    Target: blocked time with copies <= 1.02x without. Also the bytes sent per save.

Run it alone on a quiet machine; the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from results import record  # noqa: E402

STEPS_AFTER_SAVE = 5


def _model(size_mb: int):  # noqa: ANN202 - torch imported lazily: the parent process needs none of it
    import torch
    from torch import nn

    width = 1024
    layers = max(1, size_mb * 2**20 // (4 * width * width))
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)])


def worker(root: Path, size_mb: int, rounds: int) -> None:
    import torch

    from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy
    from linnaeus.checkpoint.remote import RemoteRun
    from linnaeus.checkpoint.replicas import Replicator
    from linnaeus.checkpoint.resume import find_resume_point
    from linnaeus.checkpoint.store import probe_sharing
    from linnaeus.dist import barrier, get_rank, init_distributed

    torch.set_num_threads(1)
    init_distributed()
    rank = get_rank()
    directory = root / f"node{rank}"
    model = _model(size_mb)
    remote = RemoteRun.in_bucket({"ENABLED": True, "REMOTE": "bench", "NAME": "bkt", "PATH_PREFIX": "runs/"}, "bench")
    sharing = probe_sharing(directory)
    assert not sharing.shared, sharing.describe()

    # (b) the cost of the copies: saves alternating with and without them.
    copies = Replicator(sharing, directory, 1, {})
    blocked: dict[str, list[float]] = {"on": [], "off": []}
    after: dict[str, list[float]] = {"on": [], "off": []}
    data = torch.randn(16, 1024)
    for r in range(rounds):
        for case in (("on", "off") if r % 2 == 0 else ("off", "on")):
            hook = (lambda p: copies.on_commit(p, saver="checkpoint", update_latest=True)) if case == "on" else None
            with CheckpointManager(directory, CheckpointPolicy(keep_last_n=1), on_commit=hook) as manager:
                barrier()
                t0 = time.perf_counter()
                path = manager.save(epoch=r, step=r, model=model, filename=f"cost_{case}_{r}.pth")
                t1 = time.perf_counter()
                for _ in range(STEPS_AFTER_SAVE):
                    model(data).square().mean().backward()
                t2 = time.perf_counter()
            blocked[case].append(t1 - t0)
            after[case].append(t2 - t1)
            if case == "on" and rank == 1:  # the copy is committed on the other node before the next round
                while not Path(f"{directory / path.name}.sha256").exists():
                    time.sleep(0.01)
            barrier()
    copies.close()
    size = path.stat().st_size if rank == 0 else 0

    # (a) recovery: one checkpoint, held by both nodes and the bucket.
    with CheckpointManager(directory, CheckpointPolicy()) as manager:
        saved = manager.save(epoch=1, step=100, model=model, filename="checkpoint_epoch_1.pth")
        if rank == 0:
            remote.upload(saved)
            shutil.copy2(saved, root / "kept.pth")
            shutil.copy2(f"{saved}.sha256", root / "kept.pth.sha256")
    barrier()
    seconds: dict[str, list[float]] = {"own copy": [], "peer's copy": [], "bucket": [], "bare transfer": [],
                                       "bare bucket copy": []}
    names = list(seconds)
    for r in range(rounds):
        for case in names[r % len(names):] + names[:r % len(names)]:
            if case.startswith("bare"):
                barrier()
                t0 = time.perf_counter()
                if case == "bare transfer":
                    bare_transfer([(root / "kept.pth", directory / "bare.pth")], rank)
                else:
                    bare_copy(remote.folder, [saved.name], directory / "bare")
                barrier()
                seconds[case].append(time.perf_counter() - t0)
                (directory / "bare.pth").unlink(missing_ok=True)
                shutil.rmtree(directory / "bare", ignore_errors=True)
                continue
            for f in directory.iterdir():  # every case starts from the one checkpoint, its cost files gone
                if f.name != ".lock":
                    f.unlink()
            if case == "own copy" or (case == "peer's copy" and rank == 1):
                shutil.copy2(root / "kept.pth", directory / "checkpoint_epoch_1.pth")
                shutil.copy2(root / "kept.pth.sha256", directory / "checkpoint_epoch_1.pth.sha256")
            barrier()
            with CheckpointManager(directory, CheckpointPolicy()) as manager:
                barrier()
                t0 = time.perf_counter()
                point = find_resume_point(manager, remote=remote if case == "bucket" else None)
                seconds[case].append(time.perf_counter() - t0)
                assert point is not None and point.step == 100, case
            barrier()
    if rank == 0:
        print(json.dumps({"size": size, "blocked": blocked, "after": after, "recovery": seconds}), flush=True)


def bare_transfer(files: list[tuple[Path, Path]], rank: int) -> None:
    """The peer copy's floor: for each (source, dest), rank 1 reads source and sends it, rank 0 writes
    it to dest and fsyncs it; nothing else (no hash, no resume decision, no load)."""
    import torch
    import torch.distributed as dist

    chunk = 64 << 20
    buffer = torch.empty(chunk, dtype=torch.uint8)
    for source, dest in files:
        size = source.stat().st_size
        with open(source if rank == 1 else dest, "rb" if rank == 1 else "wb", buffering=0) as f:
            for offset in range(0, size, chunk):
                view = buffer[:min(chunk, size - offset)]
                if rank == 1:
                    f.readinto(memoryview(view.numpy()))
                    dist.send(view, dst=0)
                else:
                    dist.recv(view, src=1)
                    f.write(memoryview(view.numpy()))
            if rank == 0:
                os.fsync(f.fileno())


def bare_copy(folder: str, names: list[str], dest: Path) -> None:
    """The bucket's floor on one node: the bare tool, one ``rclone copy`` of ``names`` from the remote
    ``folder`` into ``dest``, then an fsync of each file (a download is durable before it counts)."""
    from linnaeus.checkpoint.sources import rclone_binary

    listing = dest.with_name(dest.name + ".files")
    listing.write_text("".join(f"{n}\n" for n in names))
    try:
        subprocess.run([rclone_binary(), "copy", "--files-from-raw", str(listing), folder, str(dest)],
                       check=True, capture_output=True)
    finally:
        listing.unlink()
    for name in names:
        fd = os.open(dest / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def run_workers(script: str, size_mb: int, rounds: int, title: str) -> dict:
    """``script --worker <root>`` under torchrun as two nodes, the bucket a local ``rclone serve s3``; the
    JSON line rank 0 prints. Exits naming the failure when the workers fail."""
    from resolve import local_s3

    root = Path(tempfile.mkdtemp(prefix=Path(script).stem + "_"))
    server, bucket_env = local_s3(root / "s3")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **bucket_env}
    try:
        print(f"{title}, {rounds} rounds; load average at start {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs",
              flush=True)
        torchrun = Path(sys.executable).with_name("torchrun")
        proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2", str(Path(script).resolve()),
                               "--worker", str(root), "--size-mb", str(size_mb), "--rounds", str(rounds)],
                              cwd=REPO, env=env, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"the workers failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
        return json.loads(lines[-1])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
        shutil.rmtree(root, ignore_errors=True)


def two_nodes(script: str, doc: str, worker_fn: Callable[[Path, int, int], None], rounds: int,
              title: str) -> dict | None:
    """The command line of a two-node benchmark: as the worker (under torchrun) run ``worker_fn`` and
    return None; else run the workers (:func:`run_workers`) and return rank 0's figures."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_fn(Path(args.worker), args.size_mb, args.rounds)
        return None
    return run_workers(script, args.size_mb, args.rounds, title.format(size_mb=args.size_mb))


def report(seconds: dict[str, list[float]], heading: str, ratios: list) -> None:
    """The seconds of each case (median, spread), then the ratios and the load average."""
    print(f"{heading:<34} {'median s':>9} {'spread':>13}")
    for name, values in seconds.items():
        print(f"{name:<34} {statistics.median(values):>9.2f} {min(values):>6.2f}-{max(values):<6.2f}")
    print()
    for ratio in ratios:
        print(ratio.row())
    print(f"load average at end {os.getloadavg()[0]:.2f}")


def main() -> None:
    out = two_nodes(__file__, __doc__, worker, 5, "{size_mb} MB model")
    if out is None:
        return
    rec, size = out["recovery"], out["size"]
    print(f"\ncheckpoint {size / 1e6:.0f} MB; bytes sent per save with CHECKPOINT.REPLICAS 1: {size / 1e6:.0f} MB")
    print(f"{'rank 0 per save':<34} {'with copies':>12} {'without':>9}")
    for what, key in (("save() blocked, s", "blocked"), (f"{STEPS_AFTER_SAVE} steps after it, s", "after")):
        print(f"{what:<34} {statistics.median(out[key]['on']):>12.3f} {statistics.median(out[key]['off']):>9.3f}")
    report(rec, "resume decision + verified load", [
        record("node_local", "recovery from the bucket / from a peer node's copy",
               [b / p for b, p in zip(rec["bucket"], rec["peer's copy"])], ">= 5.0"),
        record("node_local", "recovery from a peer node's copy / from the node's own",
               [p / o for p, o in zip(rec["peer's copy"], rec["own copy"])]),
        record("node_local", "floor: bare bucket copy / bare transfer to the peer",
               [b / p for b, p in zip(rec["bare bucket copy"], rec["bare transfer"])]),
        record("node_local", "save blocked with copies on other nodes / without",
               [a / b for a, b in zip(out["blocked"]["on"], out["blocked"]["off"])], "<= 1.02"),
        record("node_local", f"{STEPS_AFTER_SAVE} steps after a save, with copies / without",
               [a / b for a, b in zip(out["after"]["on"], out["after"]["off"])]),
    ])


if __name__ == "__main__":
    main()
