"""Pretrained / transfer loading: real files written by torch.save and safetensors, real timm models."""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from linnaeus.checkpoint import CheckpointCorruptError, CheckpointIncompatibleError, CheckpointNotFoundError
from linnaeus.checkpoint.load_report import write_load_reports
from linnaeus.checkpoint.loading import load_weights, read_weights
from linnaeus.models import HybridConvNeXtRoPEViT, TimmMultiHead
from linnaeus.models.pretrained import load_pretrained

torch.set_num_threads(1)

DIM, HEADS = 64, 2


def hybrid(num_classes=None, **kw) -> HybridConvNeXtRoPEViT:
    args = dict(conv_stages=2, vit_depth=2, vit_dim=DIM, vit_heads=HEADS, layer_scale_init=1e-5, img_size=64)
    return HybridConvNeXtRoPEViT(num_classes or {"species": 5, "genus": 3}, **{**args, **kw})


def rope_vit(name="vit_small_patch16_rope_224", depth=3, **kw) -> torch.nn.Module:
    torch.manual_seed(1)
    return timm.create_model(name, depth=depth, embed_dim=DIM, num_heads=HEADS, img_size=128, num_classes=10, **kw)


def contiguous(sd):
    return OrderedDict((k, v.contiguous().clone()) for k, v in sd.items())


def assert_same(model, expected: dict[str, torch.Tensor]):
    sd = model.state_dict()
    for k, v in expected.items():
        assert torch.equal(sd[k], v.reshape(sd[k].shape)), k


# ----------------------------------------------------------------------------- ConvNeXt
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_convnext_maps_into_stem_and_kept_stages(tmp_path, fmt):
    torch.manual_seed(0)
    convnext = timm.create_model("convnext_atto").eval()
    src = contiguous(convnext.state_dict())
    path = tmp_path / f"convnext_atto.{fmt}"
    save_file(src, path) if fmt == "safetensors" else torch.save(src, path)
    model = hybrid()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    [report] = load_pretrained(model, pretrained_convnext=str(path), strategy="strict")

    kept = {k: v for k, v in src.items() if k.startswith(("stem.", "stages.0.", "stages.1."))}
    assert set(report.loaded) == set(kept)
    assert_same(model, kept)
    # Nothing outside the conv front changed.
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith(("stem.", "stages.")))
    dropped = {i.key for i in report.unexpected}
    assert dropped == {k for k in src if k.startswith(("stages.2.", "stages.3.", "head."))}
    assert all(i.expected for i in report.unexpected) and not report.warnings and report.ok
    # The conv front now computes timm's first two stages.
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().stages(model.stem(x)), convnext.stages[:2](convnext.stem(x)))


def _to_facebook_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ConvNeXt keys → facebookresearch/ConvNeXt keys (pwconv as nn.Linear, 2-D)."""
    out = {}
    for k, v in sd.items():
        k2 = k.replace("stem.", "downsample_layers.0.")
        k2 = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k2)
        k2 = re.sub(r"stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k2)
        k2 = k2.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        k2 = k2.replace("head.norm.", "norm.").replace("head.fc.", "head.")
        if ".pwconv" in k2 and v.dim() == 4:
            v = v.flatten(1)  # FB uses Linear layers where convnext_atto (conv_mlp) uses 1x1 convs
        out[k2] = v
    return out


def test_facebook_convnext_layout_maps_with_reshape(tmp_path):
    torch.manual_seed(0)
    timm_sd = contiguous(timm.create_model("convnext_atto", num_classes=10).state_dict())
    fb = _to_facebook_layout(timm_sd)
    assert "downsample_layers.1.1.weight" in fb and fb["stages.0.0.pwconv1.weight"].dim() == 2
    torch.save({"model": fb}, tmp_path / "convnext_fb.pth")
    model = hybrid(conv_stages=3)
    [report] = load_pretrained(model, pretrained_convnext=str(tmp_path / "convnext_fb.pth"), strategy="strict")
    kept = {k: v for k, v in timm_sd.items() if k.startswith(("stem.", "stages.0.", "stages.1.", "stages.2."))}
    assert_same(model, kept)
    assert report.renamed["stages.1.downsample.1.weight"] == "downsample_layers.1.1.weight"
    assert any("reshaped" in n for n in report.notes)
    assert {i.key for i in report.unexpected} == {k for k in fb if k.startswith(("stages.3.", "downsample_layers.3.", "norm.", "head."))}


def test_wrong_convnext_variant_is_reported_not_loaded(tmp_path):
    torch.save(timm.create_model("convnext_pico").state_dict(), tmp_path / "pico.pth")
    model = hybrid()
    [report] = load_pretrained(model, pretrained_convnext=str(tmp_path / "pico.pth"), strategy="transfer")
    assert report.shape_mismatched and not any(i.expected for i in report.shape_mismatched)
    assert any("different shape" in w for w in report.warnings)
    with pytest.raises(CheckpointIncompatibleError, match=r"stem.0.weight: checkpoint \(64, 3, 4, 4\) vs model \(40, 3, 4, 4\)"):
        load_pretrained(model, pretrained_convnext=str(tmp_path / "pico.pth"), strategy="weights_only")


# ----------------------------------------------------------------------------- RoPE-ViT
def _run_blocks(blocks, norm, rope, x, mixed=False):
    for j, blk in enumerate(blocks):
        x = blk(x, rope=rope[j] if mixed else rope)
    return norm(x)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_rope_vit_blocks_map_and_compute_the_same(tmp_path, fmt):
    vit = rope_vit(depth=2, class_token=False, global_pool="avg", use_fc_norm=False).eval()
    src = contiguous(vit.state_dict())
    path = tmp_path / f"rope.{fmt}"
    save_file(src, path) if fmt == "safetensors" else torch.save(src, path)
    model = hybrid().eval()
    [report] = load_pretrained(model, pretrained_ropevit=str(path), strategy="strict")
    assert_same(model, {k: v for k, v in src.items() if k.startswith(("blocks.", "norm."))})
    assert {i.key for i in report.unexpected} == {"patch_embed.proj.weight", "patch_embed.proj.bias", "head.weight", "head.bias"}
    # Same tokens, same 8x8 grid: the mapped stack computes exactly what timm's does.
    x = torch.randn(2, 64, DIM)
    with torch.no_grad():
        ours = _run_blocks(model.blocks, model.norm, model.rope.get_embed(shape=(8, 8)), x)
        theirs = _run_blocks(vit.blocks, vit.norm, vit.rope.get_embed(), x)
    torch.testing.assert_close(ours, theirs)


def test_rope_vit_block_mapping(tmp_path):
    vit = rope_vit(depth=3)
    src = contiguous(vit.state_dict())
    torch.save(src, tmp_path / "rope.pth")
    model = hybrid()
    [report] = load_pretrained(model, pretrained_ropevit=str(tmp_path / "rope.pth"), ropevit_blocks=[2, 0], strategy="strict")
    sd = model.state_dict()
    for k in ("attn.qkv.weight", "mlp.fc2.bias", "gamma_1"):
        assert torch.equal(sd[f"blocks.0.{k}"], src[f"blocks.2.{k}"])
        assert torch.equal(sd[f"blocks.1.{k}"], src[f"blocks.0.{k}"])
    assert report.renamed["blocks.0.attn.qkv.weight"] == "blocks.2.attn.qkv.weight"
    skipped = [i for i in report.unexpected if i.key.startswith("blocks.1.")]
    assert skipped and all(i.expected and "block mapping" in i.reason for i in skipped)

    with pytest.raises(ValueError, match="PRETRAINED_ROPEVIT_BLOCKS has 3 entries but the hybrid has 2"):
        load_pretrained(model, pretrained_ropevit=str(tmp_path / "rope.pth"), ropevit_blocks=[0, 1, 2])
    with pytest.raises(CheckpointIncompatibleError, match=r"selects source blocks \[5\].*has 3 blocks"):
        load_pretrained(model, pretrained_ropevit=str(tmp_path / "rope.pth"), ropevit_blocks=[0, 5])


def test_layer_scale_into_a_hybrid_without_it_warns_how_to_load_it(tmp_path):
    torch.save(contiguous(rope_vit(depth=2).state_dict()), tmp_path / "rope.pth")
    model = hybrid(layer_scale_init=0.0)
    [report] = load_pretrained(model, pretrained_ropevit=str(tmp_path / "rope.pth"), strategy="transfer")
    gammas = [i for i in report.unexpected if i.key.endswith(("gamma_1", "gamma_2"))]
    assert len(gammas) == 4 and not any(i.expected for i in gammas)
    assert any("MODEL.HYBRID.LAYER_SCALE_INIT" in w for w in report.warnings)
    with pytest.raises(CheckpointIncompatibleError, match="gamma_1"):
        load_pretrained(hybrid(layer_scale_init=0.0), pretrained_ropevit=str(tmp_path / "rope.pth"), strategy="strict")


def test_shallower_source_leaves_extra_blocks_reported(tmp_path):
    torch.save(rope_vit(depth=1).state_dict(), tmp_path / "rope1.pth")
    model = hybrid()
    [report] = load_pretrained(model, pretrained_ropevit=str(tmp_path / "rope1.pth"), strategy="transfer")
    assert {i.key.split(".")[1] for i in report.missing} == {"1"} and not any(i.expected for i in report.missing)
    assert any("blocks.1" in w for w in report.warnings)
    with pytest.raises(CheckpointIncompatibleError, match="blocks.1.attn.qkv.weight"):
        load_pretrained(model, pretrained_ropevit=str(tmp_path / "rope1.pth"), strategy="weights_only")


def _to_naver_layout(sd: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """timm vit_*_rope_mixed_* → naver-ai/rope-vit (DeiT-style, flat learned freqs, grid buffers)."""
    out = {k: v for k, v in sd.items() if not k.startswith("rope.")}
    freqs = sd["rope.freqs"]  # (2, depth, heads, head_dim/2)
    out["freqs"] = freqs.reshape(2, freqs.shape[1], -1)  # naver: view(2, depth, -1)
    out["freqs_t_x"] = torch.arange(64.0) % 8
    out["freqs_t_y"] = torch.div(torch.arange(64.0), 8, rounding_mode="floor")
    return out


def test_naver_rope_mixed_layout(tmp_path):
    vit = rope_vit("vit_small_patch16_rope_mixed_224", depth=3)
    src = contiguous(vit.state_dict())
    torch.save({"model": _to_naver_layout(src, HEADS), "epoch": 300}, tmp_path / "rope_mixed_deit_small.pth")
    model = hybrid(rope_type="mixed", rope_theta=10.0)
    [report] = load_pretrained(model, pretrained_ropevit=str(tmp_path / "rope_mixed_deit_small.pth"),
                               ropevit_blocks=[1, 2], strategy="strict")
    assert torch.equal(model.rope.freqs, src["rope.freqs"][:, [1, 2]])
    assert torch.equal(model.blocks[0].gamma_2, src["blocks.1.gamma_2"])
    expected_unused = {i.key: i.reason for i in report.unexpected}
    assert "rotary grid buffer" in expected_unused["freqs_t_x"] and "token" in expected_unused["cls_token"]

    # The same learned frequencies cannot go into an axial hybrid: not silently dropped.
    axial = hybrid()
    [report] = load_pretrained(axial, pretrained_ropevit=str(tmp_path / "rope_mixed_deit_small.pth"), strategy="transfer")
    assert any("ROPE_TYPE mixed" in w for w in report.warnings)
    with pytest.raises(CheckpointIncompatibleError, match="rope.freqs"):
        load_pretrained(axial, pretrained_ropevit=str(tmp_path / "rope_mixed_deit_small.pth"), strategy="strict")


def test_timm_vit_layer_scale_names_map_to_gamma(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", depth=2, embed_dim=DIM, num_heads=HEADS, img_size=64,
                            init_values=1e-3, num_classes=0)
    src = contiguous(vit.state_dict())
    assert "blocks.0.ls1.gamma" in src
    torch.save(src, tmp_path / "vit.pth")
    model = hybrid()
    [report] = load_pretrained(model, pretrained_ropevit=str(tmp_path / "vit.pth"), strategy="strict")
    assert torch.equal(model.blocks[1].gamma_1, src["blocks.1.ls1.gamma"])
    assert torch.equal(model.blocks[1].gamma_2, src["blocks.1.ls2.gamma"])
    assert report.renamed["blocks.1.gamma_1"] == "blocks.1.ls1.gamma"


def test_eva_style_qv_bias_becomes_fused_qkv_bias(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("vit_medium_patch16_rope_reg1_gap_256", depth=2, embed_dim=DIM, num_heads=HEADS,
                            img_size=64, num_classes=0)
    src = contiguous(vit.state_dict())
    torch.save(src, tmp_path / "eva.pth")
    model = hybrid()
    [report] = load_pretrained(model, pretrained_ropevit=str(tmp_path / "eva.pth"), strategy="transfer")
    q, v = src["blocks.0.attn.q_bias"], src["blocks.0.attn.v_bias"]
    assert torch.equal(model.blocks[0].attn.qkv.bias, torch.cat([q, torch.zeros_like(q), v]))
    assert torch.equal(model.blocks[0].attn.qkv.weight, src["blocks.0.attn.qkv.weight"])
    flagged = {i.key: i.expected for i in report.unexpected}
    assert flagged["reg_token"] and flagged["fc_norm.weight"]
    # A pooled (gap) model has no token norm: the hybrid's norm keeps its init and the report says so.
    assert {i.key for i in report.missing} == {"norm.weight", "norm.bias"}
    assert any("norm" in w for w in report.warnings)


# ----------------------------------------------------------------------------- whole model
def test_taxonomy_change_transfer_loads_all_but_heads(tmp_path):
    torch.manual_seed(0)
    old = hybrid({"species": 5, "genus": 3})
    ckpt = {"model": old.state_dict(), "optimizer": {"state": {}, "param_groups": []},
            "progress": {"epoch": 3, "step": 30}, "config": "MODEL: {}", "meta": {"format_version": 1}}
    torch.save(ckpt, tmp_path / "checkpoint_epoch_3.pth")
    new = hybrid({"species": 7, "genus": 4, "family": 2})
    [report] = load_pretrained(new, pretrained=str(tmp_path / "checkpoint_epoch_3.pth"), strategy="transfer")

    non_head = {k: v for k, v in old.state_dict().items() if not k.startswith("heads.")}
    assert set(report.loaded) == set(non_head)
    assert_same(new, non_head)
    assert {i.key for i in report.shape_mismatched} == {"heads.species.weight", "heads.species.bias",
                                                        "heads.genus.weight", "heads.genus.bias"}
    assert {i.key for i in report.missing} == {"heads.family.weight", "heads.family.bias"}
    assert all(i.expected and "taxonomy" in i.reason for i in report.missing + report.shape_mismatched)
    assert report.ok and report.applied and not report.warnings
    assert report.container == "model" and any("optimizer" in n for n in report.notes)

    # Same change under strict: the error lists each difference, and the model is untouched.
    before = {k: v.clone() for k, v in new.state_dict().items()}
    with pytest.raises(CheckpointIncompatibleError) as err:
        load_pretrained(new, pretrained=str(tmp_path / "checkpoint_epoch_3.pth"), strategy="strict")
    msg = str(err.value)
    assert "checkpoint_epoch_3.pth" in msg and "'strict' load" in msg and "left unchanged" in msg
    assert "heads.species.weight: checkpoint (5, 64) vs model (7, 64)" in msg
    assert "heads.family.weight (2, 64)" in msg
    assert err.value.report.failures.keys() == {"missing", "shape_mismatched"} and not err.value.report.applied
    assert all(torch.equal(v, before[k]) for k, v in new.state_dict().items())


def test_same_size_head_loaded_in_transfer_is_warned_about(tmp_path):
    old = hybrid({"species": 5, "genus": 3})
    torch.save(old.state_dict(), tmp_path / "w.pth")
    new = hybrid({"species": 6, "genus": 3})
    [report] = load_pretrained(new, pretrained=str(tmp_path / "w.pth"), strategy="transfer")
    assert "heads.genus.weight" in report.loaded
    assert any("heads.genus" in w and "wrong classes" in w for w in report.warnings)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_stripped_when_on_every_key(tmp_path, prefix):
    src = hybrid()
    torch.save({prefix + k: v for k, v in src.state_dict().items()}, tmp_path / "w.pth")
    dst = hybrid()
    [report] = load_pretrained(dst, pretrained=str(tmp_path / "w.pth"), strategy="strict")
    assert report.stripped_prefix == prefix
    assert_same(dst, src.state_dict())


def test_prefix_on_some_keys_only_is_not_stripped(tmp_path):
    src = hybrid().state_dict()
    partly = {("module." + k if k.startswith("blocks.") else k): v for k, v in src.items()}
    torch.save(partly, tmp_path / "w.pth")
    wf = read_weights(tmp_path / "w.pth")
    assert wf.stripped_prefix == "" and "module.blocks.0.norm1.weight" in wf.tensors
    dst = hybrid()
    [report] = load_pretrained(dst, pretrained=str(tmp_path / "w.pth"), strategy="transfer")
    assert "module.blocks.0.norm1.weight" in {i.key for i in report.unexpected}
    assert "blocks.0.norm1.weight" in {i.key for i in report.missing}


def test_ema_weights_on_request(tmp_path):
    a, b = hybrid(), hybrid()
    torch.save({"model": a.state_dict(), "ema": {"module." + k: v for k, v in b.state_dict().items()}}, tmp_path / "c.pth")
    assert torch.equal(read_weights(tmp_path / "c.pth").tensors["proj.weight"], a.state_dict()["proj.weight"])
    ema = read_weights(tmp_path / "c.pth", use_ema=True)
    assert ema.container == "ema" and torch.equal(ema.tensors["proj.weight"], b.state_dict()["proj.weight"])


def test_plain_timm_checkpoint_into_timm_trunk(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=1000).state_dict()
    torch.save({"state_dict": src, "epoch": 90, "arch": "resnet18"}, tmp_path / "resnet18.pth")
    model = TimmMultiHead("resnet18", {"species": 5})
    [report] = load_pretrained(model, pretrained=str(tmp_path / "resnet18.pth"), strategy="transfer")
    assert torch.equal(model.trunk.conv1.weight, src["conv1.weight"])
    assert report.container == "state_dict"
    assert {i.key for i in report.unexpected} == {"fc.weight", "fc.bias"} and all(i.expected for i in report.unexpected)
    assert {i.key for i in report.missing} == {"heads.species.weight", "heads.species.bias"}


def test_components_need_the_hybrid(tmp_path):
    torch.save(timm.create_model("convnext_atto").state_dict(), tmp_path / "c.pth")
    with pytest.raises(ValueError, match="MODEL.PRETRAINED_CONVNEXT.*MODEL.TYPE hybrid"):
        load_pretrained(TimmMultiHead("resnet18", {"s": 2}), pretrained_convnext=str(tmp_path / "c.pth"))


def test_all_three_sources_through_a_resolver_and_json_report(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save(hybrid({"species": 9}).state_dict(), cache / "old_run.pth")
    torch.save(timm.create_model("convnext_atto").state_dict(), cache / "convnext_atto.pth")
    save_file(contiguous(rope_vit(depth=2).state_dict()), cache / "rope.safetensors")

    def resolve(identifier: str) -> Path:  # stands in for linnaeus.checkpoint.resolve
        path = cache / identifier
        if not path.is_file():
            raise CheckpointNotFoundError(f"{identifier} not in {cache}")
        return path

    model = hybrid({"species": 5})
    reports = load_pretrained(model, pretrained="old_run.pth", pretrained_convnext="convnext_atto.pth",
                              pretrained_ropevit="rope.safetensors", strategy="transfer", resolve_fn=resolve)
    assert [r.component for r in reports] == ["model", "convnext", "ropevit"]
    out = write_load_reports(reports, tmp_path / "run" / "load_report.json")
    data = json.loads(out.read_text())
    assert [d["component"] for d in data] == ["model", "convnext", "ropevit"]
    assert data[1]["loaded_by_prefix"]["stem.0"] == 2 and data[1]["counts"]["loaded"] == len(reports[1].loaded)
    assert data[0]["shape_mismatched"][0]["source_shape"] == [9, DIM]
    assert "old_run.pth" in reports[0].summary()


# ----------------------------------------------------------------------------- bad files
def test_truncated_checkpoint_is_corrupt_and_named(tmp_path):
    torch.save(hybrid().state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointCorruptError, match="truncated.pth") as err:
        read_weights(bad)
    assert err.value.path == bad and err.value.__cause__ is not None

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointCorruptError, match="junk.safetensors.*safetensors"):
        read_weights(junk)
    with pytest.raises(CheckpointNotFoundError, match="nope.pth"):
        read_weights(tmp_path / "nope.pth")


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    assert not marker.exists()
    # Refused, and not called damaged: the file is intact; deleting it is not the advice.
    with pytest.raises(CheckpointIncompatibleError, match=r"evil.pth.*weights_only=True") as err:
        load_pretrained(hybrid(), pretrained=str(path))
    assert not isinstance(err.value, CheckpointCorruptError) and "Delete" not in str(err.value)
    assert "a pickle holding getattr" in str(err.value)  # the global it refused (Path.touch pickles so)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_timm_training_checkpoint_with_its_argparse_args_loads(tmp_path):
    """timm's train.py saves ``args`` (an argparse.Namespace) beside ``state_dict``: a pretrained
    load reads its weights (the Namespace is built field by field, no code runs) instead of
    calling the intact file corrupt."""
    import argparse

    src = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    path = tmp_path / "checkpoint-3.pth.tar"
    torch.save({"epoch": 3, "arch": "resnet10t", "state_dict": src.state_dict(), "version": 2,
                "args": argparse.Namespace(model="resnet10t", lr=0.1, sched="cosine")}, path)
    weights = read_weights(path)
    assert weights.container == "state_dict" and any("args" in n for n in weights.notes), weights.notes
    assert weights.tensors.keys() == src.state_dict().keys()
    dst = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    load_weights(dst, weights.tensors, strategy="strict", source=str(path))
    assert all(torch.equal(a, b) for a, b in zip(dst.state_dict().values(), src.state_dict().values()))


def test_file_without_state_dict_is_incompatible(tmp_path):
    torch.save({"epoch": 3, "notes": {"a": 1}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointIncompatibleError, match=r"odd.pth: no state dict found.*epoch: int"):
        read_weights(tmp_path / "odd.pth")


def test_unknown_strategy_rejected():
    model = hybrid()
    with pytest.raises(ValueError, match="unknown load strategy 'lenient'"):
        load_weights(model, model.state_dict(), strategy="lenient", source="x")
