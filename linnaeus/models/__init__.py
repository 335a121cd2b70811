"""Models: hybrid ConvNeXt → RoPE-ViT and any-timm trunks, both with one head per taxonomic level."""

from linnaeus.models.build import build_model
from linnaeus.models.heads import MultiLevelHeads
from linnaeus.models.hybrid import HybridConvNeXtRoPEViT
from linnaeus.models.timm_multihead import TimmMultiHead

__all__ = ["build_model", "HybridConvNeXtRoPEViT", "MultiLevelHeads", "TimmMultiHead"]
