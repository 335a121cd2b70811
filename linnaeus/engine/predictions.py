"""Per-image predictions of an evaluation, as ``predictions.csv`` holds them.

:class:`PredictionTable` is handed to :func:`~linnaeus.engine.evaluator.evaluate` as its
``on_batch``: it keeps, per image and per taxonomic rank, the top-1 prediction (as the evaluation
decoded it), its probability and the top-k classes, on the CPU, in the loader's order. Under
torch.distributed every rank keeps its own shard; :meth:`gather` brings them to rank 0 in dataset
order.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from linnaeus.dist import all_gather_object


class PredictionTable:
    """Rows of ``predictions.csv``, filled batch by batch.

    Args:
        task_keys: the ranks, finest first (``DATA.TASK_KEYS``).
        names: ``{rank: class names in index order}``.
        indices: the dataset indices this process evaluates, in the loader's order.
        paths: dataset index -> the image's file.
        topk: classes listed per rank.
    """

    def __init__(self, task_keys: Sequence[str], names: Mapping[str, Sequence[str]], indices: Sequence[int],
                 paths: Any, topk: int = 5) -> None:
        self.task_keys, self.names, self.topk = list(task_keys), names, topk
        self._indices, self._paths = list(indices), paths
        self.rows: list[dict[str, Any]] = []

    def __call__(self, logits: dict[str, torch.Tensor], preds: torch.Tensor, labels: torch.Tensor) -> None:
        start = len(self.rows)
        batch = [{"index": i, "path": str(self._paths(i))} for i in self._indices[start:start + labels.shape[0]]]
        for level, key in enumerate(self.task_keys):
            names = self.names[key]
            probs = logits[key].float().softmax(dim=-1).cpu()
            top_p, top_i = probs.topk(min(self.topk, probs.shape[-1]), dim=-1)
            pred = preds[:, level].cpu()
            chosen = probs.gather(1, pred.unsqueeze(1))[:, 0]  # the decoded prediction's own probability
            for row, truth, p, q, ps, cs in zip(batch, labels[:, level].tolist(), pred.tolist(), chosen.tolist(),
                                                 top_p.tolist(), top_i.tolist()):
                row[f"{key}_true"] = names[truth] if 0 <= truth < len(names) else ""  # unknown at this rank
                row[f"{key}_pred"] = names[p]
                row[f"{key}_prob"] = f"{q:.6f}"
                row[f"{key}_top{self.topk}"] = "|".join(f"{names[c]}:{v:.6f}" for c, v in zip(cs, ps))
        self.rows.extend(batch)

    def gather(self) -> list[dict[str, Any]]:
        """Every rank's rows, in dataset order (a collective; every rank gets them)."""
        rows = [r for part in all_gather_object(self.rows) for r in part]
        return sorted(rows, key=lambda r: r["index"])

    def columns(self) -> list[str]:
        cols = ["index", "path"]
        for key in self.task_keys:
            cols += [f"{key}_true", f"{key}_pred", f"{key}_prob", f"{key}_top{self.topk}"]
        return cols

    def write(self, rows: list[dict[str, Any]], path: Path) -> Path:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns())
            writer.writeheader()
            writer.writerows(rows)
        return path


__all__ = ["PredictionTable"]
