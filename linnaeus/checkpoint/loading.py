"""Loading weights from anywhere into a model, and a report of exactly what happened.

Two steps, usable from any PyTorch loop:

1. :func:`read_weights` turns a file into a flat ``{name: tensor}`` dict: linnaeus
   checkpoints (``model`` / ``ema``), plain state dicts, ``.safetensors`` files and the
   usual nested containers (``state_dict``, ``model``, ``module``). Pickles are always read
   with ``torch.load(weights_only=True)``: a file that needs arbitrary code to load is refused.
2. :func:`load_weights` copies that dict into a model under one of three strategies and
   returns a :class:`LoadReport`:

   ``transfer``      load every tensor whose name and shape match; skip the rest (new heads
                     for a new taxonomy, a different depth). Never fails on keys.
   ``weights_only``  every model tensor in scope must come from the checkpoint with its
                     exact shape; checkpoint tensors the model has no place for are reported
                     but tolerated.
   ``strict``        ``weights_only`` and, in addition, no checkpoint tensor may go unused.

   A difference flagged *expected* by the caller (see :class:`Expect`) never fails a load;
   it is listed with its reason. Everything else that is not loaded becomes a warning.
   A failing load raises :class:`CheckpointIncompatibleError` before touching the model,
   with the report's summary in the message and the report on ``error.report``.

Mapping other layouts onto a model (timm ConvNeXt → a hybrid's stem, ...) is the model
side's job: it renames keys and passes ``unused`` / ``renamed`` / ``expect`` here.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from .errors import CheckpointIncompatibleError, CheckpointNotFoundError
from .formats import format_of
from .load_report import Expect, KeyIssue, LoadReport, format_groups, group_by_prefix
from .state import TAXONOMY_KEY, TREE_KEY, stored_taxonomy, stored_tree

STRATEGIES = ("weights_only", "transfer", "strict")
# Containers that wrap a state dict, in the order they are tried (timm, torchvision,
# DeiT/naver, fairseq-style and DDP wrappers all use one of these).
_CONTAINERS = ("model", "state_dict", "module")
_EMA_CONTAINERS = ("ema", "state_dict_ema", "model_ema")
# Whole-model wrappers whose prefix is stripped when (and only when) every key has it.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# ----------------------------------------------------------------------------- reading
@dataclass
class WeightsFile:
    """A flat state dict read from ``path`` and how it was found inside the file."""

    path: Path
    tensors: "OrderedDict[str, torch.Tensor]"
    container: str = ""  # e.g. "model", "state_dict", "" (top level)
    stripped_prefix: str = ""  # e.g. "module." when every key had it
    notes: list[str] = field(default_factory=list)
    taxonomy: dict[str, list[str]] | None = None  # what the file records (linnaeus checkpoints), see taxonomy.py
    tree: dict[str, list[str]] | None = None  # each class's parent, where the file records the tree
    config: str = ""  # the YAML of the config that trained it ("" when the file records none)


def read_weights(path: str | os.PathLike, *, use_ema: bool = False) -> WeightsFile:
    """Read the tensors of a checkpoint or weights file, safely.

    Args:
        path: a ``.pth``/``.pt``/``.bin`` pickle (read with ``weights_only=True``), a
            ``.safetensors`` file (either checked against its ``.sha256`` sidecar when it has
            one), or a sharded checkpoint directory (its model consolidated, every file verified).
        use_ema: take the EMA weights (``ema`` / ``state_dict_ema`` / ``model_ema``) when the
            file has them.

    Raises:
        CheckpointNotFoundError: ``path`` is not a file.
        CheckpointCorruptError: the file cannot be read, is truncated, or does not match its sidecar.
        CheckpointIncompatibleError: the file loads but holds no state dict, or it is intact but
            its pickle names classes that ``weights_only=True`` refuses to build (an
            ``argparse.Namespace``, as timm's train.py saves, is built).
    """
    path = Path(path)
    fmt = format_of(path)  # a file; a sharded directory has its model consolidated here, every file verified
    if fmt is None:
        raise CheckpointNotFoundError(f"weights file {path} does not exist (or is not a file).")
    obj: object = fmt.read_weights(path, use_ema=use_ema)
    taxonomy, tree = stored_taxonomy(obj), stored_tree(obj)
    config = obj.get("config") if isinstance(obj, Mapping) and isinstance(obj.get("config"), str) else ""
    notes: list[str] = []
    containers: list[str] = []
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        name = _pick_container(obj, use_ema)
        if name is None:
            raise CheckpointIncompatibleError(
                f"{path}: no state dict found; top-level entries are {_describe(obj)}. Expected tensors "
                f"directly or under one of {list(_CONTAINERS + _EMA_CONTAINERS)}."
            )
        if not containers:
            training = sorted(k for k in obj if k not in (name, "config", "meta", TAXONOMY_KEY, TREE_KEY) and k not in _CONTAINERS)
            if training:
                notes.append(f"ignored other entries of the file: {', '.join(training)}")
            if not use_ema and any(isinstance(obj.get(k), Mapping) for k in _EMA_CONTAINERS):
                notes.append("the file also holds EMA weights (not used)")
        containers.append(name)
        obj = obj[name]
    if not isinstance(obj, Mapping):
        raise CheckpointIncompatibleError(
            f"{path}: expected a state dict (mapping of names to tensors), found {type(obj).__name__}."
        )
    tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    dropped = [k for k in obj if k not in tensors]
    if dropped:
        notes.append(f"ignored {len(dropped)} non-tensor entries: {_preview(dropped)}")
    if not tensors:
        raise CheckpointIncompatibleError(f"{path}: the state dict{_at(containers)} holds no tensors.")
    tensors, stripped = _strip_wrapper_prefixes(tensors)
    if stripped:
        notes.append(f"stripped prefix '{stripped}' present on every key")
    return WeightsFile(path, tensors, ".".join(containers), stripped, notes, taxonomy, tree, config)


def _is_state_dict(obj: Mapping) -> bool:
    # A state dict holds tensors (maybe with a few scalars), never nested mappings.
    return any(isinstance(v, torch.Tensor) for v in obj.values()) and not any(
        isinstance(v, Mapping) for v in obj.values()
    )


def _pick_container(obj: Mapping, use_ema: bool) -> str | None:
    order = (_EMA_CONTAINERS + _CONTAINERS) if use_ema else _CONTAINERS
    for name in order:
        if isinstance(obj.get(name), Mapping) and obj[name]:
            return name
    return None


def _strip_wrapper_prefixes(tensors: "OrderedDict[str, torch.Tensor]") -> tuple["OrderedDict[str, torch.Tensor]", str]:
    """Strip DDP/compile/EMA wrapper prefixes only when every key carries them.

    A prefix on some keys only is part of the names (e.g. a submodule called ``module``),
    so it is kept.
    """
    stripped = ""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = OrderedDict((k[len(prefix):], v) for k, v in tensors.items())
                stripped += prefix
                changed = True
    return tensors, stripped


# ----------------------------------------------------------------------------- loading
def load_weights(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    strategy: str,
    source: str | os.PathLike,
    component: str = "model",
    scope: Iterable[str] | None = None,
    unused: Mapping[str, str] | None = None,
    renamed: Mapping[str, str] | None = None,
    expect: Sequence[Expect] = (),
    weights_file: WeightsFile | None = None,
) -> LoadReport:
    """Copy ``state`` into ``model`` under ``strategy`` and report what happened.

    Args:
        model: target module (its own ``state_dict()`` names are the targets).
        state: checkpoint tensors, already renamed to the model's names.
        strategy: ``"weights_only"``, ``"transfer"`` or ``"strict"`` (see module doc).
        source: where the tensors came from (for messages and the report).
        component: what is being loaded (``"model"``, ``"convnext"``, ...).
        scope: model keys this load is responsible for; default every key. Keys outside
            it are neither loaded nor reported missing.
        unused: checkpoint keys deliberately left out by a mapping, with the reason; they
            are reported as unexpected and flagged expected.
        renamed: target key → original checkpoint key, for keys a mapping renamed.
        expect: anticipated differences (flagged expected, never fail a load).
        weights_file: the :class:`WeightsFile` ``state`` came from (adds its notes).

    Raises:
        ValueError: unknown ``strategy``.
        CheckpointIncompatibleError: the strategy's requirements are not met; nothing was
            copied into the model. ``error.report`` holds the report.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown load strategy {strategy!r}; expected one of {STRATEGIES}.")
    target = model.state_dict()
    in_scope = list(target) if scope is None else [k for k in scope if k in target]
    in_scope_set = set(in_scope)
    renamed = dict(renamed or {})
    report = LoadReport(
        source=str(source),
        component=component,
        strategy=strategy,
        container=weights_file.container if weights_file else "",
        stripped_prefix=weights_file.stripped_prefix if weights_file else "",
        renamed={k: v for k, v in renamed.items() if k != v},
        notes=list(weights_file.notes) if weights_file else [],
    )

    def flag(kind: str, key: str) -> tuple[bool, str]:
        for rule in expect:
            if rule.matches(kind, key):
                return True, rule.reason
        return False, ""

    to_copy: dict[str, torch.Tensor] = {}
    for key in in_scope:
        if key not in state:
            exp, why = flag("missing", key)
            report.missing.append(KeyIssue(key, exp, why, target_shape=tuple(target[key].shape)))
        elif state[key].shape != target[key].shape:
            exp, why = flag("shape_mismatched", key)
            report.shape_mismatched.append(KeyIssue(
                key, exp, why, source_key=renamed.get(key),
                source_shape=tuple(state[key].shape), target_shape=tuple(target[key].shape),
            ))
        else:
            to_copy[key] = state[key]
    for key, value in state.items():
        if key not in in_scope_set:
            exp, why = flag("unexpected", key)
            if key in target:
                why = why or "belongs to the model but is outside this load's scope"
            report.unexpected.append(KeyIssue(key, exp, why, source_key=renamed.get(key), source_shape=tuple(value.shape)))
    for key, reason in (unused or {}).items():
        report.unexpected.append(KeyIssue(key, True, reason, source_shape=None))
    report.loaded = list(to_copy)
    report.warnings = _warnings(report)

    if not report.ok:
        err = CheckpointIncompatibleError(
            f"{source}: '{strategy}' load of {component} failed; the model was left unchanged.\n" + report.summary(),
            missing=[i.key for i in report.failures.get("missing", [])],
            unexpected=[i.key for i in report.failures.get("unexpected", [])],
            mismatched=[(i.key, i.source_shape, i.target_shape) for i in report.failures.get("shape_mismatched", [])],
        )
        err.report = report  # type: ignore[attr-defined]
        raise err
    _copy_into(model, to_copy, report)
    report.applied = True
    return report


def _copy_into(model: nn.Module, tensors: Mapping[str, torch.Tensor], report: LoadReport) -> None:
    casts = {}
    target = model.state_dict()
    for k, v in tensors.items():
        if v.dtype != target[k].dtype:
            pair = f"{v.dtype} -> {target[k].dtype}"
            casts[pair] = casts.get(pair, 0) + 1
    # strict=False only because ``tensors`` is a subset; every key in it exists in the model.
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:  # cannot happen for keys taken from model.state_dict(); guard the invariant
        raise RuntimeError(f"internal error: keys not in the model: {result.unexpected_keys}")
    for pair, n in casts.items():
        report.notes.append(f"converted {n} tensors {pair}")


def _warnings(report: LoadReport) -> list[str]:
    out = []
    for kind, what in (
        ("missing", "not in the checkpoint; they keep their current values"),
        ("unexpected", "in the checkpoint have no place in the model and were ignored"),
        ("shape_mismatched", "have a different shape in the checkpoint; they keep their current values"),
    ):
        keys = [i.key for i in getattr(report, kind) if not i.expected]
        if keys:
            out.append(f"{len(keys)} {kind.replace('_', ' ')} tensors {what}: {format_groups(group_by_prefix(keys))}")
    return out


# ----------------------------------------------------------------------------- formatting
def _preview(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _describe(obj: Mapping) -> str:
    return _preview([f"{k}: {type(v).__name__}" for k, v in obj.items()])


def _at(containers: list[str]) -> str:
    return f" at '{'.'.join(containers)}'" if containers else ""
