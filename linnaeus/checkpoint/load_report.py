"""What a weights load did: the report :func:`linnaeus.checkpoint.loading.load_weights` returns,
its log summary and its JSON form (``load_report.json``)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .disk import write_durably

_MAX_LISTED = 40


@dataclass(frozen=True)
class Expect:
    """A difference the caller anticipates: matching keys are flagged expected with ``reason``.

    ``pattern`` is a regex matched (``re.match``) against the target key (missing, shape
    mismatched) or the checkpoint key (unexpected). ``kinds`` limits where it applies.
    """

    pattern: str
    reason: str
    kinds: tuple[str, ...] = ("missing", "unexpected", "shape_mismatched")

    def matches(self, kind: str, key: str) -> bool:
        return kind in self.kinds and re.match(self.pattern, key) is not None


@dataclass
class KeyIssue:
    """One tensor that was not loaded."""

    key: str
    expected: bool
    reason: str = ""
    source_key: str | None = None  # checkpoint name, when it differs from ``key``
    source_shape: tuple[int, ...] | None = None
    target_shape: tuple[int, ...] | None = None


@dataclass
class LoadReport:
    """What one load did: loaded, missing, unexpected and mis-shaped tensors, with reasons."""

    source: str
    component: str
    strategy: str
    container: str = ""
    stripped_prefix: str = ""
    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # target key -> checkpoint key
    missing: list[KeyIssue] = field(default_factory=list)
    unexpected: list[KeyIssue] = field(default_factory=list)
    shape_mismatched: list[KeyIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Heads mapped by class name (transfer between taxonomies): {level: {"kept", "added", "dropped": [names]}}
    classes: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    applied: bool = False  # False when the load failed and the model was left unchanged

    @property
    def failures(self) -> dict[str, list[KeyIssue]]:
        """Issues that break this report's strategy (empty for ``transfer``)."""
        kinds = {"weights_only": ("missing", "shape_mismatched"), "strict": ("missing", "unexpected", "shape_mismatched")}
        return {
            kind: bad
            for kind in kinds.get(self.strategy, ())
            if (bad := [i for i in getattr(self, kind) if not i.expected])
        }

    @property
    def ok(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, int]:
        issues = self.missing + self.unexpected + self.shape_mismatched
        return {
            "loaded": len(self.loaded),
            "missing": len(self.missing),
            "unexpected": len(self.unexpected),
            "shape_mismatched": len(self.shape_mismatched),
            "expected": sum(i.expected for i in issues),
            "unexpected_issues": sum(not i.expected for i in issues),
        }

    def to_dict(self) -> dict:
        """JSON-ready: everything, plus counts per category and per name prefix."""
        d = asdict(self)
        d["counts"] = self.counts()
        d["ok"] = self.ok
        d["loaded_by_prefix"] = group_by_prefix(self.loaded)
        for kind in ("missing", "unexpected", "shape_mismatched"):
            d[f"{kind}_by_prefix"] = group_by_prefix([i.key for i in getattr(self, kind)])
        return d

    def summary(self) -> str:
        """Human-readable account for the log (non-expected keys listed one by one)."""
        c = self.counts()
        lines = [
            f"[{self.component}] {self.source} (strategy {self.strategy}"
            + (f", from '{self.container}'" if self.container else "")
            + f"): {'loaded' if self.applied else 'NOT applied, would load'} {c['loaded']} tensors, missing {c['missing']}, unexpected {c['unexpected']}, "
            f"shape mismatched {c['shape_mismatched']} ({c['expected']} expected, "
            f"{c['unexpected_issues']} not expected)."
        ]
        if self.loaded:
            lines.append("  loaded: " + format_groups(group_by_prefix(self.loaded)))
        if self.renamed:
            lines.append(f"  renamed from the checkpoint's layout: {len(self.renamed)} tensors")
        for kind in ("missing", "unexpected", "shape_mismatched"):
            issues = getattr(self, kind)
            expected = [i for i in issues if i.expected]
            surprising = [i for i in issues if not i.expected]
            label = kind.replace("_", " ")
            for reason, keys in _group_reasons(expected).items():
                lines.append(f"  {label} (expected: {reason}): " + format_groups(group_by_prefix(keys)))
            if surprising:
                lines.append(f"  {label} ({len(surprising)}):")
                lines.extend(f"    {_format_issue(i)}" for i in surprising[:_MAX_LISTED])
                if len(surprising) > _MAX_LISTED:
                    lines.append(f"    ... and {len(surprising) - _MAX_LISTED} more (see load_report.json)")
        for level, c in self.classes.items():
            lines.append(f"  heads.{level} by class name: {len(c['kept'])} kept, {len(c['added'])} added (initialised)"
                         f"{': ' + _preview(c['added']) if c['added'] else ''}, {len(c['dropped'])} dropped"
                         f"{': ' + _preview(c['dropped']) if c['dropped'] else ''}")
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.extend(f"  WARNING: {w}" for w in self.warnings)
        return "\n".join(lines)


def group_by_prefix(keys: Iterable[str]) -> dict[str, int]:
    """Count keys per module prefix: the name without its last part, at most two levels
    (``blocks.3.attn.qkv.weight`` → ``blocks.3``, ``norm.weight`` → ``norm``)."""
    out: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        prefix = ".".join(parts[:-1][:2]) or parts[0]
        out[prefix] = out.get(prefix, 0) + 1
    return out


def write_load_reports(reports: Sequence[LoadReport], path: str | os.PathLike) -> Path:
    """Write reports as a JSON list, durably (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_durably(path, json.dumps([r.to_dict() for r in reports], indent=2))


def _group_reasons(issues: Sequence[KeyIssue]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i in issues:
        out.setdefault(i.reason, []).append(i.key)
    return out


def format_groups(groups: Mapping[str, int]) -> str:
    items = [f"{p} ({n})" for p, n in groups.items()]
    return _preview(items, 25)


def _format_issue(i: KeyIssue) -> str:
    s = i.key
    if i.source_key and i.source_key != i.key:
        s += f" (checkpoint: {i.source_key})"
    if i.source_shape is not None and i.target_shape is not None:
        s += f": checkpoint {i.source_shape} vs model {i.target_shape}"
    elif i.source_shape is not None:
        s += f" {i.source_shape}"
    elif i.target_shape is not None:
        s += f" {i.target_shape}"
    return s + (f" — {i.reason}" if i.reason else "")


def _preview(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


__all__ = ["Expect", "KeyIssue", "LoadReport", "group_by_prefix", "write_load_reports"]
