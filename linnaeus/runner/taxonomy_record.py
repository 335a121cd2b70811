"""The data's taxonomy as the plain record checkpoints store (linnaeus.checkpoint.state.taxonomy)."""

from __future__ import annotations

from typing import Any

from linnaeus.checkpoint.state import taxonomy_record


def taxonomy_levels(taxonomy: Any) -> dict[str, list[str]] | None:
    """``{level: class names in index order}`` of a dataset's taxonomy (its public ``task_keys`` and
    ``names(level)``), or None when there is none."""
    if taxonomy is None:
        return None
    return taxonomy_record({level: taxonomy.names(level) for level in taxonomy.task_keys})


__all__ = ["taxonomy_levels"]
