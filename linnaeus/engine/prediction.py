"""From a batch of logits to the rows ``linnaeus-predict`` writes: per rank the top-k, along the tree
the most probable consistent path, and the finest rank the model is confident of.

Selective prediction the way a field guide answers: when the species is uncertain, the genus may not
be. Along the most probable consistent path (the taxa of one lineage, :meth:`Hierarchy.decode`), the
answer is the finest rank whose class has at least that rank's threshold of probability (its own head's
softmax). Without a tree the ranks' top-1 classes are taken as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

if TYPE_CHECKING:  # the data side builds it from the taxonomy; the engine only calls its methods
    from linnaeus.data.hierarchy import Hierarchy


def parse_thresholds(text: str, ranks: Sequence[str]) -> dict[str, float]:
    """``"0.9"`` (every rank), ``"species=0.95,genus=0.9"`` (the ranks named; the others are never
    answered) or ``"@thresholds.json"`` (what ``linnaeus-eval --target-accuracy`` solved) →
    ``{rank: probability}``. Raises ValueError naming what is wrong."""
    text = str(text).strip()
    if text.startswith("@"):
        return _from_file(Path(text[1:]), ranks)
    if "=" not in text:
        value = _probability(text, "--min-confidence")
        return {rank: value for rank in ranks}
    out: dict[str, float] = {}
    for part in text.split(","):
        rank, _, value = part.partition("=")
        rank = rank.strip()
        if rank not in ranks:
            raise ValueError(f"--min-confidence: {rank!r} is not a rank of this model ({', '.join(ranks)}).")
        out[rank] = _probability(value, f"--min-confidence {rank}")
    return out


def _from_file(path: Path, ranks: Sequence[str]) -> dict[str, float]:
    try:
        solved = json.loads(path.read_text())["thresholds"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--min-confidence @{path}: expected the thresholds.json linnaeus-eval --target-accuracy "
                         f"writes ({{'thresholds': {{rank: probability}}}}): {type(e).__name__}: {e}") from None
    return parse_thresholds(",".join(f"{rank}={value}" for rank, value in solved.items()), ranks) if solved else {}


def _probability(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: expected a probability between 0 and 1, got {text!r}.") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what}: expected a probability between 0 and 1, got {value}.")
    return value


class Predictor:
    """Rows of predictions for batches of logits.

    Args:
        levels: ``{rank: class names in index order}``, finest rank first (what the checkpoint stores).
        tree: the ranks' tree (:meth:`Hierarchy.from_record`), or None.
        thresholds: ``{rank: probability needed to answer at that rank}`` (:func:`parse_thresholds`).
        topk: classes listed per rank.
    """

    def __init__(self, levels: Mapping[str, Sequence[str]], tree: Hierarchy | None, thresholds: Mapping[str, float],
                 *, topk: int = 5) -> None:
        self.levels, self.ranks, self.tree = levels, list(levels), tree
        self.thresholds, self.topk = dict(thresholds), topk
        self._device_tree: Hierarchy | None = None

    def columns(self) -> list[str]:
        cols = ["path", "error"]
        for rank in self.ranks:
            cols += [rank, f"{rank}_prob", f"{rank}_top{self.topk}"]
        if self.tree is not None:
            cols += [f"path_{rank}" for rank in self.ranks]
        return cols + ["confident_rank", "confident_name", "confident_prob"]

    def rows(self, logits: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
        probs = {rank: logits[rank].float().softmax(dim=-1) for rank in self.ranks}
        batch = next(iter(probs.values())).shape[0]
        rows: list[dict[str, Any]] = [{} for _ in range(batch)]
        for rank in self.ranks:
            names = self.levels[rank]
            top_p, top_i = probs[rank].topk(min(self.topk, len(names)), dim=-1)
            for row, ps, cs in zip(rows, top_p.tolist(), top_i.tolist()):
                row[rank], row[f"{rank}_prob"] = names[cs[0]], f"{ps[0]:.6f}"
                row[f"{rank}_top{self.topk}"] = "|".join(f"{names[c]}:{p:.6f}" for c, p in zip(cs, ps))
        # The lineage answered: the most probable consistent path, or each rank's own top-1.
        if self.tree is not None:
            if self._device_tree is None:
                self._device_tree = self.tree.to(next(iter(probs.values())).device)
            chosen = self._device_tree.decode(logits)  # [B, ranks]
        else:
            chosen = torch.stack([probs[rank].argmax(dim=-1) for rank in self.ranks], dim=1)
        chosen_p = torch.stack([probs[rank].gather(1, chosen[:, i:i + 1])[:, 0] for i, rank in enumerate(self.ranks)],
                               dim=1)
        for row, classes, ps in zip(rows, chosen.tolist(), chosen_p.tolist()):
            if self.tree is not None:
                row.update({f"path_{rank}": self.levels[rank][c] for rank, c in zip(self.ranks, classes)})
            row.update(confident_rank="", confident_name="", confident_prob="")
            for rank, c, p in zip(self.ranks, classes, ps):  # finest first
                if rank in self.thresholds and p >= self.thresholds[rank]:
                    row.update(confident_rank=rank, confident_name=self.levels[rank][c], confident_prob=f"{p:.6f}")
                    break
        return rows


__all__ = ["Predictor", "parse_thresholds"]
