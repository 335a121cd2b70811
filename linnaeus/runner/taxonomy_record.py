"""The data's taxonomy as the plain record checkpoints store (linnaeus.checkpoint.state.taxonomy)."""

from __future__ import annotations

from typing import Any

from linnaeus.checkpoint.state import taxonomy_record, tree_record


def taxonomy_levels(taxonomy: Any) -> dict[str, list[str]] | None:
    """``{level: class names in index order}`` of a dataset's taxonomy (its public ``task_keys`` and
    ``names(level)``), or None when there is none."""
    if taxonomy is None:
        return None
    return taxonomy_record({level: taxonomy.names(level) for level in taxonomy.task_keys})


def taxonomy_parents(taxonomy: Any) -> dict[str, list[str]] | None:
    """``{level: each class's parent name at the next coarser level}`` when the levels form a complete
    tree (``taxonomy.is_complete``), else None: what checkpoints store for decoding without the data."""
    if taxonomy is None or len(taxonomy.task_keys) < 2 or not getattr(taxonomy, "is_complete", False):
        return None
    keys = list(taxonomy.task_keys)
    parents = {level: [taxonomy.names(coarser)[i] for i in taxonomy.parent_indices(level)]
               for level, coarser in zip(keys, keys[1:])}
    return tree_record({level: taxonomy.names(level) for level in keys}, parents)


def parent_names(taxonomy: Any) -> dict[str, dict[str, str]]:
    """``{level: {class name: parent name}}`` (empty when the levels form no complete tree): which
    classes are siblings, for the confused-siblings report."""
    levels, tree = taxonomy_levels(taxonomy), taxonomy_parents(taxonomy)
    return {k: dict(zip(levels[k], tree[k])) for k in tree} if levels and tree else {}


__all__ = ["parent_names", "taxonomy_levels", "taxonomy_parents"]
