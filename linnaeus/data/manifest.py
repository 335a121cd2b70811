"""What the iNaturalist-JSON and CSV readers share: a parsed manifest, its up-front checks, the
taxonomy over train + val, and the dataset built from it.

Checks run when the run starts, over the whole manifest, and a run with any problem refuses to
start: it names the first problems and how many there are, so a dataset is never trained on
silently shrunk. Cheap checks are up front (the entry is well formed, the path stays under
``DATA.ROOT``, the file exists, no image is listed twice under another spelling or id, train and
val share no image, the taxonomy is a tree); decoding is lazy (reading every image
of a 2.7M-image set before step 1 would take longer than an epoch), and a file that does not
decode stops the run when it is reached, naming the file and its manifest entry. The last
committed checkpoint stays: fix the file and relaunch to resume.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .folder import LabeledImages, split_per_class
from .taxonomy import IGNORE_INDEX, DatasetError, Record, Taxonomy, tree_conflicts

logger = logging.getLogger("linnaeus.data")
SHOWN_PROBLEMS = 10  # how many problems an error message lists (the count covers all)


class Problems:
    """Collects what is wrong with one manifest file; :meth:`raise_if_any` refuses it as a whole."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def raise_if_any(self) -> None:
        n = len(self.messages)
        if not n:
            return
        shown = "\n".join(f"  - {m}" for m in self.messages[:SHOWN_PROBLEMS])
        more = f"\n  ... and {n - SHOWN_PROBLEMS} more" if n > SHOWN_PROBLEMS else ""
        raise DatasetError(
            f"{self.file}: {n} problem(s), the run does not start (linnaeus never trains on a silently "
            f"shrunken dataset):\n{shown}{more}\nFix or remove these entries and relaunch."
        )


@dataclass
class Manifest:
    """One annotation file, parsed: sample ``i`` is ``files[i]`` with the ranks ``known[i]``,
    listed at ``<file> <kind> <numbers[i]>`` (kind: "line" or "image id")."""

    file: Path
    kind: str
    files: list[str] = field(default_factory=list)
    known: list[dict[str, str]] = field(default_factory=list)
    numbers: list[Any] = field(default_factory=list)  # CSV line numbers, iNat image ids
    # taxonomy records beyond the samples' own (iNat categories without images)
    records: list[Record] = field(default_factory=list)
    # whether each sample's ranks are a taxonomy record of their own (CSV rows) or repeat one of
    # ``records`` (iNat categories; skipping them saves a pass over millions of images)
    sample_records: bool = True

    def all_records(self, prefix: str = "") -> list[Record]:
        rows = list(zip(self.known, (f"{self.kind} {n}" for n in self.numbers))) if self.sample_records else []
        return [(k, prefix + where) for k, where in self.records + rows]

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True, eq=False)
class Origin:
    """``origin(i)`` → where sample ``i`` was listed; picklable for DataLoader workers."""

    file: str
    kind: str
    numbers: np.ndarray  # an array rather than a tuple of ints, for the same reason as LabeledImages._paths

    def __call__(self, index: int) -> str:
        return f"{self.file} {self.kind} {self.numbers[index]}"


def image_path(root: Path, relative: str, where: str, problems: Problems) -> str | None:
    """``root/relative`` if it names a file under ``root``; otherwise a problem and None.

    The test is on the path as written (no symlink resolution): an image root may hold
    symlinks to another disk, but ``..`` or an absolute path leaves the dataset.
    """
    if not isinstance(relative, str) or not relative.strip():
        problems.add(f"{where}: empty image path")
        return None
    norm = os.path.normpath(relative)  # what image_key compares by
    if os.path.isabs(relative) or norm == ".." or norm.startswith(".." + os.sep):
        problems.add(f"{where}: image path {relative!r} escapes the image root {root}; paths must be relative "
                     "to DATA.ROOT and stay under it")
        return None
    path = os.path.join(root, norm)
    if not os.path.isfile(path):
        problems.add(f"{where}: image file {path} does not exist")
        return None
    return path


def image_key(relative: object) -> str | None:
    """The spelling every reader compares image paths by (``./a.jpg``, ``.//a.jpg`` and
    ``x/../a.jpg`` are all ``a.jpg``): the path ``image_path`` opens, relative to the root. Lexical
    like ``image_path``, so a symlink is not followed; None for what ``image_path`` refuses as empty."""
    if not isinstance(relative, str) or not relative.strip():
        return None
    key = os.path.normpath(relative)
    return relative if key == relative else key  # share the manifest's string: millions of entries


def shared_images(train: Manifest, val: Manifest) -> list[tuple[str, Any, Any]]:
    """``(file, train entry, val entry)`` for each image in both; ``files`` are ``root/image_key``
    with one root, so equal strings are one image however each manifest spelled it."""
    val_at = dict(zip(val.files, val.numbers))  # val is the smaller side: the set to hold
    return [(f, n, val_at[f]) for f, n in zip(train.files, train.numbers) if f in val_at]


def check_overlap(train: Manifest, val: Manifest, allow: bool) -> None:
    """Refuses train and val sharing images (validation would score images the model trained on),
    or, with ``allow`` (``DATA.ALLOW_TRAIN_VAL_OVERLAP``), logs how many and goes on."""
    shared = shared_images(train, val)
    if not shared:
        return
    listed = "\n".join(f"  - {f} (train {train.kind} {a}, val {val.kind} {b})" for f, a, b in shared[:SHOWN_PROBLEMS])
    more = f"\n  ... and {len(shared) - SHOWN_PROBLEMS} more" if len(shared) > SHOWN_PROBLEMS else ""
    head = f"{train.file} and {val.file} share {len(shared)} image(s)"
    if allow:
        logger.warning("%s (allowed by DATA.ALLOW_TRAIN_VAL_OVERLAP True): validation metrics include images the "
                       "model trains on and overstate its accuracy on unseen ones:\n%s%s", head, listed, more)
        return
    raise DatasetError(
        f"{head}, the run does not start: validating on images the model trains on overstates its accuracy on "
        f"unseen ones:\n{listed}{more}\nRemove them from one of the two files, or set "
        "DATA.ALLOW_TRAIN_VAL_OVERLAP True to train and validate on them anyway (the log then says how many)."
    )


def build_taxonomy(manifests: Sequence[Manifest], task_keys: Sequence[str]) -> Taxonomy:
    """One taxonomy over all ``manifests`` (train and val share class indices); a name under two
    parents is refused naming both entries."""
    for m in manifests:
        problems = Problems(m.file)
        for msg in tree_conflicts(task_keys, m.all_records())[0]:
            problems.add(msg)
        problems.raise_if_any()
    records = [r for m in manifests for r in m.all_records(f"{m.file.name} ")]
    problems_all, ancestors = tree_conflicts(task_keys, records)
    if problems_all:  # train and val each a tree, but not the same one
        raise DatasetError(
            f"{manifests[0].file} and {manifests[-1].file} disagree: " + "; ".join(problems_all[:SHOWN_PROBLEMS])
            + ". Train and val must place every name under the same parent."
        )
    leaf = task_keys[0]
    parents = {name: anc for (lv, name), anc in ancestors.items() if lv == leaf}
    branches: dict[str, dict[str, dict[str, str]]] = {}
    for (lv, name), anc in ancestors.items():
        if lv != leaf:
            branches.setdefault(lv, {})[name] = anc
    return Taxonomy(task_keys=tuple(task_keys), path=manifests[0].file, parents=parents, branches=branches)


def targets_of(manifest: Manifest, taxonomy: Taxonomy) -> torch.Tensor:
    """LongTensor[N, levels]: class indices, IGNORE_INDEX where the manifest leaves a rank empty."""
    def row(k: dict[str, str]) -> list[int]:
        return [taxonomy.index(lv, k[lv]) if lv in k else IGNORE_INDEX for lv in taxonomy.task_keys]

    # iNat samples share their category's dict: one row per category, not per image
    by_id: dict[int, list[int]] = {}
    rows = [by_id[id(k)] if id(k) in by_id else by_id.setdefault(id(k), row(k)) for k in manifest.known]
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), len(taxonomy.task_keys))


def manifest_dataset(manifest: Manifest, taxonomy: Taxonomy, transform, seed: int,
                     indices: Sequence[int] | None = None) -> LabeledImages:
    """The samples of ``manifest`` (or the subset ``indices``) as a seeded, resumable dataset."""
    idx = list(range(len(manifest))) if indices is None else list(indices)
    targets = targets_of(manifest, taxonomy)[idx] if idx else torch.empty(0, len(taxonomy.task_keys),
                                                                             dtype=torch.long)
    origin = Origin(str(manifest.file), manifest.kind, np.asarray([manifest.numbers[i] for i in idx]))
    return LabeledImages([manifest.files[i] for i in idx], targets, transform, seed, origin)


def split_manifest(manifest: Manifest, taxonomy: Taxonomy, val_fraction: float) -> tuple[list[int], list[int]]:
    """A deterministic per-leaf split (as ``split_per_class``) of a manifest without a val file;
    samples whose leaf is unknown form one group of their own."""
    leaf = taxonomy.leaf_level
    keyed = [(i, k.get(leaf, "")) for i, k in enumerate(manifest.known)]
    train, val = split_per_class(keyed, val_fraction)
    return sorted(i for i, _ in train), sorted(i for i, _ in val)


def log_label_counts(name: str, dataset: LabeledImages, task_keys: Sequence[str]) -> None:
    """One log line: how many images the split has and how many carry a label at each level."""
    known = (dataset.targets != IGNORE_INDEX).sum(0).tolist() if len(dataset) else [0] * len(task_keys)
    n = max(len(dataset), 1)
    per_level = ", ".join(f"{k} {c} ({100 * c / n:.0f}%)" for k, c in zip(task_keys, known))
    logger.info("%s: %d images; labels per level: %s", name, len(dataset), per_level)
