"""Images to predict on, from what a user points at: files, folders (searched recursively) and CSVs
with a ``path`` column. Loading never raises for one bad image: an unreadable file becomes a row that
says why (:class:`ImagesToPredict`), so one corrupt photo never stops a batch of thousands.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Iterable

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from .taxonomy import DatasetError

# What a folder search picks up (case-insensitive); a file named explicitly is tried whatever its suffix.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def find_images(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """Every image ``sources`` name, in the order given (a folder's files sorted by path). A source is an
    image file, a folder, or a ``.csv`` whose ``path`` column names images (relative to the CSV's folder).
    Raises :class:`DatasetError` naming a source that does not exist or a CSV without a ``path`` column."""
    found: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.suffix.lower() == ".csv" and path.is_file():
            found += _from_csv(path)
        elif path.is_file():
            found.append(path)
        else:
            raise DatasetError(f"{path}: no such image, folder or CSV file.")
    return found


def _from_csv(path: Path) -> list[Path]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise DatasetError(f"{path}: a CSV of images needs a 'path' column; its columns are {reader.fieldnames}.")
        return [(path.parent / row["path"]) if not Path(row["path"]).is_absolute() else Path(row["path"])
                for row in reader if row["path"]]


def load_rgb(path: Path) -> Image.Image:
    """The image as RGB, turned upright as its EXIF orientation says (as photo viewers show it)."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")  # convert() decodes fully: truncation shows here


class ImagesToPredict(Dataset):
    """``dataset[i]`` → ``(image tensor, i, error)``: ``error`` is "" for an image that loaded, else why it
    could not be read (the image is then zeros of the right shape, and its row says so)."""

    def __init__(self, paths: list[Path], transform: Callable, img_size: int) -> None:
        self.paths, self.transform, self.img_size = paths, transform, img_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            return self.transform(load_rgb(self.paths[index])), index, ""
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            return torch.zeros(3, self.img_size, self.img_size), index, f"{type(e).__name__}: {e}"


__all__ = ["IMAGE_SUFFIXES", "ImagesToPredict", "find_images", "load_rgb"]
