"""Any timm model as a feature trunk, with one classification head per taxonomic level."""

from __future__ import annotations

import difflib
from typing import Mapping

import timm
from timm.models import get_pretrained_cfg_value
import torch
from torch import nn

from linnaeus.models.heads import MultiLevelHeads, validate_num_classes


def check_timm_name(model_name: str) -> None:
    """Raise ``ValueError`` listing similar timm names when ``model_name`` is not registered."""
    if timm.is_model(model_name):
        return
    family = model_name.split("_")[0]
    same_family = timm.list_models(f"{family}*") if family else []
    close = difflib.get_close_matches(model_name, same_family or timm.list_models(), n=8, cutoff=0.5)
    hint = close or same_family[:10]
    raise ValueError(
        f"unknown timm model {model_name!r}. "
        + (f"Similar names: {', '.join(hint)}. " if hint else "")
        + f"List candidates with timm.list_models('{family}*')."
    )


class TimmMultiHead(nn.Module):
    """``trunk`` = ``timm.create_model(model_name, num_classes=0)``; ``heads.<level>`` on its features.

    ``img_size`` is passed to timm only for architectures whose pretrained config says
    ``fixed_input_size`` (ViTs, Swin, ...); convnets take any size.

    The trunk keeps timm's parameter names under ``trunk.``, so a timm checkpoint maps in
    by adding that prefix.
    """

    def __init__(
        self,
        model_name: str,
        num_classes: Mapping[str, int],
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        img_size: int | None = None,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        num_classes = validate_num_classes(num_classes)
        check_timm_name(model_name)
        if drop_path_rate > 0:
            # Only passed when asked for: some timm architectures have no stochastic depth.
            timm_kwargs["drop_path_rate"] = drop_path_rate
        if img_size is not None and get_pretrained_cfg_value(model_name, "fixed_input_size"):
            # Position embeddings / windows are sized at build time for these architectures.
            timm_kwargs["img_size"] = img_size
        try:
            self.trunk = timm.create_model(model_name, pretrained=False, num_classes=0, **timm_kwargs)
        except TypeError as e:
            raise ValueError(
                f"timm model {model_name!r} rejected the options {sorted(timm_kwargs)}: {e}. "
                "Remove the option (e.g. MODEL.DROP_PATH_RATE 0.0) for this architecture."
            ) from e
        self.model_name = model_name
        self.num_classes = num_classes
        # With num_classes=0 timm returns pre-logits, which can be wider than num_features
        # (e.g. MobileNetV3's conv head); head_hidden_size is that width when it exists.
        self.num_features = getattr(self.trunk, "head_hidden_size", None) or self.trunk.num_features
        self.head_drop = nn.Dropout(drop_rate)
        self.heads = MultiLevelHeads(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(B, num_features)``."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.head_drop(self.forward_features(x)))
