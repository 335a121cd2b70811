"""Taxonomy file: leaf class folder → one name per higher taxonomic level.

The file is JSON::

    {"circle_red": {"genus": "circle", "family": "round"}, ...}

The leaf level (first of ``task_keys``) is the key itself, i.e. the class folder name.
Class indices are the positions of the sorted names of each level, so they depend only
on the taxonomy file: the same file gives the same indices on every machine, every rank
and every run, whichever folders a particular split happens to contain.

The iNaturalist and CSV readers build the same :class:`Taxonomy` from their annotation files;
there a rank may be unknown for some names (``IGNORE_INDEX`` labels). Whatever the source,
the levels must form a tree: :func:`tree_conflicts` refuses a name placed under two parents.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

IGNORE_INDEX = -100  # label of a rank unknown for an image (torch's cross-entropy ignore_index)


class DatasetError(ValueError):
    """A dataset or taxonomy file is invalid; the message names the file and the fix."""


Record = tuple[Mapping[str, str], str]  # ({level: name} known for one image/category, where it came from)


def tree_conflicts(task_keys: Sequence[str], records: Iterable[Record]
                   ) -> tuple[list[str], dict[tuple[str, str], dict[str, str]]]:
    """Check that every name has one ancestor per coarser level across ``records``.

    Returns ``(problems, ancestors)``: one message per disagreement naming both places (e.g.
    ``species 'A b' is under genus 'A' (line 3) and genus 'C' (line 9)``), and
    ``{(level, name): {coarser level: name}}`` for every name seen.
    """
    task_keys = list(task_keys)
    ancestors: dict[tuple[str, str], dict[str, str]] = {}
    first_seen: dict[tuple[str, str, str], str] = {}
    problems: list[str] = []
    for known, where in records:
        chain = [lv for lv in task_keys if known.get(lv)]
        for i, level in enumerate(chain):
            anc = ancestors.setdefault((level, known[level]), {})
            for coarser in chain[i + 1:]:
                seen = anc.setdefault(coarser, known[coarser])
                key = (level, known[level], coarser)
                first_seen.setdefault(key, where)
                if seen != known[coarser]:
                    problems.append(f"{level} {known[level]!r} is under {coarser} {seen!r} ({first_seen[key]}) "
                                    f"and under {coarser} {known[coarser]!r} ({where})")
    if problems:
        return problems, ancestors
    # Records that agree pairwise can still disagree through intermediate ranks: s under G
    # (line 1), G under F1 (line 3), but s directly under F2 (line 2).
    for (level, name), anc in ancestors.items():
        known = [lv for lv in task_keys if lv in anc]
        for coarser in known[1:]:
            mid = known[0]  # the finest known ancestor: the walk up starts there
            via = _reach(ancestors, task_keys, (mid, anc[mid]), coarser)
            if via is not None and via != anc[coarser]:
                through = first_seen.get((mid, anc[mid], coarser), "through its parents")
                problems.append(
                    f"{level} {name!r} is under {coarser} {anc[coarser]!r} ({first_seen[(level, name, coarser)]}) "
                    f"and under {mid} {anc[mid]!r} ({first_seen[(level, name, mid)]}), which is under {coarser} "
                    f"{via!r} ({through})")
    return problems, ancestors


def _reach(ancestors: Mapping[tuple[str, str], Mapping[str, str]], task_keys: Sequence[str],
           node: tuple[str, str], target: str) -> str | None:
    """The ``target``-level ancestor of ``node`` following known parents upwards (None if unknown)."""
    level, _ = node
    anc = ancestors.get(node, {})
    between = [lv for lv in task_keys[task_keys.index(level) + 1:task_keys.index(target)] if lv in anc]
    if between:
        up = _reach(ancestors, task_keys, (between[0], anc[between[0]]), target)
        if up is not None:
            return up
    return anc.get(target)


@dataclass(frozen=True)
class Taxonomy:
    """Per-level class lists, the leaf → label mapping and the tree between the levels.

    ``parents`` maps every leaf name to its names at the coarser levels of ``task_keys``; a
    level may be absent from an entry when it is unknown (CSV manifests). ``branches`` adds
    names at coarser levels that no leaf entry reaches (a genus seen only on images whose
    species is unknown): ``{level: {name: {coarser level: name}}}``. A name that two entries
    place under different parents is refused (:class:`DatasetError`).
    """

    task_keys: tuple[str, ...]
    path: Path
    # leaf name -> {level: name} for the non-leaf levels in task_keys that are known
    parents: Mapping[str, Mapping[str, str]]
    branches: Mapping[str, Mapping[str, Mapping[str, str]]] = field(default_factory=dict)
    _names: dict[str, list[str]] = field(init=False, repr=False)
    _index: dict[str, dict[str, int]] = field(init=False, repr=False)
    _up: dict[str, dict[str, str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        records = [({self.leaf_level: leaf, **p}, f"entry {leaf!r}") for leaf, p in self.parents.items()]
        records += [({lv: name, **p}, f"{lv} {name!r}") for lv, names in self.branches.items()
                    for name, p in names.items()]
        problems, ancestors = tree_conflicts(self.task_keys, records)
        if problems:
            raise DatasetError(f"taxonomy of {self.path}: " + "; ".join(problems[:5]) +
                               ". One name can have one parent: fix the entries.")
        names = {lv: sorted({name for (level, name) in ancestors if level == lv}) for lv in self.task_keys}
        up: dict[str, dict[str, str]] = {lv: {} for lv in self.task_keys}
        for child, parent in zip(self.task_keys, self.task_keys[1:]):
            up[child] = {name: anc[parent] for (lv, name), anc in ancestors.items() if lv == child and parent in anc}
        # frozen dataclass: derived tables are set once here and never change
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_index", {lv: {n: i for i, n in enumerate(ns)} for lv, ns in names.items()})
        object.__setattr__(self, "_up", up)

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

    def index(self, level: str, name: str) -> int:
        """Class index of ``name`` at ``level``."""
        try:
            return self._index[level][name]
        except KeyError:
            raise KeyError(f"{name!r} is not a {level} of the taxonomy {self.path}.") from None

    def __contains__(self, leaf: object) -> bool:
        return leaf in self.parents

    def labels(self, leaf: str) -> list[int]:
        """Class index of ``leaf`` at every level, in ``task_keys`` order (IGNORE_INDEX where unknown)."""
        if leaf not in self.parents:
            example = json.dumps({leaf: {level: "..." for level in self.task_keys[1:]}})[1:-1]
            raise DatasetError(
                f"class folder {leaf!r} has no entry in the taxonomy file {self.path}. "
                f"Add {example} to it, or remove the folder."
            )
        parents = self.parents[leaf]
        out = [self._index[self.leaf_level][leaf]]
        out += [self._index[lv][parents[lv]] if lv in parents else IGNORE_INDEX for lv in self.task_keys[1:]]
        return out

    def parent_indices(self, level: str) -> list[int]:
        """For each class of ``level``, the index of its parent at the next coarser level in
        ``task_keys`` (-1 where unknown). ``level`` must not be the coarsest."""
        i = self.task_keys.index(level)
        parent_level = self.task_keys[i + 1]
        return [self._index[parent_level][self._up[level][n]] if n in self._up[level] else -1
                for n in self._names[level]]

    @property
    def is_complete(self) -> bool:
        """True when every class below the coarsest level has a known parent: the tree the
        hierarchy-aware metrics and consistent decoding walk."""
        return all(-1 not in self.parent_indices(lv) for lv in self.task_keys[:-1])

    def leaf_paths(self) -> list[list[int]]:
        """Each leaf class's index at every level (task_keys order), following the tree upwards.
        Requires :attr:`is_complete`."""
        if not self.is_complete:
            raise DatasetError(f"taxonomy of {self.path} has classes without a known parent; "
                               "leaf paths need the whole tree.")
        ups = [self.parent_indices(lv) for lv in self.task_keys[:-1]]
        paths = []
        for leaf in range(len(self._names[self.leaf_level])):
            path = [leaf]
            for up in ups:
                path.append(up[path[-1]])
            paths.append(path)
        return paths


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
