"""An evaluation's figures (PNGs, and the same in TensorBoard) and its ``report.html``, from what
``linnaeus-eval`` computed: the metrics, the per-image rows, the selective outcomes, the per-class table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from torch.utils.tensorboard import SummaryWriter

from . import figures
from .page import table, write_report


def write_evaluation_report(out_dir: Path, record: Mapping[str, Any], rows: Sequence[Mapping[str, str]],
                            outcomes: Sequence[Sequence[tuple[float, bool | None]]],
                            classes: Sequence[Mapping[str, Any]], ranks: Sequence[str],
                            run_tensorboard: Path) -> dict[str, Path]:
    """Every figure as ``out_dir/<name>.png`` and under ``out_dir/tensorboard``, then ``report.html``;
    returns ``{name: path}`` of what was written."""
    selective = record.get("selective") or {}
    drawn = {
        "reliability": figures.reliability(rows, ranks),
        "risk_coverage": figures.risk_coverage(outcomes, ranks, selective.get("target_accuracy")),
        "per_class_accuracy": figures.per_class_accuracy(classes, ranks),
    }
    history = figures.run_accuracy(run_tensorboard, ranks)
    if history:
        drawn["accuracy_over_epochs"] = figures.accuracy_over_epochs(history)
    writer = SummaryWriter(str(out_dir / "tensorboard"))
    try:
        written = {name: figures.save(fig, out_dir / f"{name}.png", writer, f"eval/{name}")
                   for name, fig in drawn.items()}
    finally:
        writer.close()
    written["report"] = write_report(
        out_dir / "report.html", title=f"Evaluation of {Path(str(record['checkpoint'])).name}",
        facts={"checkpoint": record["checkpoint"], "EMA weights": "yes" if record.get("ema") else "no",
               "processes": record.get("world_size", 1), "images": int(record["metrics"].get("val/samples", 0))},
        sections=_sections(record, ranks),
        figures=[(_CAPTIONS[name], path) for name, path in written.items()])
    return written


_CAPTIONS = {
    "reliability": "Reliability per rank: accuracy against the prediction's probability (15 bins)",
    "risk_coverage": "Accuracy of the answered images against the share answered, most confident first",
    "per_class_accuracy": "Accuracy of every class, worst first",
    "accuracy_over_epochs": "Validation top-1 per rank over the run (its TensorBoard events)",
}


def _sections(record: Mapping[str, Any], ranks: Sequence[str]) -> list[tuple[str, str]]:
    m = record["metrics"]
    per_rank = [(r, *(m.get(f"val/{k}/{r}", float("nan")) for k in ("acc1", "acc5", "bacc", "ece"))) for r in ranks]
    sections = [("Per rank", table(["rank", "top-1", "top-5", "balanced", "calibration error"], per_rank, "per-rank"))]
    tree = [(k.split("/", 1)[1], v) for k, v in sorted(m.items())
            if k.split("/", 1)[1] in ("consistency", "mistake_severity", "hdist@1", "hdist@5")]
    if tree:
        sections.append(("Along the tree", table(["measure", "value"], tree, "tree")))
    worst = [(r, e["class"], e["images"], e["accuracy"]) for r in ranks for e in record.get("worst_classes", {}).get(r, [])]
    sections.append(("Worst classes", table(["rank", "class", "images", "accuracy"], worst, "worst-classes")))
    pairs = [(r, e["parent"], e["true"], e["predicted"], e["images"])
             for r in ranks for e in record.get("confused_siblings", {}).get(r, [])]
    sections.append(("Most confused siblings", table(["rank", "parent", "true", "predicted as", "images"], pairs,
                                                     "confused-siblings")))
    calibration = record.get("calibration")
    if calibration:
        tempered = [(r, calibration["temperatures"].get(r, 1.0), calibration["ece_before"].get(r, float("nan")),
                     calibration["ece_after"].get(r, float("nan"))) for r in ranks]
        sections.append(("Temperature scaling (fitted on these images; the metrics are after it)",
                         table(["rank", "temperature", "calibration error before", "after"], tempered, "calibration")))
    selective = record.get("selective")
    if selective:
        answered = [(r, selective["thresholds"].get(r, "never"), selective["share"].get(r, 0.0),
                     selective["accuracy"].get(r, float("nan"))) for r in ranks]
        answered.append(("none", "", selective["share"].get("none", 0.0), float("nan")))
        sections.append((f"Selective prediction at {selective['target_accuracy']:g} target accuracy",
                         table(["answered at", "threshold", "share", "accuracy"], answered, "selective")))
    sections.append(("All metrics", table(["metric", "value"], sorted(m.items()), "metrics")))
    return sections


__all__ = ["write_evaluation_report"]
