"""Per-class results of an evaluation: each class's accuracy, the worst classes, and the pairs of
sibling taxa (children of one parent) most often taken for each other: where a taxonomist looks
first when a model is wrong.

Both come from one count per rank of (true class, predicted class) pairs: built from
``linnaeus-eval``'s per-image rows (``predictions.csv``), or during training's validation by
:class:`ClassTally`, which counts every batch's indices and adds the counts up across ranks.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from linnaeus.dist import all_gather_object
from linnaeus.engine.loss import IGNORE_INDEX

# {rank: Counter[(true name, predicted name)]}; only images whose class is known at that rank.
PairCounts = Mapping[str, Counter]


def pair_counts(rows: Sequence[Mapping[str, Any]], task_keys: Sequence[str]) -> dict[str, Counter]:
    """The pair counts of per-image rows with ``<rank>_true`` and ``<rank>_pred`` names."""
    out: dict[str, Counter] = {}
    for rank in task_keys:
        out[rank] = Counter((r[f"{rank}_true"], r[f"{rank}_pred"]) for r in rows if r[f"{rank}_true"])
    return out


def per_class(counts: PairCounts, task_keys: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per rank and class present: images, right, accuracy; worst first within each rank."""
    out = []
    for rank in task_keys:
        seen: Counter[str] = Counter()
        right: Counter[str] = Counter()
        for (truth, pred), n in counts.get(rank, {}).items():
            seen[truth] += n
            right[truth] += n if pred == truth else 0
        out += sorted(({"rank": rank, "class": c, "images": n, "right": right[c], "accuracy": right[c] / n}
                       for c, n in seen.items()), key=lambda e: (e["accuracy"], -e["images"], e["class"]))
    return out


def confused_siblings(counts: PairCounts, task_keys: Sequence[str],
                      parents: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """(true, predicted) pairs of different classes under one parent, most frequent first, per rank;
    ``parents``: {rank: {class: parent}} (the coarsest rank's classes are all siblings)."""
    out = []
    for rank in task_keys:
        up = parents.get(rank)
        pairs = [((t, p), n) for (t, p), n in counts.get(rank, {}).items()
                 if p != t and (up is None or up.get(t) == up.get(p))]
        out += [{"rank": rank, "true": t, "predicted": p, "images": n, "parent": "" if up is None else up.get(t, "")}
                for (t, p), n in sorted(pairs, key=lambda kv: (-kv[1], kv[0]))]
    return out


class ClassTally:
    """An ``evaluate(on_batch=...)`` collector of the pair counts, by class index, for a validation
    that keeps no per-image rows (training's). :meth:`gather` is a collective: every rank calls it."""

    def __init__(self, task_keys: Sequence[str], names: Mapping[str, Sequence[str]]) -> None:
        self.task_keys, self.names = list(task_keys), names
        self.counts: dict[str, Counter] = {k: Counter() for k in self.task_keys}

    def __call__(self, logits: Any, preds: torch.Tensor, labels: torch.Tensor) -> None:
        for i, rank in enumerate(self.task_keys):
            known = labels[:, i] != IGNORE_INDEX
            pairs = torch.stack([labels[known, i], preds[known, i]], dim=1)
            if len(pairs):
                unique, n = pairs.unique(dim=0, return_counts=True)
                self.counts[rank].update(dict(zip(map(tuple, unique.tolist()), n.tolist())))

    def gather(self) -> dict[str, Counter]:
        """Every rank's counts added up, by class name (the same on every rank)."""
        everyone = all_gather_object(self.counts)
        counts = {k: sum((c[k] for c in everyone), Counter()) for k in self.task_keys}
        return {k: Counter({(self.names[k][t], self.names[k][p]): n for (t, p), n in counts[k].items()})
                for k in self.task_keys}


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


def class_lines(worst: Mapping[str, Sequence[Mapping[str, Any]]], confused: Mapping[str, Sequence[Mapping[str, Any]]],
                task_keys: Sequence[str]) -> list[str]:
    """One line per rank: its worst classes and its most confused siblings (``first_per_rank`` of each)."""
    return [f"{rank}: worst classes "
            + (", ".join(f"{e['class']} {100 * e['accuracy']:.0f}% of {e['images']}" for e in worst.get(rank, []))
               or "none")
            + "; most confused siblings "
            + (", ".join(f"{e['true']} as {e['predicted']} ({e['images']})" for e in confused.get(rank, []))
               or "none")
            for rank in task_keys]


__all__ = ["ClassTally", "class_lines", "confused_siblings", "first_per_rank", "pair_counts", "per_class",
           "write_csv"]
