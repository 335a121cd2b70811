"""Data throughput on real JPEGs: linnaeus's iNat-format pipeline against a bare torchvision loop.

Both read the same generated 224x224 JPEGs (the iNat-format example set, whose
``train/<category>/<id>.jpg`` layout is also a class-per-folder tree) with the same augmentation
(``build_train_transform``: RandomResizedCrop + flip + normalise), batch size and DataLoader
workers, and only load batches (no model), so the ratio is the cost of what linnaeus adds: the
manifest dataset with per-sample seeded augmentation (what makes mid-epoch resume exact), the
resumable sampler with its ``advance`` after every batch, and label rows per rank.

- linnaeus: ``build_data`` on ``DATA.DATASET inat``, iterating ``train_loader`` as the trainer does.
- bare: ``torchvision.datasets.ImageFolder`` + a shuffling ``DataLoader``.

Both keep their workers between epochs (the runner's loader is persistent; so is the bare one).
Each round reads ``--batches`` batches from a fresh iterator, as at the start of every epoch;
rounds alternate which goes first, and the table reports each round and the medians.

    python benchmarks/data_throughput.py                         # 2 workers, batch 32, 5 rounds
    python benchmarks/data_throughput.py --workers 8 --rounds 9 --batches 40

Target: linnaeus / bare >= 0.95.
"""

from __future__ import annotations

import argparse
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


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # as linnaeus.data.build does for its workers


def linnaeus_round(loader: DataLoader, sampler, epoch: int, batches: int) -> float:
    sampler.set_epoch(epoch)
    start, n = time.perf_counter(), 0
    for i, (images, _labels) in enumerate(loader):
        sampler.advance(images.shape[0])  # the trainer reports every micro-batch
        n += images.shape[0]
        if i + 1 == batches:
            break
    return n / (time.perf_counter() - start)


def bare_round(loader: DataLoader, batches: int) -> float:
    start, n = time.perf_counter(), 0
    for i, (images, _labels) in enumerate(loader):
        n += images.shape[0]
        if i + 1 == batches:
            break
    return n / (time.perf_counter() - start)


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
        ours = data.train_loader  # the runner's own loader (persistent workers, its sampler)
        d = cfg.DATA
        bare_ds = ImageFolder(str(root / "train"), transform=build_train_transform(224, d.AUG_SCALE_MIN, d.AUG_HFLIP))
        bare = DataLoader(bare_ds, batch_size=a.batch_size, shuffle=True, drop_last=True, num_workers=a.workers,
                          worker_init_fn=_worker_init if a.workers else None, persistent_workers=a.workers > 0,
                          pin_memory=torch.cuda.is_available())
        assert len(bare_ds) == len(data.train_dataset), "both pipelines must read the same files"

        linnaeus_round(ours, data.train_sampler, 0, 2)  # warm-up: page cache, imports in workers
        bare_round(bare, 2)
        rows = []
        for r in range(a.rounds):
            first_ours = r % 2 == 0  # alternate which goes first against drifting load on the machine
            if first_ours:
                ips_ours = linnaeus_round(ours, data.train_sampler, r + 1, a.batches)
                ips_bare = bare_round(bare, a.batches)
            else:
                ips_bare = bare_round(bare, a.batches)
                ips_ours = linnaeus_round(ours, data.train_sampler, r + 1, a.batches)
            rows.append((ips_ours, ips_bare))

    print(f"\nbatch {a.batch_size}, {a.workers} worker(s), {a.batches} batches per round\n")
    print("| round | linnaeus img/s | bare ImageFolder img/s | ratio |")
    print("|---:|---:|---:|---:|")
    for i, (o, b) in enumerate(rows):
        print(f"| {i} | {o:.1f} | {b:.1f} | {o / b:.3f} |")
    mo, mb = statistics.median(o for o, _ in rows), statistics.median(b for _, b in rows)
    ratios = statistics.median(o / b for o, b in rows)
    print(f"| median | {mo:.1f} | {mb:.1f} | {ratios:.3f} |")
    print(f"\nlinnaeus / bare (median of per-round ratios): {ratios:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
