"""Selective prediction: per-rank confidence thresholds solved for a target accuracy, and what they do.

A model need not answer every image at the species: "we're pretty sure this is in the genus Parus" is
a right answer where the species is a guess. Along each image's lineage (the most probable consistent
path where the taxonomy is a tree, else each rank's top-1), the confidence at a rank is that rank's
softmax probability of the class on the path. For a target accuracy, each rank's threshold is the
lowest confidence at which the images at or above it are still right that often on the evaluation
data (the largest coverage that meets the target); an image is then answered at the finest rank whose
confidence reaches its threshold (:class:`~linnaeus.engine.prediction.Predictor` does the same).

:class:`SelectiveStats` collects (confidence, right) per image and rank while
:func:`~linnaeus.engine.evaluator.evaluate` runs; :func:`solve_thresholds` picks the thresholds,
:func:`answered` reports coverage and accuracy at each rank for given thresholds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from linnaeus.dist import all_gather_object
from linnaeus.engine.loss import IGNORE_INDEX

if TYPE_CHECKING:  # the data side builds it from the taxonomy; the engine only calls its methods
    from linnaeus.data.hierarchy import Hierarchy

# One image at one rank: (confidence, right); right is None where the image's class at that rank is unknown.
Outcome = tuple[float, bool | None]


class SelectiveStats:
    """``on_batch`` for :func:`evaluate`: each image's confidence and correctness at every rank."""

    def __init__(self, task_keys: Sequence[str], tree: Hierarchy | None) -> None:
        self.task_keys, self.tree = list(task_keys), tree
        self._on_device: Hierarchy | None = None  # the tree moved once, not per batch
        self.outcomes: list[list[Outcome]] = []  # per image, per rank (task_keys order)

    def __call__(self, logits: dict[str, torch.Tensor], preds: torch.Tensor, labels: torch.Tensor) -> None:
        if self.tree is not None:  # the lineage predict answers along, whatever the metrics decoded
            if self._on_device is None:
                self._on_device = self.tree.to(labels.device)
            path = self._on_device.decode(logits)
        else:
            path = torch.stack([logits[k].argmax(dim=-1) for k in self.task_keys], dim=1)
        conf = torch.stack([logits[k].float().softmax(dim=-1).gather(1, path[:, i:i + 1])[:, 0]
                            for i, k in enumerate(self.task_keys)], dim=1)
        right = path == labels
        known = labels != IGNORE_INDEX
        for c_row, r_row, k_row in zip(conf.tolist(), right.tolist(), known.tolist()):
            self.outcomes.append([(c, r if k else None) for c, r, k in zip(c_row, r_row, k_row)])

    def gather(self) -> list[list[Outcome]]:
        """Every rank's outcomes (a collective; order does not matter for what is computed from them)."""
        return [o for part in all_gather_object(self.outcomes) for o in part]


def solve_thresholds(outcomes: list[list[Outcome]], task_keys: Sequence[str], target: float) -> dict[str, float]:
    """Per rank, the lowest confidence whose images (at or above it) are right at least ``target`` of the
    time; a rank where no confidence reaches the target is left out (never answered)."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target accuracy must be in (0, 1], got {target}.")
    thresholds: dict[str, float] = {}
    for i, rank in enumerate(task_keys):
        scored = sorted(((o[i][0], bool(o[i][1])) for o in outcomes if o[i][1] is not None), reverse=True)
        best: float | None = None
        hits = 0
        for n, (conf, right) in enumerate(scored, start=1):
            hits += right
            # A cut only between distinct confidences: a threshold takes every image at its value.
            if (n == len(scored) or scored[n][0] < conf) and hits >= target * n:
                best = conf
        if best is not None:
            thresholds[rank] = best
    return thresholds


def answered(outcomes: list[list[Outcome]], task_keys: Sequence[str],
             thresholds: Mapping[str, float]) -> dict[str, Any]:
    """Each image answered at the finest rank whose confidence reaches its threshold: the share answered
    at each rank (and not at all), and the accuracy of those answers (over images whose class there is known)."""
    counts = {rank: [0, 0, 0] for rank in (*task_keys, "none")}  # answered, known, right
    for o in outcomes:
        rank = next((r for i, r in enumerate(task_keys) if r in thresholds and o[i][0] >= thresholds[r]), "none")
        counts[rank][0] += 1
        if rank != "none":
            right = o[list(task_keys).index(rank)][1]
            if right is not None:
                counts[rank][1] += 1
                counts[rank][2] += right
    total = max(len(outcomes), 1)
    known = sum(c[1] for r, c in counts.items() if r != "none")
    return {
        "share": {r: c[0] / total for r, c in counts.items()},
        "accuracy": {r: c[2] / c[1] for r, c in counts.items() if r != "none" and c[1]},
        "answered_accuracy": sum(c[2] for c in counts.values()) / known if known else None,
        "coverage": 1 - counts["none"][0] / total,
    }


__all__ = ["SelectiveStats", "answered", "solve_thresholds"]
