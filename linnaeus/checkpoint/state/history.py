"""The metric history a saver carries in every checkpoint, and the best value of its monitor."""

from __future__ import annotations

import copy
from typing import Any, Mapping


class MetricHistory:
    """One record per saved step (``{"epoch", "step", **metrics}``) and the best monitored value.

    Stored in each full checkpoint (``state["metrics"]``) and taken over on resume, so
    keep-best retention and ``best`` survive restarts. NaN never becomes best.
    """

    def __init__(self, monitor: str = "", mode: str = "max") -> None:
        self.monitor, self.mode = monitor, mode
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] = {}

    def record(self, epoch: int, step: int, metrics: Mapping[str, float], filename: str) -> None:
        if not metrics:
            return
        entry = {"epoch": epoch, "step": step, **metrics}
        if self.history and self.history[-1]["step"] == step:
            self.history[-1] = {**self.history[-1], **entry}
        else:
            self.history.append(entry)
        if self.monitor and self.monitor in metrics:
            value = metrics[self.monitor]
            old = self.best.get("value")
            better = old is None or (value > old if self.mode == "max" else value < old)
            if better and value == value:  # NaN != NaN
                self.best = {"monitor": self.monitor, "value": value, "epoch": epoch, "step": step, "file": filename}

    def state_dict(self) -> dict[str, Any]:
        return {"history": copy.deepcopy(self.history), "best": dict(self.best)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [dict(r) for r in state.get("history", [])]
        self.best = dict(state.get("best", {}))


__all__ = ["MetricHistory"]
