"""Pretrained weights for linnaeus models: whole models and timm/original components.

Three independent sources (each optional, applied in this order):

- ``MODEL.PRETRAINED``          a whole model (an older linnaeus run, any taxonomy), or for
                                ``MODEL.TYPE timm`` a plain timm checkpoint of the trunk.
- ``MODEL.PRETRAINED_CONVNEXT`` timm or facebookresearch ConvNeXt weights → the hybrid's
                                ``stem.*`` / ``stages.*`` (stages it does not have are dropped).
- ``MODEL.PRETRAINED_ROPEVIT``  timm ``vit_*_rope_*`` / EVA, naver rope-vit (DeiT-style) or
                                any timm ViT → the hybrid's ``blocks.*``, ``norm.*`` and (mixed
                                RoPE) ``rope.freqs``, with a configurable block mapping.

Every load returns a :class:`~linnaeus.checkpoint.load_report.LoadReport`; docs/pretrained.md
has the key mapping tables. Reading files and applying strategies is the checkpoint
library's job (:mod:`linnaeus.checkpoint.loading`); this module only knows model layouts.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from linnaeus.checkpoint.errors import CheckpointIncompatibleError
from linnaeus.checkpoint.load_report import LoadReport
from linnaeus.checkpoint.loading import STRATEGIES as BUILTIN_STRATEGIES
from linnaeus.checkpoint.loading import WeightsFile, load_weights, read_weights
from linnaeus.checkpoint.strategies import apply_builtin, get_strategy
from linnaeus.checkpoint.state import Taxonomy
from linnaeus.models.hybrid import HybridConvNeXtRoPEViT
from linnaeus.models.timm_multihead import TimmMultiHead

ResolveFn = Callable[[str], Path]
Tensors = "OrderedDict[str, torch.Tensor]"



def load_pretrained(
    model: nn.Module,
    *,
    pretrained: str = "",
    pretrained_convnext: str = "",
    pretrained_ropevit: str = "",
    ropevit_blocks: Sequence[int] = (),
    strategy: str = "transfer",
    resolve_fn: ResolveFn = Path,
    use_ema: bool = False,
    taxonomy: Taxonomy | None = None,
) -> list[LoadReport]:
    """Apply each configured pretrained source to ``model``; one report per source.

    ``resolve_fn`` turns an identifier (path, cached file name, URI) into a local file;
    the runner passes ``linnaeus.checkpoint.resolve``'s resolver. Empty identifiers are
    skipped. Raises ``CheckpointIncompatibleError`` when ``strategy`` is not met (the
    model is left unchanged by that load), and ``ValueError`` when a component does not
    apply to this model type. ``taxonomy`` ({level: class names}) lets ``MODEL.PRETRAINED`` map
    heads by class name (:func:`load_whole_model`).
    """
    if strategy not in BUILTIN_STRATEGIES and (pretrained_convnext or pretrained_ropevit):
        raise ValueError(
            f"strategy {strategy!r} is a registered whole-model strategy (MODEL.PRETRAINED); MODEL.PRETRAINED_CONVNEXT "
            f"and MODEL.PRETRAINED_ROPEVIT map components and take {', '.join(BUILTIN_STRATEGIES)}.")
    reports = []
    if pretrained:
        reports.append(load_whole_model(model, read_weights(resolve_fn(pretrained), use_ema=use_ema), strategy,
                                        taxonomy))
    if pretrained_convnext:
        reports.append(load_convnext(_hybrid(model, "MODEL.PRETRAINED_CONVNEXT"),
                                     read_weights(resolve_fn(pretrained_convnext), use_ema=use_ema), strategy))
    if pretrained_ropevit:
        reports.append(load_ropevit(_hybrid(model, "MODEL.PRETRAINED_ROPEVIT"),
                                    read_weights(resolve_fn(pretrained_ropevit), use_ema=use_ema), strategy,
                                    blocks=ropevit_blocks))
    return reports


def load_pretrained_from_cfg(model: nn.Module, cfg, resolve_fn: ResolveFn = Path,
                             taxonomy: Taxonomy | None = None) -> list[LoadReport]:
    """:func:`load_pretrained` with the MODEL.PRETRAINED* keys of a linnaeus config."""
    m = cfg.MODEL
    return load_pretrained(
        model,
        pretrained=m.PRETRAINED,
        pretrained_convnext=m.PRETRAINED_CONVNEXT,
        pretrained_ropevit=m.PRETRAINED_ROPEVIT,
        ropevit_blocks=list(m.PRETRAINED_ROPEVIT_BLOCKS),
        strategy=m.PRETRAINED_STRATEGY,
        resolve_fn=resolve_fn,
        taxonomy=taxonomy,
    )


def _hybrid(model: nn.Module, key: str) -> HybridConvNeXtRoPEViT:
    if not isinstance(model, HybridConvNeXtRoPEViT):
        raise ValueError(
            f"{key} maps weights into the hybrid model's components, but the model is "
            f"{type(model).__name__}; use MODEL.TYPE hybrid, or MODEL.PRETRAINED for whole-model weights."
        )
    return model


# ----------------------------------------------------------------------------- whole model
def load_whole_model(model: nn.Module, wf: WeightsFile, strategy: str, taxonomy: Taxonomy | None = None) -> LoadReport:
    """Same-architecture weights under ``strategy`` (any registered name: :mod:`linnaeus.checkpoint.strategies`).

    ``taxonomy`` is this model's ({level: class names in index order}). When the file records its
    own too, ``transfer`` maps each head by class name (kept rows copied, added classes keep their
    initialisation, dropped ones reported in ``report.classes``), and the other built-ins refuse
    heads whose classes differ. Without both, a head whose shape matches loads by position, with a
    warning. For a :class:`TimmMultiHead`, a plain timm checkpoint (no ``trunk.`` prefix) is mapped
    under ``trunk.`` and its classifier is flagged unused.
    """
    state, renamed, unused = wf.tensors, {}, {}
    if isinstance(model, TimmMultiHead) and not any(k.startswith(("trunk.", "heads.")) for k in state):
        state, renamed, unused = _timm_trunk_state(model, state)
    if strategy not in BUILTIN_STRATEGIES:  # a user's strategy gets the tensors in the model's layout
        return get_strategy(strategy)(model, dataclasses.replace(wf, tensors=state), taxonomy=taxonomy)
    return apply_builtin(model, wf, strategy, taxonomy=taxonomy, state=state, unused=unused, renamed=renamed)


def _timm_trunk_state(model: TimmMultiHead, state: Mapping[str, torch.Tensor]):
    classifier = model.trunk.pretrained_cfg.get("classifier") or "head"
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    out, renamed, unused = OrderedDict(), {}, {}
    for k, v in state.items():
        if any(k == n or k.startswith(n + ".") for n in names):
            unused[k] = f"timm classifier '{k.split('.')[0]}'; linnaeus uses one head per taxonomic level"
            continue
        out["trunk." + k] = v
        renamed["trunk." + k] = k
    return out, renamed, unused


# ----------------------------------------------------------------------------- ConvNeXt
_FB_CONVNEXT_RULES = (
    # facebookresearch/ConvNeXt → timm, the same rewrites as timm.models.convnext.checkpoint_filter_fn
    (re.compile(r"^downsample_layers\.0\."), "stem."),
    (re.compile(r"^downsample_layers\.(\d+)\.(\d+)"), r"stages.\1.downsample.\2"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\."), r"stages.\1.blocks.\2."),
    (re.compile(r"\.dwconv\."), ".conv_dw."),
    (re.compile(r"\.pwconv(\d)\."), r".mlp.fc\1."),
    (re.compile(r"\.grn\.gamma$"), ".mlp.grn.weight"),
    (re.compile(r"\.grn\.beta$"), ".mlp.grn.bias"),
    (re.compile(r"^norm\."), "head.norm."),
    (re.compile(r"^head\.(weight|bias)$"), r"head.fc.\1"),
)


def is_facebook_convnext(keys) -> bool:
    return any(k.startswith("downsample_layers.") for k in keys)


def convnext_fb_to_timm(state: Mapping[str, torch.Tensor]) -> tuple[Tensors, dict[str, str]]:
    """Rename an original (facebookresearch) ConvNeXt state dict to timm names."""
    out, renamed = OrderedDict(), {}
    for k, v in state.items():
        new = k
        for pattern, repl in _FB_CONVNEXT_RULES:
            new = pattern.sub(repl, new)
        out[new] = v
        renamed[new] = k
    return out, renamed


def load_convnext(model: HybridConvNeXtRoPEViT, wf: WeightsFile, strategy: str) -> LoadReport:
    """timm or facebookresearch ConvNeXt → ``stem.*`` and the first ``len(model.stages)`` stages."""
    state, renamed = wf.tensors, {k: k for k in wf.tensors}
    if is_facebook_convnext(state):
        state, renamed = convnext_fb_to_timm(state)
    kept = len(model.stages)
    mapped, unused = OrderedDict(), {}
    for k, v in state.items():
        src = renamed.get(k, k)
        m = re.match(r"stages\.(\d+)\.", k)
        if k.startswith("stem.") or (m and int(m.group(1)) < kept):
            mapped[k] = v
        elif m:
            unused[src] = f"ConvNeXt stage {m.group(1)} is beyond the hybrid's {kept} conv stages"
        elif k.startswith(("head.", "norm_pre.")):
            unused[src] = "ConvNeXt classifier head/final norm; the hybrid has its own norm and heads"
        else:
            mapped[k] = v  # not a ConvNeXt key the mapping knows: reported as unexpected by load_weights
    target = model.state_dict()
    notes = _reshape_singletons(mapped, target)
    scope = [k for k in target if k.startswith(("stem.", "stages."))]
    report = load_weights(model, mapped, strategy=strategy, source=wf.path, component="convnext",
                          scope=scope, unused=unused, renamed={k: renamed.get(k, k) for k in mapped},
                          weights_file=wf)
    report.notes.extend(notes)
    return report


# ----------------------------------------------------------------------------- RoPE-ViT
_UNUSED_VIT = (
    (re.compile(r"^(cls_token|reg_token|dist_token|mask_token|pos_embed)$"),
     "token / absolute position embedding; the hybrid has no class/register tokens and uses RoPE only"),
    (re.compile(r"^patch_embed\."), "patch embedding; the hybrid tokenizes with its ConvNeXt front"),
    (re.compile(r"^(freqs_t_x|freqs_t_y|freqs_cis)$|^rope\.(?!freqs$)"),
     "rotary grid buffer; recomputed for the hybrid's feature-map grid"),
    (re.compile(r"^(head|head_dist)\.|^attn_pool\."), "ViT classifier head; the hybrid has one head per level"),
    (re.compile(r"^fc_norm\."), "post-pooling norm of a pooled ViT; the hybrid normalizes tokens with `norm` before pooling"),
    (re.compile(r"^norm_pre\."), "pre-transformer norm; the hybrid's `proj_norm` plays this role and is trained from scratch"),
)
_BLOCK_RENAMES = (("ls1.gamma", "gamma_1"), ("ls2.gamma", "gamma_2"))


def load_ropevit(
    model: HybridConvNeXtRoPEViT,
    wf: WeightsFile,
    strategy: str,
    blocks: Sequence[int] = (),
) -> LoadReport:
    """RoPE-ViT / EVA / ViT weights → ``blocks.*`` (+ ``norm.*``, mixed ``rope.freqs``).

    ``blocks[j]`` is the source block loaded into target block ``j``; empty maps block
    ``j`` to block ``j`` for every target block the source has.
    """
    state, origin = _vit_to_timm_eva(wf.tensors)
    src_depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    mapping = _block_mapping(blocks, len(model.blocks), src_depth, wf.path)
    target = model.state_dict()
    mapped, renamed, unused = OrderedDict(), {}, {}
    used_src = set(mapping.values())
    for k, v in state.items():
        m = re.match(r"blocks\.(\d+)\.(.+)$", k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            targets = [j for j, s in mapping.items() if s == i]
            if not targets:
                unused[origin[k]] = f"source block {i} is not selected by the block mapping (MODEL.PRETRAINED_ROPEVIT_BLOCKS)"
            for j in targets:
                mapped[f"blocks.{j}.{rest}"] = v
                renamed[f"blocks.{j}.{rest}"] = origin[k]
            continue
        if k == "rope.freqs" and "rope.freqs" in target:
            # Learned per-block frequencies (depth is dim 1 in both timm and naver layouts).
            idx = [mapping[j] for j in sorted(mapping)]
            mapped[k] = v[:, idx] if v.dim() >= 2 and idx and max(idx) < v.shape[1] else v
            renamed[k] = origin[k]
            continue
        reason = next((why for pattern, why in _UNUSED_VIT if pattern.search(k)), None)
        if reason:
            unused[origin[k]] = reason
        else:
            # norm.* maps by name; anything else (e.g. rope.freqs into an axial hybrid) is
            # reported as unexpected by load_weights.
            mapped[k] = v
            renamed[k] = origin[k]
    notes = _reshape_singletons(mapped, target)
    scope = [k for k in target if k.startswith(("blocks.", "norm.")) or k == "rope.freqs"]
    report = load_weights(model, mapped, strategy=strategy, source=wf.path, component="ropevit",
                          scope=scope, unused=unused, renamed=renamed, weights_file=wf)
    report.notes.extend(notes)
    report.notes.append("block mapping (target <- source): " + ", ".join(f"{j}<-{s}" for j, s in sorted(mapping.items())))
    if src_depth and len(used_src) < src_depth and not blocks:
        report.notes.append(f"source has {src_depth} blocks; blocks {sorted(set(range(src_depth)) - used_src)} unused")
    if any(re.search(r"\.gamma_[12]$", k) for k in mapped) and not any(re.search(r"\.gamma_[12]$", k) for k in target):
        report.warnings.append(
            "the checkpoint's blocks have layer-scale (gamma_1/gamma_2) but the hybrid was built without it; "
            "set MODEL.HYBRID.LAYER_SCALE_INIT > 0 (e.g. 1e-5) to load them"
        )
    if "rope.freqs" in state and "rope.freqs" not in target:
        report.warnings.append(
            "the checkpoint has learned mixed-RoPE frequencies (rope.freqs) but the hybrid uses axial RoPE; "
            "set MODEL.HYBRID.ROPE_TYPE mixed to load them"
        )
    return report


def _vit_to_timm_eva(state: Mapping[str, torch.Tensor]) -> tuple[Tensors, dict[str, str]]:
    """Normalize ViT layouts to timm Eva names: naver ``freqs``, timm ViT ``ls*.gamma``,
    EVA ``q_bias``/``v_bias`` and unfused ``q/k/v_proj`` all become what ``EvaBlock`` uses.

    Returns the renamed tensors and, per new name, the checkpoint name(s) it came from.
    """
    out: Tensors = OrderedDict()
    origin: dict[str, str] = {}
    for k, v in state.items():
        new = "rope.freqs" if k == "freqs" else k  # naver rope-mixed learned frequencies
        for old, repl in _BLOCK_RENAMES:
            new = new.replace(old, repl)
        out[new] = v
        origin[new] = k
    for prefix in sorted({k.rsplit("attn.", 1)[0] for k in out if ".attn." in k}):
        a = prefix + "attn."
        if a + "q_bias" in out and a + "v_bias" in out and a + "qkv.bias" not in out:
            # EVA-style bias: no key bias (fixed 0); fused qkv bias = [q, 0, v].
            q, v = out.pop(a + "q_bias"), out.pop(a + "v_bias")
            out[a + "qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
            origin[a + "qkv.bias"] = f"{a}q_bias + {a}v_bias"
        for kind in ("weight", "bias"):
            names = [f"{a}{n}_proj.{kind}" for n in "qkv"]
            if all(n in out for n in names):
                out[f"{a}qkv.{kind}"] = torch.cat([out.pop(n) for n in names])
                origin[f"{a}qkv.{kind}"] = " + ".join(names)
    return out, origin


def _block_mapping(blocks: Sequence[int], target_depth: int, src_depth: int, path: Path) -> dict[int, int]:
    if not blocks:
        return {j: j for j in range(min(target_depth, src_depth))}
    blocks = list(blocks)
    if len(blocks) != target_depth:
        raise ValueError(
            f"MODEL.PRETRAINED_ROPEVIT_BLOCKS has {len(blocks)} entries but the hybrid has {target_depth} "
            f"ViT blocks (MODEL.HYBRID.VIT_DEPTH); give one source index per target block, e.g. "
            f"{list(range(target_depth))}, or leave it empty for first-to-first."
        )
    bad = [b for b in blocks if not 0 <= b < src_depth]
    if bad:
        raise CheckpointIncompatibleError(
            f"{path}: MODEL.PRETRAINED_ROPEVIT_BLOCKS selects source blocks {bad}, but the checkpoint has "
            f"{src_depth} blocks (0..{src_depth - 1}). Choose indices in that range."
        )
    return dict(enumerate(blocks))


def _reshape_singletons(mapped: Tensors, target: Mapping[str, torch.Tensor]) -> list[str]:
    """Reshape tensors that differ from the target only by size-1 dims, in place.

    Covers Linear ↔ 1x1 conv MLPs (``convnext_tiny`` vs ``convnext_atto`` layouts, the
    original ConvNeXt's ``pwconv``), GRN ``(1, 1, 1, C)`` vs ``(C,)`` and naver's flattened
    mixed-RoPE frequencies.
    """
    n = 0
    for k, v in list(mapped.items()):
        if k not in target or v.shape == target[k].shape or v.numel() != target[k].numel():
            continue
        squeeze = lambda s: [d for d in s if d != 1]  # noqa: E731
        flat_rope = k == "rope.freqs" and v.dim() == 3 and target[k].dim() == 4 and v.shape[:2] == target[k].shape[:2]
        if squeeze(v.shape) == squeeze(target[k].shape) or flat_rope:
            mapped[k] = v.reshape(target[k].shape)
            n += 1
    return [f"reshaped {n} tensors to the model's layout (size-1 dims / flattened heads)"] if n else []
