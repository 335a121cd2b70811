"""Per-class results of an evaluation, from its per-image rows (``predictions.csv``): each class's
accuracy, the worst classes, and the pairs of sibling taxa (children of one parent) most often taken
for each other: where a taxonomist looks first when a model is wrong.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence


def per_class(rows: Sequence[Mapping[str, Any]], task_keys: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per rank and class present: images, right, accuracy; worst first within each rank."""
    out = []
    for rank in task_keys:
        seen: Counter[str] = Counter()
        right: Counter[str] = Counter()
        for r in rows:
            truth = r[f"{rank}_true"]
            if truth:  # unknown at this rank: not counted
                seen[truth] += 1
                right[truth] += r[f"{rank}_pred"] == truth
        out += sorted(({"rank": rank, "class": c, "images": n, "right": right[c], "accuracy": right[c] / n}
                       for c, n in seen.items()), key=lambda e: (e["accuracy"], -e["images"], e["class"]))
    return out


def confused_siblings(rows: Sequence[Mapping[str, Any]], task_keys: Sequence[str],
                      parents: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """(true, predicted) pairs of different classes under one parent, most frequent first, per rank;
    ``parents``: {rank: {class: parent}} (the coarsest rank's classes are all siblings)."""
    out = []
    for rank in task_keys:
        up = parents.get(rank)
        pairs: Counter[tuple[str, str]] = Counter()
        for r in rows:
            truth, pred = r[f"{rank}_true"], r[f"{rank}_pred"]
            if truth and pred != truth and (up is None or up.get(truth) == up.get(pred)):
                pairs[(truth, pred)] += 1
        out += [{"rank": rank, "true": t, "predicted": p, "images": n, "parent": "" if up is None else up.get(t, "")}
                for (t, p), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))]
    return out


def write_csv(entries: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(entries)
    return path


def first_per_rank(entries: Sequence[Mapping[str, Any]], n: int) -> dict[str, list[dict[str, Any]]]:
    """The first ``n`` entries of each rank (they come sorted): what metrics.json and the log show."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        shown = out.setdefault(e["rank"], [])
        if len(shown) < n:
            shown.append({k: v for k, v in e.items() if k != "rank"})
    return out


__all__ = ["confused_siblings", "first_per_rank", "per_class", "write_csv"]
