"""Per-level cross-entropy for hierarchical labels, combined as a weighted sum."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn


class MultiLevelLoss(nn.Module):
    """``total = sum_l w_l * CE(logits[l], labels[:, i_l])`` over the taxonomic levels.

    Args:
        task_keys: level names, in the column order of the label tensor (leaf first).
        weights: one weight per level (same order); None or empty = all 1.0.
        label_smoothing: passed to every level's cross-entropy.

    ``forward(outputs, labels)`` takes the model's ``{level: logits[B, C_l]}`` and
    ``labels`` LongTensor[B, num_levels] and returns ``(total, {level: loss})`` where every
    loss is the batch mean for its level (unweighted) and ``total`` is their weighted sum.
    """

    def __init__(self, task_keys: Sequence[str], weights: Sequence[float] | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.task_keys = list(task_keys)
        if not self.task_keys:
            raise ValueError("MultiLevelLoss: task_keys is empty; name at least one level (DATA.TASK_KEYS).")
        weights = list(weights) if weights else [1.0] * len(self.task_keys)
        if len(weights) != len(self.task_keys):
            raise ValueError(
                f"MultiLevelLoss: {len(weights)} weights for {len(self.task_keys)} levels {self.task_keys}; "
                "give one weight per level (TRAIN.LOSS_WEIGHTS) or none."
            )
        self.weights = [float(w) for w in weights]
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, outputs: Mapping[str, torch.Tensor],
                labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if labels.ndim != 2 or labels.shape[1] != len(self.task_keys):
            raise ValueError(
                f"MultiLevelLoss: labels must be [batch, {len(self.task_keys)}] (one column per level "
                f"{self.task_keys}), got shape {tuple(labels.shape)}."
            )
        missing = [k for k in self.task_keys if k not in outputs]
        if missing:
            raise KeyError(f"MultiLevelLoss: model outputs lack levels {missing}; got {sorted(outputs)}. "
                           "The model needs one head per DATA.TASK_KEYS entry.")
        per_level = {k: self.criterion(outputs[k], labels[:, i]) for i, k in enumerate(self.task_keys)}
        total = None
        for k, w in zip(self.task_keys, self.weights):
            # Unit weights skip the multiply: one op and one autograd node fewer per level.
            term = per_level[k] if w == 1.0 else w * per_level[k]
            total = term if total is None else total + term
        return total, per_level  # type: ignore[return-value]
