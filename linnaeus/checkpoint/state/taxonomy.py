"""The taxonomy a checkpoint was trained on, and mapping classification heads between taxonomies by class name.

A checkpoint records its taxonomy as plain data under the top-level ``taxonomy`` entry::

    {"species": ["circle_dark", "circle_light", ...], "genus": ["circle", ...], ...}

levels in order, each level's class names in class-index order (row ``i`` of that level's head is
class ``names[i]``). Plain lists and strings, so ``torch.load(weights_only=True)`` reads it and the
library needs no dataset code.

Where the levels form a tree, the entry ``taxonomy_tree`` records it: for every level but the
coarsest, each class's parent at the next coarser level, by name, in class-index order::

    {"species": ["circle", "circle", ...], "genus": ["round", ...]}

so that a checkpoint alone is enough to decode the most probable consistent path (``linnaeus-predict``).

Resuming refuses a changed taxonomy (:func:`taxonomy_differences`, :class:`TaxonomyChangedError`):
the heads' rows would silently mean other classes. Transfer maps heads by class name
(:func:`map_heads`): rows of classes present in both taxonomies are copied, new classes keep the
model's fresh initialisation, dropped classes are reported; a head is never loaded by position
when the class lists differ.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..errors import CheckpointIncompatibleError

TAXONOMY_KEY = "taxonomy"
TREE_KEY = "taxonomy_tree"
HEAD_PREFIX = "heads.{level}."  # where a level's classifier lives in linnaeus models: heads.<level>.weight/bias
_SHOWN = 8

Taxonomy = Mapping[str, Sequence[str]]


def taxonomy_record(levels: Taxonomy) -> dict[str, list[str]]:
    """``levels`` ({level: class names in index order}) as the plain dict a checkpoint stores.

    Raises ``ValueError`` for anything but non-empty string names without duplicates.
    """
    out: dict[str, list[str]] = {}
    for level, names in levels.items():
        names = list(names)
        if not isinstance(level, str) or not level or not all(isinstance(n, str) for n in names):
            raise ValueError(f"taxonomy level {level!r}: expected a level name and a list of class-name strings.")
        if len(set(names)) != len(names):
            raise ValueError(f"taxonomy level {level!r} lists a class name twice; class names must be unique.")
        out[level] = names
    return out


def tree_record(levels: Taxonomy, parents: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """``parents`` ({level: each class's parent name at the next coarser level}) checked against
    ``levels`` as the plain dict a checkpoint stores under ``taxonomy_tree``. Raises ``ValueError``
    unless every level but the coarsest is given, with one known parent per class."""
    order = list(levels)
    out: dict[str, list[str]] = {}
    for level, coarser in zip(order, order[1:]):
        names = list(parents.get(level, []))
        if len(names) != len(levels[level]):
            raise ValueError(f"taxonomy tree: level {level!r} needs one parent per class ({len(levels[level])}), "
                             f"got {len(names)}.")
        unknown = sorted(set(names) - set(levels[coarser]))
        if unknown:
            raise ValueError(f"taxonomy tree: parents of level {level!r} not among the {coarser!r} classes: "
                             f"{_preview(unknown)}.")
        out[level] = names
    return out


def stored_tree(state: Any) -> dict[str, list[str]] | None:
    """The tree a loaded checkpoint records over its taxonomy, or None (not recorded, or not valid)."""
    levels, entry = stored_taxonomy(state), state.get(TREE_KEY) if isinstance(state, Mapping) else None
    if levels is None or not isinstance(entry, Mapping):
        return None
    try:
        return tree_record(levels, entry)
    except ValueError:
        return None


def stored_taxonomy(state: Any) -> dict[str, list[str]] | None:
    """The taxonomy a loaded checkpoint records, or None (older files, other tools' files)."""
    entry = state.get(TAXONOMY_KEY) if isinstance(state, Mapping) else None
    if not isinstance(entry, Mapping):
        return None
    try:
        return taxonomy_record(entry)
    except ValueError:
        return None


@dataclass(frozen=True)
class ClassMapping:
    """How one level's classes map from a source taxonomy to a target one."""

    level: str
    kept: list[str]  # in both (in target order)
    added: list[str]  # only in the target: rows keep their initialisation
    dropped: list[str]  # only in the source: their rows are not loaded
    rows: list[tuple[int, int]]  # (target row, source row) for every kept class

    @property
    def identical(self) -> bool:
        return not self.added and not self.dropped and all(t == s for t, s in self.rows)

    def as_report(self) -> dict[str, list[str]]:
        return {"kept": list(self.kept), "added": list(self.added), "dropped": list(self.dropped)}

    def describe(self) -> str:
        parts = [f"{len(self.kept)} kept"]
        for what, names in (("added", self.added), ("dropped", self.dropped)):
            if names:
                parts.append(f"{len(names)} {what} ({_preview(names)})")
        if not self.added and not self.dropped and not self.identical:
            parts.append("same classes in another order")
        return f"{self.level}: " + ", ".join(parts)


def map_classes(level: str, source: Sequence[str], target: Sequence[str]) -> ClassMapping:
    """Match ``source`` and ``target`` class names of ``level`` by name."""
    index = {name: i for i, name in enumerate(source)}
    rows = [(t, index[name]) for t, name in enumerate(target) if name in index]
    wanted = set(target)
    return ClassMapping(level, [target[t] for t, _ in rows], [n for n in target if n not in index],
                        [n for n in source if n not in wanted], rows)


def taxonomy_differences(saved: Taxonomy, current: Taxonomy) -> list[str]:
    """One line per difference between two taxonomies (empty: the same levels, classes and order)."""
    out = []
    if list(saved) != list(current):
        out.append(f"levels: checkpoint {list(saved)}, this run {list(current)}")
    for level in current:
        if level in saved:
            mapping = map_classes(level, list(saved[level]), list(current[level]))
            if not mapping.identical:
                out.append(mapping.describe())
    return out


class TaxonomyChangedError(CheckpointIncompatibleError):
    """A checkpoint's taxonomy differs from the one it is restored into."""

    def __init__(self, source: Any, differences: Sequence[str]) -> None:
        self.differences = list(differences)
        super().__init__(
            f"{source} was trained on another taxonomy than this run's; resuming would make its heads' rows mean "
            "other classes. Differences:\n" + "\n".join(f"  - {d}" for d in differences) +
            "\nResume with the checkpoint's taxonomy, or start a new run from its weights with a transfer load, "
            "which maps the heads by class name.", path=source if source else None)


def check_same_taxonomy(state: Any, current: Taxonomy | None, *, source: Any) -> None:
    """Raise :class:`TaxonomyChangedError` when ``state`` records a taxonomy other than ``current``
    (nothing to compare when either is unknown)."""
    saved = stored_taxonomy(state)
    if saved is None or current is None:
        return
    differences = taxonomy_differences(saved, current)
    if differences:
        raise TaxonomyChangedError(source, differences)


def map_heads(
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    source_taxonomy: Taxonomy,
    target_taxonomy: Taxonomy,
    *,
    head_prefix: str = HEAD_PREFIX,
) -> tuple["OrderedDict[str, torch.Tensor]", dict[str, ClassMapping]]:
    """``state`` with each level's head rows rearranged by class name to fit ``target``.

    For every level of ``target_taxonomy`` whose head (``head_prefix`` + ``weight``/``bias``) is
    in both ``state`` and ``target`` (the model's own tensors, freshly initialised): rows of kept
    classes come from ``state``, rows of added classes from ``target``. A level the source
    taxonomy lacks loses its head tensors from the result (they stay initialised). Returns the
    new state and the mapping per level. Raises :class:`CheckpointIncompatibleError` when a
    head's row count disagrees with its taxonomy (the file contradicts itself).
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    mappings: dict[str, ClassMapping] = {}
    for level, names in target_taxonomy.items():
        prefix = head_prefix.format(level=level)
        keys = [k for k in target if k.startswith(prefix) and k[len(prefix):] in ("weight", "bias")]
        if not keys:
            continue
        if level not in source_taxonomy:
            for key in keys:
                out.pop(key, None)
            mappings[level] = ClassMapping(level, [], list(names), [], [])
            continue
        mapping = map_classes(level, list(source_taxonomy[level]), list(names))
        mappings[level] = mapping
        for key in keys:
            if key not in state:
                continue
            src, dst = state[key], target[key]
            if src.shape[0] != len(source_taxonomy[level]) or dst.shape[0] != len(names):
                raise CheckpointIncompatibleError(
                    f"{key}: {src.shape[0]} rows in the checkpoint for {len(source_taxonomy[level])} recorded "
                    f"{level} classes, {dst.shape[0]} in the model for {len(names)}; a head has one row per class.")
            if src.shape[1:] != dst.shape[1:]:
                continue  # another feature width: the load reports the shape mismatch
            mapped = dst.detach().clone()
            if mapping.rows:
                t, s = zip(*mapping.rows)
                mapped[list(t)] = src[list(s)].to(mapped.dtype)
            out[key] = mapped
    return out, mappings


def _preview(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


__all__ = ["ClassMapping", "HEAD_PREFIX", "TAXONOMY_KEY", "TaxonomyChangedError", "check_same_taxonomy", "map_classes",
           "map_heads", "stored_taxonomy", "taxonomy_differences", "taxonomy_record"]
