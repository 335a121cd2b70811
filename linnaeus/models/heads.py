"""One linear classifier per taxonomic level.

The heads live in an ``nn.ModuleDict`` subclass so their parameters are named
``heads.<level>.weight`` / ``heads.<level>.bias``: a taxonomy change shows up in a load
report as exactly those keys, and nothing else.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from timm.layers import trunc_normal_


def validate_num_classes(num_classes: Mapping[str, int]) -> dict[str, int]:
    """Check ``{level: n_classes}`` and return it as a plain dict (insertion order kept)."""
    if not num_classes:
        raise ValueError("num_classes must name at least one taxonomic level, e.g. {'species': 10}.")
    out: dict[str, int] = {}
    for level, n in num_classes.items():
        if not isinstance(level, str) or not level or "." in level:
            # ModuleDict keys become parameter-name components; a '.' would break state dict keys.
            raise ValueError(f"taxonomic level name {level!r} must be a non-empty string without '.'.")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"level {level!r}: number of classes must be a positive int, got {n!r}.")
        out[level] = n
    return out


class MultiLevelHeads(nn.ModuleDict):
    """``nn.Linear(in_features, n)`` per level; ``forward(x) -> {level: logits}``."""

    def __init__(self, in_features: int, num_classes: Mapping[str, int]) -> None:
        num_classes = validate_num_classes(num_classes)
        super().__init__({level: nn.Linear(in_features, n) for level, n in num_classes.items()})
        self.num_classes = num_classes
        for head in self.values():
            trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {level: head(x) for level, head in self.items()}
