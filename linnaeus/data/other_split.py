"""Another data set to evaluate a trained model on (``linnaeus-eval --data FILE``): an iNaturalist JSON
or a CSV manifest, labelled against the model's own taxonomy by name.

The model's class indices are its training taxonomy's; a manifest names classes. A name the taxonomy
has maps to its index; a name it lacks (a species the model never learned) cannot be predicted right
and is left out of that rank's accuracy (its label there is ``IGNORE_INDEX``), and counted, so the
report can say how much of the data lies outside the model's taxonomy.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .csv_manifest import read_csv_manifest
from .folder import LabeledImages
from .inat import read_inat
from .manifest import Origin
from .sampler import ShardedEvalSampler
from .taxonomy import IGNORE_INDEX, DatasetError, Taxonomy


def read_split(path: str | Path, root: str | Path | None, task_keys: Sequence[str]):  # -> Manifest
    """``path`` as a manifest (``.json``: iNaturalist; ``.csv``), its images under ``root`` (default: its folder)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"--data {path}: no such file (an iNaturalist JSON or a CSV manifest).")
    root = Path(root).expanduser() if root else path.parent
    if path.suffix.lower() == ".json":
        return read_inat(path, root, task_keys)
    if path.suffix.lower() == ".csv":
        return read_csv_manifest(path, root, task_keys)
    raise DatasetError(f"--data {path}: expected an iNaturalist .json or a .csv manifest.")


def labelled_against(manifest, taxonomy: Taxonomy, transform, seed: int) -> tuple[LabeledImages, dict[str, int]]:
    """The manifest's images with labels in ``taxonomy``'s indices, and per rank how many images name a
    class the taxonomy lacks (labelled ``IGNORE_INDEX`` there)."""
    outside: Counter[str] = Counter()
    rows = []
    for known in manifest.known:
        row = []
        for level in taxonomy.task_keys:
            name = known.get(level)
            if name is None:
                row.append(IGNORE_INDEX)
                continue
            try:
                row.append(taxonomy.index(level, name))
            except KeyError:  # a class the model never learned
                outside[level] += 1
                row.append(IGNORE_INDEX)
        rows.append(row)
    targets = torch.tensor(rows, dtype=torch.long).reshape(len(rows), len(taxonomy.task_keys))
    origin = Origin(str(manifest.file), manifest.kind, np.asarray(manifest.numbers))
    return LabeledImages(list(manifest.files), targets, transform, seed, origin), dict(outside)


def eval_loader(dataset: LabeledImages, batch_size: int, rank: int, world_size: int, workers: int) -> DataLoader:
    """As the validation loader is built: each rank its own share, no padding."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardedEvalSampler(len(dataset), world_size, rank),
                      num_workers=workers, drop_last=False, pin_memory=torch.cuda.is_available())


__all__ = ["eval_loader", "labelled_against", "read_split"]
