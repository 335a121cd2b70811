"""Hybrid ConvNeXt → RoPE-ViT classifier built from timm's own modules.

Layout (parameter-name prefixes), chosen so timm checkpoints map in by name:

- ``stem.*``, ``stages.{i}.*``  timm ``ConvNeXt`` stem and the first ``conv_stages`` stages,
  taken from a timm ConvNeXt of the mirrored variant (identical names, shapes and init).
- ``proj_norm.*``, ``proj.*``  LayerNorm + Linear from the last conv width to ``vit_dim``
  (the ConvNeXt → ViT transition; ConvNeXt itself starts every stage transition with a norm).
- ``rope.*``                 timm rotary embedding (``RotaryEmbeddingCat`` for axial RoPE as in
  ``vit_*_patch16_rope_224``, ``RotaryEmbeddingMixed`` for ``vit_*_patch16_rope_mixed_224``).
  Axial RoPE has no persistent state; mixed RoPE has the learnable ``rope.freqs``.
- ``blocks.{j}.*``           timm ``EvaBlock`` with ``attn_type='rope'``, exactly as timm's
  ``vit_*_patch16_rope_*`` models build them (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
  ``mlp.fc1``, ``mlp.fc2`` and, with layer scale, ``gamma_1`` / ``gamma_2``).
- ``norm.*``                 final LayerNorm over tokens, then mean pooling over tokens.
- ``heads.<level>.*``        one ``nn.Linear`` per taxonomic level.

There is no class token, register token, patch embedding or absolute position embedding:
the conv front is the tokenizer and RoPE is the only position signal. The rotary
embedding is computed for the feature-map grid of each input (``H / stride``, ``W / stride``),
so the model also runs at resolutions other than ``img_size``.
"""

from __future__ import annotations

import difflib
from typing import Mapping

import timm
import torch
from timm.layers import LayerNorm, create_rope_embed, trunc_normal_
from timm.models.convnext import ConvNeXt
from timm.models.eva import EvaBlock
from torch import nn
from torch.utils.checkpoint import checkpoint

from linnaeus.models.heads import MultiLevelHeads, validate_num_classes

ROPE_TYPES = {"axial": "cat", "mixed": "mixed"}


def convnext_variant_spec(variant: str) -> tuple[list[int], list[int], list[int]]:
    """``(depths, dims, reductions)`` per stage of a timm ConvNeXt variant.

    Read from a timm model built on the meta device (no memory, no init cost), so any
    registered ConvNeXt/ConvNeXt-V2 variant works without a hand-kept table.
    """
    if not timm.is_model(variant):
        similar = timm.list_models("convnext*")
        close = difflib.get_close_matches(variant, similar, n=5, cutoff=0.4)
        raise ValueError(
            f"unknown ConvNeXt variant {variant!r}. "
            f"Closest timm names: {close or similar[:10]}. Any timm 'convnext*' model name works."
        )
    meta = timm.create_model(variant, pretrained=False, num_classes=0, device="meta")
    if not isinstance(meta, ConvNeXt):
        raise ValueError(
            f"{variant!r} is a timm {type(meta).__name__}, not a ConvNeXt; "
            f"pick one of timm.list_models('convnext*'), e.g. 'convnext_atto'."
        )
    depths = [len(stage.blocks) for stage in meta.stages]
    dims = [info["num_chs"] for info in meta.feature_info]
    reductions = [info["reduction"] for info in meta.feature_info]
    return depths, dims, reductions


class HybridConvNeXtRoPEViT(nn.Module):
    """ConvNeXt stem + first stages → RoPE-ViT blocks → mean pool → one head per level.

    Args:
        num_classes: ``{level: number of classes}``, leaf level first.
        convnext_variant: timm ConvNeXt whose stem/stages (widths, depths, kernel, MLP
            style, layer scale, GRN) the conv front mirrors.
        conv_stages: how many ConvNeXt stages (from the first) to keep.
        vit_depth / vit_dim / vit_heads / mlp_ratio: the RoPE-ViT stack.
        rope_theta: rotary frequency base (timm ``rope_temperature``; naver axial uses 100,
            mixed uses 10 as its init temperature).
        rope_type: ``"axial"`` (fixed frequencies) or ``"mixed"`` (learnable per block/head).
        layer_scale_init: ViT layer-scale init value; 0 builds blocks without ``gamma_*``.
        drop_rate: dropout before the heads.
        drop_path_rate: stochastic depth, linear from 0 over all conv blocks then ViT blocks.
        img_size: nominal square input size (sets ``grid_size``; other sizes also run).
        in_chans: input channels.
    """

    def __init__(
        self,
        num_classes: Mapping[str, int],
        convnext_variant: str = "convnext_atto",
        conv_stages: int = 2,
        vit_depth: int = 4,
        vit_dim: int = 192,
        vit_heads: int = 3,
        mlp_ratio: float = 4.0,
        rope_theta: float = 100.0,
        rope_type: str = "axial",
        layer_scale_init: float = 0.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        img_size: int = 64,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        num_classes = validate_num_classes(num_classes)
        depths, dims, reductions = convnext_variant_spec(convnext_variant)
        _check_args(convnext_variant, len(depths), conv_stages, vit_depth, vit_dim, vit_heads, rope_type)

        conv_depth = sum(depths[:conv_stages])
        # One linear stochastic-depth schedule over conv blocks then ViT blocks, as if the
        # hybrid were a single network. timm's ConvNeXt spreads its rate linearly over its
        # own blocks, so handing it the rate its last kept block should get reproduces it.
        dpr = torch.linspace(0, drop_path_rate, conv_depth + vit_depth).tolist()
        conv = timm.create_model(
            convnext_variant,
            pretrained=False,
            num_classes=0,
            in_chans=in_chans,
            # Stages past conv_stages get depth 0 so they cost nothing before being dropped.
            depths=tuple(depths[:conv_stages]) + (0,) * (len(depths) - conv_stages),
            drop_path_rate=dpr[conv_depth - 1],
        )
        self.stem = conv.stem
        self.stages = nn.Sequential(*list(conv.stages)[:conv_stages])
        del conv

        self.convnext_variant = convnext_variant
        self.feature_stride = reductions[conv_stages - 1]
        self.grid_size = (img_size // self.feature_stride, img_size // self.feature_stride)
        self.img_size = img_size
        self.num_features = self.embed_dim = vit_dim
        self.num_classes = num_classes
        self.rope_type = rope_type
        self.grad_checkpointing = False

        conv_dim = dims[conv_stages - 1]
        self.proj_norm = LayerNorm(conv_dim)
        self.proj = nn.Linear(conv_dim, vit_dim)

        # Same arguments timm's Eva passes for vit_*_patch16_rope_* (xy grid indexing, index
        # coordinates, interleaved rotation), minus feat_shape: the grid comes from the input.
        if rope_type == "axial":
            self.rope = create_rope_embed(
                "cat", dim=vit_dim, num_heads=vit_heads, temperature=rope_theta, feat_shape=None,
                grid_indexing="xy", rotate_half=False, in_pixels=False, grid_offset=0.0,
            )
        else:
            self.rope = create_rope_embed(
                "mixed", dim=vit_dim, num_heads=vit_heads, depth=vit_depth, temperature=rope_theta,
                feat_shape=None, grid_indexing="xy",
            )
        self.blocks = nn.ModuleList([
            EvaBlock(
                dim=vit_dim,
                num_heads=vit_heads,
                qkv_bias=True,
                qkv_fused=True,
                mlp_ratio=mlp_ratio,
                attn_type="rope",
                rotate_half=False,
                num_prefix_tokens=0,
                drop_path=dpr[conv_depth + j],
                init_values=layer_scale_init if layer_scale_init > 0 else None,
                norm_layer=LayerNorm,
            )
            for j in range(vit_depth)
        ])
        self.norm = LayerNorm(vit_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.heads = MultiLevelHeads(vit_dim, num_classes)
        self._init_vit_weights()

    def _init_vit_weights(self) -> None:
        # timm Eva's init: trunc-normal linears, zero biases, residual projections scaled by depth.
        for module in [self.proj, *self.blocks]:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        with torch.no_grad():
            for j, blk in enumerate(self.blocks):
                scale = (2.0 * (j + 1)) ** 0.5
                blk.attn.proj.weight.div_(scale)
                blk.mlp.fc2.weight.div_(scale)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names timm's optimizer factory keeps out of weight decay."""
        return {f"rope.{n}" for n in getattr(self.rope, "no_weight_decay", lambda: set())()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward (timm convention) for conv stages and ViT blocks."""
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` → normalized tokens ``(B, H/stride * W/stride, vit_dim)``."""
        x = self.stages(self.stem(x))
        grid = (x.shape[-2], x.shape[-1])
        x = self.proj(self.proj_norm(x.flatten(2).transpose(1, 2)))
        rope = self.rope.get_embed(shape=grid)
        for j, blk in enumerate(self.blocks):
            # Mixed RoPE returns one embedding per block (depth first); axial shares one.
            blk_rope = rope[j] if self.rope_type == "mixed" else rope
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, rope=blk_rope, use_reentrant=False)
            else:
                x = blk(x, rope=blk_rope)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> dict[str, torch.Tensor] | torch.Tensor:
        """Tokens → mean-pooled features (``pre_logits``) or ``{level: logits}``."""
        x = self.head_drop(x.mean(dim=1))
        return x if pre_logits else self.heads(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))


def _check_args(
    variant: str, num_stages: int, conv_stages: int, vit_depth: int, vit_dim: int, vit_heads: int, rope_type: str
) -> None:
    if not 1 <= conv_stages <= num_stages:
        raise ValueError(f"conv_stages must be in 1..{num_stages} for {variant!r}, got {conv_stages}.")
    if vit_depth < 1:
        raise ValueError(f"vit_depth must be >= 1, got {vit_depth}.")
    if vit_heads < 1 or vit_dim % vit_heads:
        raise ValueError(f"vit_dim ({vit_dim}) must be divisible by vit_heads ({vit_heads}).")
    if (vit_dim // vit_heads) % 4:
        # 2-D RoPE splits each head into x/y halves of sin/cos pairs.
        raise ValueError(f"head dim vit_dim/vit_heads = {vit_dim // vit_heads} must be divisible by 4 for 2-D RoPE.")
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_type must be one of {sorted(ROPE_TYPES)}, got {rope_type!r}.")
