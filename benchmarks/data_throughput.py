"""Data throughput on real JPEGs: linnaeus's iNat-format pipeline against a bare torchvision loop.

Both read the same generated 224x224 JPEGs (the iNat-format example set, whose
``train/<category>/<id>.jpg`` layout is also a class-per-folder tree) with the same augmentation
(``build_train_transform``: RandomResizedCrop + flip + normalise), batch size and DataLoader
workers, and only load batches (no model), so the ratio is the cost of what linnaeus adds: the
manifest dataset with per-sample seeded augmentation (what makes mid-epoch resume exact), the
resumable sampler with its ``advance`` after every batch, and label rows per rank.

- linnaeus: ``build_data`` on ``DATA.DATASET inat``, iterating ``train_loader`` as the trainer does.
- bare: ``torchvision.datasets.ImageFolder`` + a shuffling ``DataLoader``.

Each round reads ``--batches`` batches from a fresh iterator (worker start-up included) and
reports images/s and the workers' CPU time per image (user + sys of the exited workers, which
other load on a shared machine does not inflate as it does wall time); rounds alternate which
goes first, and the table reports each round and the medians.

    python benchmarks/data_throughput.py                         # 2 workers, batch 32, 5 rounds
    python benchmarks/data_throughput.py --workers 8 --rounds 9 --batches 40

Target: linnaeus / bare >= 0.95.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linnaeus.config import load_config  # noqa: E402
from linnaeus.data.build import build_data  # noqa: E402
from linnaeus.data.examples import ensure_example_dataset  # noqa: E402
from linnaeus.data.transforms import build_train_transform  # noqa: E402
from results import record  # noqa: E402


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # as linnaeus.data.build does for its workers


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def timed_round(loader: DataLoader, batches: int, sampler=None, epoch: int = 0) -> tuple[float, float]:
    """``(images/s, worker CPU ms per image)`` over ``batches`` batches of a fresh iterator.

    Workers are not persistent, so they exit (and are reaped) when the iterator is shut down:
    their CPU time then shows in RUSAGE_CHILDREN (RUSAGE_SELF without workers), a measure that
    other load on the machine does not inflate the way it inflates wall time.
    """
    if sampler is not None:
        sampler.set_epoch(epoch)
    who = resource.RUSAGE_CHILDREN if loader.num_workers > 0 else resource.RUSAGE_SELF
    cpu0 = _cpu(who)
    start, n = time.perf_counter(), 0
    it = iter(loader)
    for i, (images, _labels) in enumerate(it):
        if sampler is not None:
            sampler.advance(images.shape[0])  # the trainer reports every micro-batch
        n += images.shape[0]
        if i + 1 == batches:
            break
    wall = time.perf_counter() - start
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()  # join the workers now, so their CPU time is counted
    del it
    return n / wall, 1000 * (_cpu(who) - cpu0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="", help="example-set folder (default: a temporary one, generated)")
    p.add_argument("--per-species", type=int, default=40, help="training JPEGs per species (18 species)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=16, help="batches per round")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.root) if a.root else Path(tmp) / "inat224"
        t0 = time.perf_counter()
        ensure_example_dataset(root, "inat", a.per_species, 0, 224)
        print(f"dataset: {root} ({18 * a.per_species} JPEGs, 224x224; ready in {time.perf_counter() - t0:.1f} s)")

        cfg = load_config(None, ["DATA.DATASET", "inat", "DATA.ROOT", str(root), "DATA.TRAIN_ANN", "train.json",
                                 "DATA.VAL_FRACTION", "0", "DATA.TASK_KEYS", "[species, genus, family, order]",
                                 "DATA.IMG_SIZE", "224", "DATA.BATCH_SIZE", str(a.batch_size),
                                 "DATA.NUM_WORKERS", str(a.workers)])
        data = build_data(cfg, 0, 1)
        # The runner's dataset and sampler, in a loader built as build_data builds it except that
        # its workers are not persistent (see timed_round); the bare loader likewise.
        ours = DataLoader(data.train_dataset, batch_size=a.batch_size, sampler=data.train_sampler, drop_last=True,
                          num_workers=a.workers, worker_init_fn=data.train_loader.worker_init_fn,
                          generator=torch.Generator().manual_seed(0), pin_memory=torch.cuda.is_available())
        d = cfg.DATA
        bare_ds = ImageFolder(str(root / "train"), transform=build_train_transform(224, d.AUG_SCALE_MIN, d.AUG_HFLIP))
        bare = DataLoader(bare_ds, batch_size=a.batch_size, shuffle=True, drop_last=True, num_workers=a.workers,
                          worker_init_fn=_worker_init if a.workers else None, pin_memory=torch.cuda.is_available())
        assert len(bare_ds) == len(data.train_dataset), "both pipelines must read the same files"

        timed_round(ours, 2, data.train_sampler)  # warm-up: page cache
        timed_round(bare, 2)
        rows = []
        for r in range(a.rounds):
            if r % 2 == 0:  # alternate which goes first against drifting load on the machine
                o = timed_round(ours, a.batches, data.train_sampler, r + 1)
                b = timed_round(bare, a.batches)
            else:
                b = timed_round(bare, a.batches)
                o = timed_round(ours, a.batches, data.train_sampler, r + 1)
            rows.append((o, b))

    print(f"\nbatch {a.batch_size}, {a.workers} worker(s), {a.batches} batches per round; ratio = linnaeus / bare "
          "throughput (wall: images/s; CPU: images per worker CPU-second)\n")
    print("| round | linnaeus img/s | bare img/s | wall ratio | linnaeus CPU ms/img | bare CPU ms/img | CPU ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for i, ((oi, oc), (bi, bc)) in enumerate(rows):
        print(f"| {i} | {oi:.1f} | {bi:.1f} | {oi / bi:.3f} | {oc:.2f} | {bc:.2f} | {bc / oc:.3f} |")
    med = statistics.median
    record("data_throughput", "linnaeus data / bare ImageFolder loop, wall img/s", [o[0] / b[0] for o, b in rows],
           ">= 0.95")
    record("data_throughput", "linnaeus data / bare ImageFolder loop, img per CPU-second",
           [b[1] / o[1] for o, b in rows], ">= 0.95")
    wall = med(o[0] / b[0] for o, b in rows)
    cpu = med(b[1] / o[1] for o, b in rows)
    print(f"| median | {med(o[0] for o, _ in rows):.1f} | {med(b[0] for _, b in rows):.1f} | {wall:.3f} | "
          f"{med(o[1] for o, _ in rows):.2f} | {med(b[1] for _, b in rows):.2f} | {cpu:.3f} |")
    print(f"\nlinnaeus / bare, median of per-round ratios: wall {wall:.3f}, CPU {cpu:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
