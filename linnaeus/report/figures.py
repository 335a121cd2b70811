"""The figures of an evaluation, drawn with matplotlib's Agg backend (no display needed): reliability
diagrams and risk-coverage curves per rank, per-class accuracy, and accuracy per rank over the run's
epochs (from its TensorBoard events). Each function returns a matplotlib Figure; :func:`save` writes it
as a PNG and hands it to TensorBoard.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

BINS = 15  # as the expected calibration error (engine/evaluator.py)


def _grid(n: int, width: float = 4.2, height: float = 3.6) -> tuple[Figure, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for extra in flat[n:]:
        extra.axis("off")
    return fig, flat[:n]


def reliability(rows: Sequence[Mapping[str, str]], ranks: Sequence[str]) -> Figure:
    """Per rank: accuracy against confidence (the prediction's probability) in 15 bins; a calibrated
    model's bars follow the diagonal."""
    fig, axes = _grid(len(ranks))
    for ax, rank in zip(axes, ranks):
        n, hits, conf = [0] * BINS, [0] * BINS, [0.0] * BINS
        for r in rows:
            if not r.get(f"{rank}_true"):
                continue
            p = float(r[f"{rank}_prob"])
            b = min(int(p * BINS), BINS - 1)
            n[b] += 1
            hits[b] += r[f"{rank}_pred"] == r[f"{rank}_true"]
            conf[b] += p
        centers = [(b + 0.5) / BINS for b in range(BINS)]
        ax.bar(centers, [h / c if c else 0 for h, c in zip(hits, n)], width=1 / BINS, edgecolor="black",
               color="#4c72b0", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
        ax.set(title=f"{rank}: reliability", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def risk_coverage(outcomes: Sequence[Sequence[tuple[float, bool | None]]], ranks: Sequence[str],
                  target: float | None = None) -> Figure:
    """Per rank, the accuracy of the answered images against the share answered, answering the most
    confident first (along each image's lineage)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for i, rank in enumerate(ranks):
        scored = sorted(((o[i][0], bool(o[i][1])) for o in outcomes if o[i][1] is not None), reverse=True)
        if not scored:
            continue
        hits, xs, ys = 0, [], []
        for k, (_, right) in enumerate(scored, start=1):
            hits += right
            xs.append(k / len(scored))
            ys.append(hits / k)
        ax.plot(xs, ys, label=rank)
    if target is not None:
        ax.axhline(target, linestyle="--", color="gray", label=f"target {target:g}")
    ax.set(title="selective accuracy (risk-coverage)", xlabel="coverage", ylabel="accuracy of the answered",
           xlim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_class_accuracy(entries: Sequence[Mapping[str, Any]], ranks: Sequence[str]) -> Figure:
    """Per rank, every class's accuracy, worst first (named where there are few enough to read)."""
    fig, axes = _grid(len(ranks), width=5.0)
    for ax, rank in zip(axes, ranks):
        mine = [e for e in entries if e["rank"] == rank]
        ax.bar(range(len(mine)), [e["accuracy"] for e in mine], color="#55a868")
        if len(mine) <= 30:
            ax.set_xticks(range(len(mine)), [e["class"] for e in mine], rotation=90, fontsize=7)
        else:
            ax.set_xlabel(f"{len(mine)} classes, worst first")
        ax.set(title=f"{rank}: accuracy per class", ylabel="accuracy", ylim=(0, 1))
    fig.tight_layout()
    return fig


def accuracy_over_epochs(series: Mapping[str, Sequence[tuple[int, float]]]) -> Figure:
    """Top-1 accuracy per rank at each validation of the run: ``{rank: [(step, accuracy)]}``."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for rank, points in series.items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", label=rank)
    ax.set(title="validation top-1 over the run", xlabel="optimizer step", ylabel="accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_accuracy(tensorboard_dir: Path, ranks: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """``val/acc1/<rank>`` from the run's TensorBoard events ({} when there are none)."""
    if not tensorboard_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags().get("scalars", []))
    return {rank: [(e.step, e.value) for e in events.Scalars(f"val/acc1/{rank}")]
            for rank in ranks if f"val/acc1/{rank}" in tags}


def save(fig: Figure, path: Path, writer: Any = None, tag: str = "") -> Path:
    """``fig`` as a PNG at ``path`` (and into TensorBoard under ``tag`` with ``writer``), then closed."""
    fig.savefig(path, format="png", dpi=110)
    if writer is not None:
        writer.add_figure(tag or path.stem, fig, close=False)
    plt.close(fig)
    return path


__all__ = ["accuracy_over_epochs", "per_class_accuracy", "reliability", "risk_coverage", "run_accuracy", "save"]
