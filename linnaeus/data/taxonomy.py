"""Taxonomy file: leaf class folder → one name per higher taxonomic level.

The file is JSON::

    {"circle_red": {"genus": "circle", "family": "round"}, ...}

The leaf level (first of ``task_keys``) is the key itself, i.e. the class folder name.
Class indices are the positions of the sorted names of each level, so they depend only
on the taxonomy file: the same file gives the same indices on every machine, every rank
and every run, whichever folders a particular split happens to contain.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence


class DatasetError(ValueError):
    """A dataset or taxonomy file is invalid; the message names the file and the fix."""


@dataclass(frozen=True)
class Taxonomy:
    """Per-level class lists and the leaf → label mapping."""

    task_keys: tuple[str, ...]
    path: Path
    # leaf name -> {level: name} for every non-leaf level in task_keys
    parents: Mapping[str, Mapping[str, str]]
    _names: dict[str, list[str]] = field(init=False, repr=False)
    _index: dict[str, dict[str, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        leaf_key = self.task_keys[0]
        names = {leaf_key: sorted(self.parents)}
        for level in self.task_keys[1:]:
            names[level] = sorted({p[level] for p in self.parents.values()})
        # frozen dataclass: derived tables are set once here and never change
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_index", {lv: {n: i for i, n in enumerate(ns)} for lv, ns in names.items()})

    @property
    def leaf_level(self) -> str:
        return self.task_keys[0]

    @property
    def num_classes(self) -> dict[str, int]:
        """Number of classes per level, in ``task_keys`` order."""
        return {level: len(self._names[level]) for level in self.task_keys}

    def names(self, level: str) -> list[str]:
        """Class names of ``level``; the list index is the class index."""
        if level not in self._names:
            raise KeyError(f"unknown taxonomic level {level!r}; this taxonomy has {list(self.task_keys)}.")
        return list(self._names[level])

    def __contains__(self, leaf: object) -> bool:
        return leaf in self.parents

    def labels(self, leaf: str) -> list[int]:
        """Class index of ``leaf`` at every level, in ``task_keys`` order."""
        if leaf not in self.parents:
            example = json.dumps({leaf: {level: "..." for level in self.task_keys[1:]}})[1:-1]
            raise DatasetError(
                f"class folder {leaf!r} has no entry in the taxonomy file {self.path}. "
                f"Add {example} to it, or remove the folder."
            )
        parents = self.parents[leaf]
        out = [self._index[self.leaf_level][leaf]]
        out += [self._index[level][parents[level]] for level in self.task_keys[1:]]
        return out


def load_taxonomy(path: str | os.PathLike, task_keys: Sequence[str]) -> Taxonomy:
    """Read and validate a taxonomy JSON file for the levels in ``task_keys`` (leaf first)."""
    path = Path(path)
    task_keys = tuple(task_keys)
    if not task_keys:
        raise DatasetError("task_keys must name at least one taxonomic level (the leaf level first).")
    if not path.is_file():
        raise FileNotFoundError(
            f"taxonomy file not found: {path}. Expected a JSON file mapping each class folder to its "
            f"{list(task_keys[1:])} names; set DATA.TAXONOMY_FILE (relative paths are under DATA.ROOT)."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"taxonomy file {path} is not valid JSON: {e}. Fix the file.") from None
    if not isinstance(data, dict) or not data:
        raise DatasetError(
            f"taxonomy file {path}: expected a non-empty JSON object "
            f'{{"<class folder>": {{"<level>": "<name>", ...}}, ...}}, got {type(data).__name__}.'
        )
    parents: dict[str, dict[str, str]] = {}
    for leaf, entry in data.items():
        if not isinstance(entry, dict):
            raise DatasetError(
                f"taxonomy file {path}: entry {leaf!r} must be an object of level names, got {entry!r}."
            )
        missing = [lv for lv in task_keys[1:] if lv not in entry]
        if missing:
            raise DatasetError(
                f"taxonomy file {path}: entry {leaf!r} lacks level(s) {missing} required by "
                f"DATA.TASK_KEYS {list(task_keys)}. Add them to the entry or drop them from DATA.TASK_KEYS."
            )
        bad = {lv: entry[lv] for lv in task_keys[1:] if not isinstance(entry[lv], str) or not entry[lv]}
        if bad:
            raise DatasetError(f"taxonomy file {path}: entry {leaf!r} has non-string or empty names {bad}.")
        parents[leaf] = {lv: entry[lv] for lv in task_keys[1:]}
    return Taxonomy(task_keys=task_keys, path=path, parents=parents)
