"""``build_model(cfg, num_classes)``: the one place MODEL.* keys become a module."""

from __future__ import annotations

from typing import Mapping

from torch import nn
from yacs.config import CfgNode

from linnaeus.config import ConfigError
from linnaeus.models.hybrid import HybridConvNeXtRoPEViT
from linnaeus.models.timm_multihead import TimmMultiHead


def build_model(cfg: CfgNode, num_classes: Mapping[str, int]) -> nn.Module:
    """Model for MODEL.TYPE with one head per taxonomic level; ``forward(x) -> {level: logits}``.

    Bad sizes or names raise ``ConfigError`` naming the config keys to change.
    """
    m = cfg.MODEL
    if m.TYPE == "hybrid":
        h = m.HYBRID
        try:
            return HybridConvNeXtRoPEViT(
                num_classes,
                convnext_variant=h.CONVNEXT_VARIANT,
                conv_stages=h.CONV_STAGES,
                vit_depth=h.VIT_DEPTH,
                vit_dim=h.VIT_DIM,
                vit_heads=h.VIT_HEADS,
                mlp_ratio=h.MLP_RATIO,
                rope_theta=h.ROPE_THETA,
                rope_type=h.ROPE_TYPE,
                layer_scale_init=h.LAYER_SCALE_INIT,
                drop_rate=m.DROP_RATE,
                drop_path_rate=m.DROP_PATH_RATE,
                img_size=cfg.DATA.IMG_SIZE,
            )
        except ValueError as e:
            raise ConfigError(f"MODEL.HYBRID (MODEL.TYPE 'hybrid'): {e}") from e
    if m.TYPE == "timm":
        try:
            return TimmMultiHead(
                m.TIMM_NAME,
                num_classes,
                drop_rate=m.DROP_RATE,
                drop_path_rate=m.DROP_PATH_RATE,
                img_size=cfg.DATA.IMG_SIZE,
            )
        except ValueError as e:
            raise ConfigError(f"MODEL.TIMM_NAME: {e}") from e
    raise ConfigError(f"MODEL.TYPE must be 'hybrid' or 'timm', got {m.TYPE!r}.")
