"""Temperature scaling (Guo et al. 2017): one temperature per rank, fitted on a validation set, that
divides that rank's logits so its probabilities mean what they say. It changes no rank's top-1 class,
only how sure the model claims to be (and so the calibration error, the loss and the thresholds of
selective prediction).

The fit minimises the validation negative log-likelihood over a log-spaced grid of temperatures,
accumulated batch by batch (:class:`TemperatureFit`, an ``evaluate(on_batch=...)`` collector, exact
across ranks), then refined by a parabola through the grid's best point and its neighbours: one pass
over the data, no logits kept. :class:`TemperatureScaled` applies the result to a model, and
:func:`read_temperatures` reads the ``temperature.json`` that ``linnaeus-eval --calibrate`` writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from linnaeus.dist import all_gather_object
from linnaeus.engine.loss import IGNORE_INDEX

# 0.05 to 20 in steps of about 5 %: wide enough for any network's over- or under-confidence.
GRID = torch.logspace(math.log10(0.05), math.log10(20.0), 124, dtype=torch.float64)


class TemperatureFit:
    """Per rank, the summed NLL of the known labels at every temperature of :data:`GRID`."""

    def __init__(self, task_keys: Sequence[str]) -> None:
        self.task_keys = list(task_keys)
        self.nll = {k: torch.zeros(len(GRID), dtype=torch.float64) for k in self.task_keys}
        self.known = dict.fromkeys(self.task_keys, 0)

    def __call__(self, logits: Mapping[str, torch.Tensor], preds: torch.Tensor, labels: torch.Tensor) -> None:
        for i, k in enumerate(self.task_keys):
            known = labels[:, i] != IGNORE_INDEX
            if not known.any():
                continue
            z, target = logits[k][known].double(), labels[known, i]
            z_true = z.gather(1, target[:, None])[:, 0]
            grid = GRID.to(z.device)
            # NLL(T) = logsumexp(z / T) - z_true / T, one row of T at a time (a [T, B, C] block can be large).
            self.nll[k] += torch.stack([(torch.logsumexp(z / t, dim=1) - z_true / t).sum() for t in grid]).cpu()
            self.known[k] += int(known.sum())

    def solve(self) -> dict[str, float]:
        """``{rank: temperature}`` over every rank's data (a collective: every rank calls it); a rank with
        no known label keeps 1.0."""
        parts = all_gather_object((self.nll, self.known))
        out: dict[str, float] = {}
        for k in self.task_keys:
            nll = sum(p[0][k] for p in parts)
            out[k] = _refined_minimum(nll) if sum(p[1][k] for p in parts) else 1.0
        return out


def _refined_minimum(nll: torch.Tensor) -> float:
    """The temperature at the minimum of a parabola (in log temperature) through the grid's best point
    and its two neighbours; the grid's end when the best point is one."""
    i = int(nll.argmin())
    log_t = GRID.log()
    if i in (0, len(GRID) - 1):
        return float(GRID[i])
    (x0, x1), (y0, y1, y2) = log_t[i - 1:i + 1].tolist(), nll[i - 1:i + 2].tolist()
    curvature = y0 - 2 * y1 + y2  # equal spacing in log T
    if curvature <= 0:
        return float(GRID[i])
    return float(math.exp(x1 + 0.5 * (x1 - x0) * (y0 - y2) / curvature))


class TemperatureScaled(nn.Module):
    """``model`` with each rank's logits divided by its temperature (ranks not given are left as they are)."""

    def __init__(self, model: nn.Module, temperatures: Mapping[str, float]) -> None:
        super().__init__()
        self.model, self.temperatures = model, dict(temperatures)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(x)
        return {k: v / self.temperatures[k] if k in self.temperatures else v for k, v in out.items()}


def write_temperatures(path: Path, temperatures: Mapping[str, float], **about: Any) -> Path:
    path.write_text(json.dumps({"temperatures": dict(temperatures), **about}, indent=2, sort_keys=True) + "\n")
    return path


def read_temperatures(path: Path, ranks: Sequence[str]) -> dict[str, float]:
    """The ``temperatures`` of a ``temperature.json`` (or of a ``thresholds.json`` solved on calibrated
    probabilities). Raises ValueError naming the file and what is wrong."""
    try:
        found = json.loads(Path(path).read_text())["temperatures"]
        temperatures = {str(k): float(v) for k, v in found.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: expected the temperature.json linnaeus-eval --calibrate writes "
                         f"({{'temperatures': {{rank: temperature}}}}): {type(e).__name__}: {e}") from None
    unknown = sorted(set(temperatures) - set(ranks))
    if unknown:
        raise ValueError(f"{path}: temperatures for {unknown}, which are not ranks of this model ({', '.join(ranks)}).")
    bad = {k: v for k, v in temperatures.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise ValueError(f"{path}: temperatures must be positive and finite, got {bad}.")
    return temperatures


__all__ = ["GRID", "TemperatureFit", "TemperatureScaled", "read_temperatures", "write_temperatures"]
