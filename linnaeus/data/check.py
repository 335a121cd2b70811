"""Decode every image of a dataset up front: the optional, complete form of the check a run does
lazily (a run stops at the first image that does not decode; this lists them all first).

``python tools/check_data.py --cfg configs/x.yaml`` runs the manifest checks of a run's start
and then this, over train and val, in ``--workers`` processes.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

from .folder import LabeledImages
from .taxonomy import DatasetError

_dataset: LabeledImages | None = None  # per worker process, set by the pool initializer


def _init(dataset: LabeledImages) -> None:
    global _dataset
    _dataset = dataset


def _decode(indices: Sequence[int]) -> list[str]:
    problems = []
    for i in indices:
        try:
            _dataset.load_image(i)  # type: ignore[union-attr]
        except DatasetError as e:
            problems.append(str(e))
    return problems


def undecodable_images(dataset: LabeledImages, workers: int = 0, chunk: int = 256) -> list[str]:
    """One message per image of ``dataset`` that does not decode (file and manifest entry named)."""
    chunks = [range(s, min(s + chunk, len(dataset))) for s in range(0, len(dataset), chunk)]
    if workers <= 0:
        _init(dataset)
        return [p for c in chunks for p in _decode(c)]
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(dataset,)) as pool:
        return [p for found in pool.map(_decode, chunks) for p in found]
