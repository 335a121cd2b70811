"""Train/eval image transforms (torchvision v2), normalised like timm's ImageNet models.

Every random draw in these transforms comes from torch's global generator, which
``HierarchicalImageFolder`` seeds per ``(seed, epoch, index)``.
"""

from __future__ import annotations

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2
from yacs.config import CfgNode


def _to_normalized_tensor() -> list:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD),
    ]


def build_train_transform(img_size: int, scale_min: float = 0.08, hflip: float = 0.5) -> v2.Compose:
    """RandomResizedCrop(scale=(scale_min, 1)) → horizontal flip with probability ``hflip`` → normalise."""
    if not 0.0 < scale_min <= 1.0:
        raise ValueError(f"DATA.AUG_SCALE_MIN must be in (0, 1], got {scale_min}.")
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"DATA.AUG_HFLIP must be in [0, 1], got {hflip}.")
    ops: list = [v2.RandomResizedCrop(img_size, scale=(scale_min, 1.0), antialias=True)]
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(p=hflip))
    return v2.Compose(ops + _to_normalized_tensor())


def build_eval_transform(img_size: int) -> v2.Compose:
    """Resize the short side to ``img_size``, centre-crop a square, normalise (deterministic)."""
    return v2.Compose(
        [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)] + _to_normalized_tensor()
    )


def build_transforms(cfg: CfgNode) -> tuple[v2.Compose, v2.Compose]:
    """``(train_transform, eval_transform)`` from the DATA section of the config."""
    d = cfg.DATA
    return (
        build_train_transform(d.IMG_SIZE, d.AUG_SCALE_MIN, d.AUG_HFLIP),
        build_eval_transform(d.IMG_SIZE),
    )
