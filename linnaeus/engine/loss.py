"""Per-level cross-entropy for hierarchical labels, combined as a weighted sum.

A label of ``IGNORE_INDEX`` (-100) marks a rank unknown for that image (CSV manifests with empty
cells): it is left out of that level's loss, and the level's mean is over its known labels only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

IGNORE_INDEX = -100  # = linnaeus.data.taxonomy.IGNORE_INDEX; engine does not import data


class MultiLevelLoss(nn.Module):
    """``total = sum_l w_l * CE(logits[l], labels[:, i_l])`` over the taxonomic levels.

    Args:
        task_keys: level names, in the column order of the label tensor (leaf first).
        weights: one weight per level (same order); None or empty = all 1.0.
        label_smoothing: passed to every level's cross-entropy.

    ``forward(outputs, labels)`` takes the model's ``{level: logits[B, C_l]}`` and
    ``labels`` LongTensor[B, num_levels] and returns ``(total, {level: loss})`` where every
    loss is the mean over the batch's known labels for its level (unweighted; 0 when the batch
    has none at that level) and ``total`` is their weighted sum.
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
        # Summed, then divided by the known-label count: a plain mean over ignored labels would be
        # 0/0 = NaN for a batch with no known label at a level.
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction="sum",
                                             ignore_index=IGNORE_INDEX)

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
        known = (labels != IGNORE_INDEX).sum(0).clamp_(min=1)  # stays on the device: no host sync
        per_level = {k: self.criterion(outputs[k], labels[:, i]) / known[i] for i, k in enumerate(self.task_keys)}
        total = None
        for k, w in zip(self.task_keys, self.weights):
            # Unit weights skip the multiply: one op and one autograd node fewer per level.
            term = per_level[k] if w == 1.0 else w * per_level[k]
            total = term if total is None else total + term
        return total, per_level  # type: ignore[return-value]
