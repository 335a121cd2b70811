"""Models: output contract, timm parameter names (what makes timm weights loadable), training paths."""

from __future__ import annotations

import pytest
import timm
import torch

from linnaeus.config import ConfigError, get_default_config
from linnaeus.models import HybridConvNeXtRoPEViT, TimmMultiHead, build_model

torch.set_num_threads(1)

NUM_CLASSES = {"species": 7, "genus": 4, "family": 2}
TINY = dict(vit_depth=2, vit_dim=64, vit_heads=2, img_size=64)


def _hybrid(**kw) -> HybridConvNeXtRoPEViT:
    torch.manual_seed(0)
    return HybridConvNeXtRoPEViT(NUM_CLASSES, **{**TINY, **kw})


def _assert_logits(out: dict, batch: int) -> None:
    assert list(out) == list(NUM_CLASSES), "one output per taxonomic level, in task order"
    for level, n in NUM_CLASSES.items():
        assert out[level].shape == (batch, n)
        assert torch.isfinite(out[level]).all()


@pytest.mark.parametrize(
    "conv_stages, vit_depth, layer_scale_init, rope_type, grid",
    [(1, 1, 0.0, "axial", 16), (2, 2, 1e-5, "axial", 8), (3, 3, 0.1, "mixed", 4)],
)
def test_hybrid_forward_shapes(conv_stages, vit_depth, layer_scale_init, rope_type, grid):
    m = _hybrid(conv_stages=conv_stages, vit_depth=vit_depth, layer_scale_init=layer_scale_init, rope_type=rope_type)
    assert m.grid_size == (grid, grid)
    assert len(m.stages) == conv_stages and len(m.blocks) == vit_depth
    x = torch.randn(2, 3, 64, 64)
    tokens = m.forward_features(x)
    assert tokens.shape == (2, grid * grid, 64)
    _assert_logits(m(x), 2)
    has_ls = any(k.endswith("gamma_1") for k in m.state_dict())
    assert has_ls == (layer_scale_init > 0)


def test_hybrid_rope_follows_input_grid():
    m = _hybrid(conv_stages=2).eval()
    # 96 px → 12x12 tokens: the rotary table must be built for the actual grid.
    assert m.forward_features(torch.randn(1, 3, 96, 96)).shape == (1, 144, 64)


def test_hybrid_rope_matches_timm_rope_vit():
    """Same rotary table as timm's vit_small_patch16_rope_224 on the same grid (8x8 here)."""
    m = _hybrid(conv_stages=2)
    vit = timm.create_model("vit_small_patch16_rope_224", depth=2, embed_dim=64, num_heads=2, img_size=128, num_classes=0)
    assert torch.equal(m.rope.get_embed(shape=m.grid_size), vit.rope.get_embed())


def _conv_keys(sd: dict, conv_stages: int) -> dict:
    return {
        k: v.shape for k, v in sd.items()
        if k.startswith("stem.") or any(k.startswith(f"stages.{i}.") for i in range(conv_stages))
    }


@pytest.mark.parametrize("variant, conv_stages", [("convnext_atto", 2), ("convnext_atto", 3), ("convnextv2_atto", 1)])
def test_conv_front_has_timm_convnext_names_and_shapes(variant, conv_stages):
    m = _hybrid(convnext_variant=variant, conv_stages=conv_stages)
    ref = timm.create_model(variant, pretrained=False).state_dict()
    ours = {k: v.shape for k, v in m.state_dict().items() if k.startswith(("stem.", "stages."))}
    assert ours == _conv_keys(ref, conv_stages)


@pytest.mark.parametrize("layer_scale_init", [0.0, 1e-5])
def test_vit_blocks_have_timm_rope_vit_names_and_shapes(layer_scale_init):
    m = _hybrid(vit_depth=2, layer_scale_init=layer_scale_init)
    # timm's RoPE-ViT always has layer scale (init_values=1e-5); without it the hybrid has the rest.
    vit = timm.create_model(
        "vit_small_patch16_rope_224", depth=2, embed_dim=64, num_heads=2, img_size=64, num_classes=0
    ).state_dict()
    ref = {k: v.shape for k, v in vit.items() if k.startswith(("blocks.", "norm."))}
    if layer_scale_init == 0:
        ref = {k: s for k, s in ref.items() if not k.endswith(("gamma_1", "gamma_2"))}
    ours = {k: v.shape for k, v in m.state_dict().items() if k.startswith(("blocks.", "norm."))}
    assert ours == ref


def test_mixed_rope_freqs_match_timm_mixed_rope_vit():
    m = _hybrid(vit_depth=2, rope_type="mixed", rope_theta=10.0)
    vit = timm.create_model("vit_small_patch16_rope_mixed_224", depth=2, embed_dim=64, num_heads=2, img_size=64)
    assert m.state_dict()["rope.freqs"].shape == vit.state_dict()["rope.freqs"].shape
    assert "rope.freqs" in m.no_weight_decay()


def test_head_names_one_linear_per_level():
    m = _hybrid()
    heads = {k: v.shape for k, v in m.state_dict().items() if k.startswith("heads.")}
    expected = {}
    for level, n in NUM_CLASSES.items():
        expected[f"heads.{level}.weight"] = (n, 64)
        expected[f"heads.{level}.bias"] = (n,)
    assert heads == expected


def test_hybrid_backward_reaches_every_parameter():
    m = _hybrid(conv_stages=2, layer_scale_init=1e-5, rope_type="mixed", drop_path_rate=0.1, drop_rate=0.1)
    m.train()
    out = m(torch.randn(2, 3, 64, 64))
    sum(o.logsumexp(-1).sum() for o in out.values()).backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"


def test_hybrid_grad_checkpointing_same_gradients():
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for ckpt in (False, True):
        m = _hybrid(conv_stages=2).train()
        m.set_grad_checkpointing(ckpt)
        sum(o.sum() for o in m(x).values()).backward()
        grads.append(m.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_hybrid_bf16_autocast_forward_backward():
    m = _hybrid(conv_stages=2, layer_scale_init=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(2, 3, 64, 64))
    for level, n in NUM_CLASSES.items():
        assert out[level].shape == (2, n) and out[level].dtype == torch.bfloat16
        assert torch.isfinite(out[level].float()).all()
    sum(o.float().sum() for o in out.values()).backward()
    assert m.stem[0].weight.grad is not None and torch.isfinite(m.stem[0].weight.grad).all()


def test_hybrid_drop_path_schedule_is_linear_over_conv_then_vit():
    m = _hybrid(conv_stages=2, vit_depth=2, drop_path_rate=0.3)  # atto: 2 + 2 conv blocks, then 2 ViT
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in m.stages for b in s.blocks]
    rates += [getattr(b.drop_path1, "drop_prob", 0.0) for b in m.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 6))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(conv_stages=5), "conv_stages must be in 1..4"),
        (dict(vit_dim=64, vit_heads=3), "divisible by vit_heads"),
        (dict(vit_dim=40, vit_heads=4), "divisible by 4"),
        (dict(convnext_variant="convnext_attoo"), "convnext_atto"),
        (dict(convnext_variant="resnet18"), "not a ConvNeXt"),
        (dict(rope_type="spiral"), "rope_type"),
    ],
)
def test_hybrid_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _hybrid(**kwargs)


@pytest.mark.parametrize("name, img", [("resnet18", 64), ("vit_tiny_patch16_224", 64)])
def test_timm_multihead_forward(name, img):
    torch.manual_seed(0)
    m = TimmMultiHead(name, NUM_CLASSES, drop_rate=0.1, img_size=img)
    assert m.state_dict().keys() >= {f"heads.{lvl}.weight" for lvl in NUM_CLASSES}
    out = m(torch.randn(2, 3, img, img))
    _assert_logits(out, 2)
    sum(o.sum() for o in out.values()).backward()
    # The trunk keeps timm's names under "trunk." so timm checkpoints map by prefix.
    ref = timm.create_model(name, num_classes=0, img_size=img) if "vit" in name else timm.create_model(name, num_classes=0)
    assert {k[len("trunk."):] for k in m.state_dict() if k.startswith("trunk.")} == set(ref.state_dict())


def test_build_model_from_config():
    cfg = get_default_config()
    cfg.MODEL.HYBRID.VIT_DEPTH, cfg.MODEL.HYBRID.VIT_DIM, cfg.MODEL.HYBRID.VIT_HEADS = 1, 64, 2
    cfg.MODEL.HYBRID.CONV_STAGES = 3
    m = build_model(cfg, NUM_CLASSES)
    assert isinstance(m, HybridConvNeXtRoPEViT) and len(m.stages) == 3 and m.grid_size == (4, 4)
    _assert_logits(m(torch.randn(1, 3, 64, 64)), 1)

    cfg.MODEL.TYPE, cfg.MODEL.TIMM_NAME = "timm", "resnet18"
    m = build_model(cfg, NUM_CLASSES)
    assert isinstance(m, TimmMultiHead)
    _assert_logits(m(torch.randn(1, 3, 64, 64)), 1)


def test_build_model_unknown_timm_name_lists_similar_names():
    cfg = get_default_config()
    cfg.MODEL.TYPE, cfg.MODEL.TIMM_NAME = "timm", "resnet19"
    with pytest.raises(ConfigError, match=r"MODEL.TIMM_NAME.*'resnet19'.*resnet18"):
        build_model(cfg, NUM_CLASSES)


def test_build_model_bad_hybrid_size_names_the_key():
    cfg = get_default_config()
    cfg.MODEL.HYBRID.VIT_HEADS = 5
    with pytest.raises(ConfigError, match=r"MODEL.HYBRID.*vit_heads"):
        build_model(cfg, NUM_CLASSES)


def test_bad_level_names_rejected():
    with pytest.raises(ValueError, match="without '.'"):
        HybridConvNeXtRoPEViT({"sub.species": 3}, **TINY)
    with pytest.raises(ValueError, match="at least one"):
        TimmMultiHead("resnet18", {})
