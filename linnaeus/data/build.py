"""Config → datasets, samplers and loaders for one rank."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from yacs.config import CfgNode

from .csv_manifest import read_csv_manifest
from .folder import HierarchicalImageFolder, LabeledImages, Sample, scan_image_folder, split_per_class
from .hierarchy import Hierarchy
from .inat import read_inat
from .manifest import build_taxonomy, check_overlap, log_label_counts, manifest_dataset, split_manifest
from .sampler import ResumableDistributedSampler, ShardedEvalSampler
from .taxonomy import DatasetError, Taxonomy, load_taxonomy
from .examples import ensure_example_dataset
from .toy import ensure_toy_dataset
from .transforms import build_transforms

logger = logging.getLogger("linnaeus.data")
TOY_MIN_SIZE = 64  # toy images are drawn at least this large so the shapes stay recognisable


@dataclass
class DataBundle:
    """Everything the runner needs from the data side.

    ``val_loader``/``val_dataset`` are None when there is nothing to validate on
    (``DATA.VAL_FRACTION 0`` and no ``val/`` folder).
    """

    train_loader: DataLoader
    val_loader: DataLoader | None
    train_sampler: ResumableDistributedSampler
    taxonomy: Taxonomy
    train_dataset: LabeledImages
    val_dataset: LabeledImages | None
    # the taxonomy's tree as tensors for the hierarchy-aware metrics; None without a complete tree
    hierarchy: Hierarchy | None = None


def _worker_init(worker_id: int) -> None:
    # Augmentation randomness is seeded per sample in __getitem__, so workers need no seeding;
    # one intra-op thread each keeps NUM_WORKERS processes from oversubscribing the CPU.
    torch.set_num_threads(1)


def _expand(path: str) -> Path:
    return Path(os.path.expanduser(os.path.expandvars(path)))


def _splits(root: Path, taxonomy: Taxonomy, val_fraction: float) -> tuple[Path, Path, list[Sample], list[Sample]]:
    """``(train_dir, val_dir, train, val)``: ``root/train`` + ``root/val`` when present, else a
    deterministic per-class split (``val_fraction``) of the class folders."""
    train_dir = root / "train" if (root / "train").is_dir() else root
    if (root / "val").is_dir():
        val_dir = root / "val"
        return train_dir, val_dir, scan_image_folder(train_dir, taxonomy), scan_image_folder(val_dir, taxonomy)
    train, val = split_per_class(scan_image_folder(train_dir, taxonomy), val_fraction)
    return train_dir, train_dir, train, val


def _annotation_path(root: Path, name: str) -> Path:
    path = _expand(name)
    return path if path.is_absolute() else root / path


def _manifest_datasets(cfg: CfgNode, root: Path, train_tf, eval_tf, seed: int
                       ) -> tuple[Taxonomy, LabeledImages, LabeledImages | None]:
    """``DATA.DATASET inat`` / ``csv``: train (and val) annotation files under ``root``."""
    d = cfg.DATA
    read = read_inat if d.DATASET == "inat" else read_csv_manifest
    train_m = read(_annotation_path(root, d.TRAIN_ANN), root, d.TASK_KEYS)
    val_m = read(_annotation_path(root, d.VAL_ANN), root, d.TASK_KEYS) if d.VAL_ANN else None
    if val_m is not None:
        check_overlap(train_m, val_m, d.ALLOW_TRAIN_VAL_OVERLAP)
    taxonomy = build_taxonomy([train_m] + ([val_m] if val_m else []), d.TASK_KEYS)
    if val_m is not None:
        train_ds = manifest_dataset(train_m, taxonomy, train_tf, seed)
        val_ds = manifest_dataset(val_m, taxonomy, eval_tf, seed)
    else:
        train_idx, val_idx = split_manifest(train_m, taxonomy, d.VAL_FRACTION)
        train_ds = manifest_dataset(train_m, taxonomy, train_tf, seed, train_idx)
        val_ds = manifest_dataset(train_m, taxonomy, eval_tf, seed, val_idx) if val_idx else None
    log_label_counts(f"train ({train_m.file})", train_ds, d.TASK_KEYS)
    if val_ds is not None:
        log_label_counts(f"val ({(val_m or train_m).file})", val_ds, d.TASK_KEYS)
    if not taxonomy.is_complete:
        orphans = {lv: sum(p < 0 for p in taxonomy.parent_indices(lv)) for lv in d.TASK_KEYS[:-1]}
        if cfg.EVAL.CONSISTENT_DECODING:
            raise DatasetError(f"EVAL.CONSISTENT_DECODING needs the whole tree, but {train_m.file} never gives the "
                               f"parent rank of {orphans} classes. Fill those ranks on one row each, or set "
                               "EVAL.CONSISTENT_DECODING False.")
        logger.warning("the taxonomy of %s never gives the parent rank of %s classes: consistency and mistake "
                       "severity need the whole tree and are not computed", train_m.file, orphans)
    return taxonomy, train_ds, val_ds


def build_data(cfg: CfgNode, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Build this rank's train/val loaders from ``cfg.DATA`` (seeds from ``cfg.EXPERIMENT.SEED``).

    For ``DATA.DATASET toy`` the toy dataset is generated into ``DATA.ROOT`` first (once per
    machine, whichever rank gets there first).
    """
    d = cfg.DATA
    seed = int(cfg.EXPERIMENT.SEED)
    root = _expand(d.ROOT)
    if d.DATASET == "toy":
        ensure_toy_dataset(root, d.TOY_NUM_SAMPLES, max(d.IMG_SIZE, TOY_MIN_SIZE))
    if d.EXAMPLE:
        ensure_example_dataset(root, d.EXAMPLE)
    train_tf, eval_tf = build_transforms(cfg)
    if d.DATASET in ("inat", "csv"):
        taxonomy, train_ds, val_ds = _manifest_datasets(cfg, root, train_tf, eval_tf, seed)
    else:
        taxonomy_file = _expand(d.TAXONOMY_FILE)
        if not taxonomy_file.is_absolute():
            taxonomy_file = root / taxonomy_file
        taxonomy = load_taxonomy(taxonomy_file, d.TASK_KEYS)
        train_dir, val_dir, train_samples, val_samples = _splits(root, taxonomy, d.VAL_FRACTION)
        train_ds = HierarchicalImageFolder(train_dir, taxonomy, train_tf, seed, samples=train_samples)
        val_ds = HierarchicalImageFolder(val_dir, taxonomy, eval_tf, seed, samples=val_samples) if val_samples \
            else None
    sampler = ResumableDistributedSampler(len(train_ds), world_size, rank, seed, shuffle=True, drop_last=True)
    if len(sampler) < d.BATCH_SIZE:
        raise DatasetError(
            f"the training split of {root} has {len(train_ds)} images: {len(sampler)} per rank over "
            f"{world_size} rank(s), fewer than one batch (DATA.BATCH_SIZE {d.BATCH_SIZE}). "
            "Lower DATA.BATCH_SIZE or add images."
        )

    workers = int(d.NUM_WORKERS)
    common = dict(
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
    # A dedicated generator: without one, every iter(loader) draws the workers' base seed
    # from the global torch RNG, which would couple the training RNG stream to data loading.
    train_loader = DataLoader(
        train_ds,
        batch_size=d.BATCH_SIZE,
        sampler=sampler,
        drop_last=True,  # every step sees a full batch; the partial tail is never "consumed"
        generator=torch.Generator().manual_seed(seed + rank),
        **common,
    )

    val_loader = None
    if val_ds is not None:
        val_loader = DataLoader(
            val_ds,
            batch_size=cfg.EVAL.BATCH_SIZE or d.BATCH_SIZE,
            sampler=ShardedEvalSampler(len(val_ds), world_size, rank),
            drop_last=False,
            generator=torch.Generator().manual_seed(seed + rank),
            **common,
        )
    return DataBundle(train_loader, val_loader, sampler, taxonomy, train_ds, val_ds,
                      Hierarchy.from_taxonomy(taxonomy))
