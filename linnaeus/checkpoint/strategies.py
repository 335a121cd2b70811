"""Load strategies by name, and one call that loads weights from anywhere (anemoi's
``load_model_from_checkpoint``)::

    from linnaeus.checkpoint import load_model, register_strategy

    report = load_model(model, "convnext_tiny_22k_1k_384.pth", strategy="transfer",
                        cache_dir="~/.cache/linnaeus/checkpoints", bucket={"remote": "zoo", "name": "models"})

A strategy is ``fn(model, weights, *, taxonomy) -> LoadReport``: ``weights`` is the
:class:`~linnaeus.checkpoint.loading.WeightsFile` read from the file (its tensors and, for
linnaeus checkpoints, its taxonomy), ``taxonomy`` the model's ({level: class names} or None). The
built-ins are ``transfer``, ``weights_only`` and ``strict`` (:mod:`.loading`); when both
taxonomies are known, ``transfer`` maps the heads by class name and the other two refuse heads
whose classes differ (:mod:`linnaeus.checkpoint.state.taxonomy`). Users add theirs with :func:`register_strategy`; the
runner's ``MODEL.PRETRAINED_STRATEGY`` accepts any registered name.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch
from torch import nn

from .errors import CheckpointIncompatibleError
from .load_report import Expect, LoadReport, write_load_reports
from .loading import STRATEGIES as BUILTIN_STRATEGIES
from .loading import WeightsFile, load_weights, read_weights
from .resolve import BucketConfig, resolve
from .state import HEAD_PREFIX, ClassMapping, Taxonomy, map_heads, taxonomy_differences

HEADS_REASON = "classification heads follow the target taxonomy; re-initialized (transfer)"


class Strategy(Protocol):
    def __call__(self, model: nn.Module, weights: WeightsFile, *, taxonomy: Taxonomy | None) -> LoadReport: ...


_registry: dict[str, Callable[..., LoadReport]] = {}
_lock = threading.Lock()


def register_strategy(name: str, fn: Strategy, *, replace: bool = False) -> None:
    """Make ``fn`` available as strategy ``name`` (for :func:`load_model` and MODEL.PRETRAINED_STRATEGY).

    Raises ``ValueError`` for an empty name, a name already registered (unless ``replace``) or a
    built-in name (whose meaning the load report's pass/fail rules depend on).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"strategy name must be a non-empty string, got {name!r}.")
    if not callable(fn):
        raise ValueError(f"strategy {name!r}: expected a callable fn(model, weights, *, taxonomy) -> LoadReport.")
    with _lock:
        if name in BUILTIN_STRATEGIES:
            raise ValueError(f"strategy {name!r} is built in ({', '.join(BUILTIN_STRATEGIES)}); give yours another name.")
        if name in _registry and not replace:
            raise ValueError(f"strategy {name!r} is already registered; pass replace=True to replace it.")
        _registry[name] = fn


def unregister_strategy(name: str) -> None:
    """Remove a strategy added with :func:`register_strategy` (built-ins stay)."""
    with _lock:
        if name in BUILTIN_STRATEGIES:
            raise ValueError(f"strategy {name!r} is built in and cannot be removed.")
        _registry.pop(name, None)


def registered_strategies() -> tuple[str, ...]:
    """Every strategy name :func:`get_strategy` accepts, built-ins first."""
    with _lock:
        return tuple(BUILTIN_STRATEGIES) + tuple(sorted(_registry))


def get_strategy(name: str) -> Callable[..., LoadReport]:
    """The strategy registered as ``name``; ``ValueError`` naming the registered ones otherwise."""
    if name in BUILTIN_STRATEGIES:
        return lambda model, weights, *, taxonomy=None: apply_builtin(model, weights, name, taxonomy=taxonomy)
    with _lock:
        fn = _registry.get(name)
    if fn is None:
        raise ValueError(f"unknown load strategy {name!r}; registered: {', '.join(registered_strategies())}. "
                         "Add one with linnaeus.checkpoint.register_strategy(name, fn).")
    return fn


def apply_builtin(
    model: nn.Module,
    weights: WeightsFile,
    strategy: str,
    *,
    taxonomy: Taxonomy | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
    unused: Mapping[str, str] | None = None,
    renamed: Mapping[str, str] | None = None,
    expect: tuple[Expect, ...] = (),
    component: str = "model",
) -> LoadReport:
    """A built-in strategy over a whole model, taxonomy-aware (module docstring).

    ``state`` replaces ``weights.tensors`` when a caller has renamed them to the model's layout
    (``unused``/``renamed`` then say how). Heads under ``heads.<level>.`` are mapped by class name
    in ``transfer`` when both taxonomies are known; ``weights_only``/``strict`` refuse, before
    touching the model, heads whose classes differ. Without both taxonomies a head whose shape
    matches loads by position, with a warning in ``transfer``.
    """
    state = weights.tensors if state is None else state
    mappings: dict[str, ClassMapping] = {}
    if taxonomy is not None and weights.taxonomy is not None:
        if strategy == "transfer":
            state, mappings = map_heads(state, model.state_dict(), weights.taxonomy, taxonomy)
        elif differences := taxonomy_differences(weights.taxonomy, taxonomy):
            raise CheckpointIncompatibleError(
                f"{weights.path}: '{strategy}' load refused, the model was left unchanged: the file's heads are for "
                "another taxonomy than this model's, and loading them by position would make their rows mean other "
                "classes. Differences:\n" + "\n".join(f"  - {d}" for d in differences) +
                "\nUse the transfer strategy (MODEL.PRETRAINED_STRATEGY transfer), which maps heads by class name.")
    if strategy == "transfer":
        expect = (*expect, Expect(r"heads\.", HEADS_REASON))
    report = load_weights(model, state, strategy=strategy, source=weights.path, component=component,
                          unused=unused, renamed=renamed, expect=expect, weights_file=weights)
    report.classes = {level: m.as_report() for level, m in mappings.items()}
    head = HEAD_PREFIX.split("{")[0]
    by_position = sorted({".".join(k.split(".")[:2]) for k in report.loaded
                          if k.startswith(head) and k.split(".")[1] not in mappings})
    if strategy == "transfer" and by_position:
        # Shapes cannot tell whether a level's class list changed with the same class count.
        unknown = "the file records no taxonomy" if weights.taxonomy is None else "no taxonomy was given for the model"
        report.warnings.append(
            f"heads {by_position} were loaded by position because their shapes match, but {unknown}, so whether "
            "their rows are the same classes cannot be checked; if the class lists differ, their weights point at "
            "the wrong classes")
    return report


def load_model(
    model: nn.Module,
    identifier: str | os.PathLike,
    *,
    strategy: str = "transfer",
    cache_dir: str | os.PathLike = "~/.cache/linnaeus/checkpoints",
    bucket: BucketConfig | Mapping[str, Any] | None = None,
    taxonomy: Taxonomy | None = None,
    use_ema: bool = False,
    report_path: str | os.PathLike | None = None,
    **resolve_options: Any,
) -> LoadReport:
    """Resolve ``identifier`` (absolute path, URI, or a bare name looked up in ``cache_dir`` then
    ``bucket``: :func:`~linnaeus.checkpoint.resolve`; a ``bucket`` mapping without ``enabled`` is
    used), read its weights safely
    (``weights_only=True``, any layout :func:`~linnaeus.checkpoint.loading.read_weights` knows) and
    apply ``strategy`` (any registered name). ``taxonomy`` ({level: class names in index order})
    lets heads map by class name. Writes the report to ``report_path`` when given; returns it.
    """
    fn = get_strategy(strategy)  # an unknown name fails before any download
    if isinstance(bucket, Mapping) and not any(str(k).lower() == "enabled" for k in bucket):
        bucket = {**bucket, "enabled": True}  # given without the flag: the caller means to use it
    path = resolve(os.fspath(identifier), cache_dir=cache_dir, bucket=bucket, **resolve_options)
    report = fn(model, read_weights(Path(path), use_ema=use_ema), taxonomy=taxonomy)
    if not isinstance(report, LoadReport):
        raise TypeError(f"strategy {strategy!r} returned {type(report).__name__}, expected a LoadReport.")
    if report_path is not None:
        write_load_reports([report], report_path)
    return report


__all__ = ["Strategy", "apply_builtin", "get_strategy", "load_model", "register_strategy", "registered_strategies",
           "unregister_strategy"]
