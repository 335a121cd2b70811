"""Class-per-folder image dataset with hierarchical labels and per-sample seeded augmentation.

Layout: ``root/<leaf class>/<image>.{png,jpg,...}``; every class folder needs an entry in
the taxonomy file. Samples are listed in sorted order so every rank and every run sees
the same index → file mapping.

Augmentation randomness is derived from ``(seed, epoch, index)`` inside ``__getitem__``
under a forked RNG: an image is augmented the same way whichever worker loads it and
however many workers there are, and the caller's RNG stream is never consumed. That is
what makes a resumed run see exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import random
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, get_worker_info
from torchvision.datasets.folder import IMG_EXTENSIONS

from .taxonomy import DatasetError, Taxonomy

Sample = tuple[Path, str]  # (image file, leaf class name)
Key = Union[int, tuple[int, int]]


def _is_image(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMG_EXTENSIONS and path.is_file()


def scan_image_folder(root: str | os.PathLike, taxonomy: Taxonomy) -> list[Sample]:
    """Sorted ``(file, leaf)`` pairs under ``root/<leaf>/``; bad layouts raise DatasetError."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}. Expected root/<class folder>/<images>.")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"dataset folder {root} has no class folders; expected root/<class folder>/<images>.")
    samples: list[Sample] = []
    for d in class_dirs:
        if d.name not in taxonomy:
            taxonomy.labels(d.name)  # raises the error that names the folder, the file and the fix
        files = sorted(p for p in d.iterdir() if _is_image(p))
        if not files:
            raise DatasetError(
                f"class folder {d} contains no images (extensions {', '.join(IMG_EXTENSIONS)}). "
                "Add images to it or remove the folder."
            )
        samples.extend((p, d.name) for p in files)
    return samples


def split_per_class(samples: Sequence[Sample], val_fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Deterministic per-class train/val split holding out ``val_fraction`` of each class.

    The split is seeded by the class name only, not by EXPERIMENT.SEED, so runs with
    different seeds are validated on the same images. Every class keeps at least one
    training image, and (when ``val_fraction > 0`` and it has two or more) one validation image.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"DATA.VAL_FRACTION must be in [0, 1), got {val_fraction}.")
    by_class: dict[str, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train: list[Sample] = []
    val: list[Sample] = []
    for leaf in sorted(by_class):
        items = sorted(by_class[leaf])
        n_val = min(int(round(len(items) * val_fraction)), len(items) - 1)
        if val_fraction > 0 and len(items) >= 2:
            n_val = max(n_val, 1)
        held = set(random.Random(zlib.crc32(leaf.encode())).sample(range(len(items)), n_val))
        for i, s in enumerate(items):
            (val if i in held else train).append(s)
    return train, val


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one (epoch, index) draw; independent streams per sample."""
    return int(np.random.SeedSequence([seed & (2**63 - 1), epoch, index]).generate_state(1, np.uint64)[0] >> 1)


def _seed_all(seed: int) -> None:
    # The CPU generator directly: torch.manual_seed also queues seeding of every accelerator
    # backend, ~300 us a call, a few percent of a small JPEG's decode + augmentation.
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch (CPU), python ``random`` and numpy for the block, then restore all three.

    torchvision transforms draw from torch; timm's RandAugment and other third-party
    transforms draw from ``random``/numpy, so all three are pinned to the sample's seed.
    In a DataLoader worker nothing else draws from these generators (every sample seeds them
    afresh), so they are seeded and not restored: saving and restoring numpy's state alone
    cost ~250 us a sample (benchmarks/data_throughput.py).
    """
    if get_worker_info() is not None:
        _seed_all(seed)
        yield
        return
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        _seed_all(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class LabeledImages(Dataset):
    """``dataset[(epoch, index)]`` or ``dataset[index]`` → ``(image, LongTensor[num_levels])`` for
    an explicit list of image files and their label rows (``IGNORE_INDEX`` where a rank is unknown).

    Args:
        files: image paths (held in one byte buffer; ``path(i)`` gives one back as ``str``).
        targets: LongTensor[len(files), num_levels].
        transform: callable applied to the RGB PIL image (e.g. from ``build_transforms``).
        seed: base seed for augmentation randomness (EXPERIMENT.SEED).
        origin: names where sample ``i`` was listed (``origin(i)`` → e.g. "train.csv line 12"),
            so that a decode error points at the manifest entry as well as the file.
    """

    def __init__(self, files: Sequence[str | os.PathLike], targets: torch.Tensor, transform: Callable | None = None,
                 seed: int = 0, origin: Callable[[int], str] | None = None) -> None:
        if targets.ndim != 2 or targets.shape[0] != len(files):
            raise ValueError(f"LabeledImages: targets must be [{len(files)}, levels], got {tuple(targets.shape)}.")
        # All paths in one byte buffer + offsets, not a list of str: DataLoader workers forked from
        # this process would otherwise copy every page of a million-path list as reading it touches
        # refcounts (and a fixed-width numpy string array pads every path to the longest).
        encoded = [os.fsencode(f) for f in files]
        self._paths = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self.targets = targets
        self.transform = transform
        self.seed = int(seed)
        self.origin = origin

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def path(self, index: int) -> str:
        """The image file of sample ``index``."""
        return os.fsdecode(self._paths[self._offsets[index]:self._offsets[index + 1]].tobytes())

    def _where(self, index: int) -> str:
        return self.origin(index) if self.origin is not None else f"sample {index}"

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index``; unreadable files raise DatasetError naming the file."""
        path = self.path(index)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")  # convert() forces a full decode, so truncation shows up here
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise DatasetError(
                f"cannot read image {path} ({self._where(index)}): {type(e).__name__}: {e}. "
                "Replace or delete the file."
            ) from e

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = (0, key) if isinstance(key, (int, np.integer)) else key
        index = int(index)
        image = self.load_image(index)
        if self.transform is not None:
            with seeded_rngs(sample_seed(self.seed, int(epoch), index)):
                image = self.transform(image)
        return image, self.targets[index].clone()


class HierarchicalImageFolder(LabeledImages):
    """``dataset[(epoch, index)]`` or ``dataset[index]`` → ``(image, LongTensor[num_levels])``.

    Args:
        root: dataset folder (``root/<leaf>/<images>``); scanned when ``samples`` is None.
        taxonomy: maps each leaf folder to its labels at every level.
        transform: callable applied to the RGB PIL image (e.g. from ``build_transforms``).
        seed: base seed for augmentation randomness (EXPERIMENT.SEED).
        samples: an explicit ``(file, leaf)`` list (e.g. one side of ``split_per_class``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        taxonomy: Taxonomy,
        transform: Callable | None = None,
        seed: int = 0,
        samples: Sequence[Sample] | None = None,
    ) -> None:
        self.root = Path(root)
        self.taxonomy = taxonomy
        self.samples: list[Sample] = list(samples) if samples is not None else scan_image_folder(root, taxonomy)
        leaf_labels = {leaf: taxonomy.labels(leaf) for leaf in sorted({leaf for _, leaf in self.samples})}
        # one row per sample; a (N, levels) tensor is cheap to share with workers
        targets = torch.tensor(
            [leaf_labels[leaf] for _, leaf in self.samples], dtype=torch.long
        ).reshape(len(self.samples), len(taxonomy.task_keys))
        super().__init__([p for p, _ in self.samples], targets, transform, seed)

    def _where(self, index: int) -> str:
        return f"sample {index} of {self.root}"
