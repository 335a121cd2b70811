"""``linnaeus-eval``: evaluate a checkpoint on the config's validation split.

    linnaeus-eval --cfg configs/demo.yaml --ckpt latest
    torchrun --nproc_per_node=2 tools/eval.py --cfg configs/demo.yaml --ckpt checkpoint_epoch_6.pth --ema

Orchestration only, top to bottom: config → data → model → the checkpoint's weights → evaluate →
``metrics.json`` and ``predictions.csv`` in the output folder. The numbers are those the training
run's own validation computes (:func:`linnaeus.engine.evaluator.evaluate`, the same decoding and
sharding), so a checkpoint evaluated at the world size that trained it reproduces its stored
validation metrics exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from yacs.config import CfgNode

from linnaeus.checkpoint import CheckpointError
from linnaeus.checkpoint.loading import load_weights, read_weights
from linnaeus.config import ConfigError, load_config, run_dir
from linnaeus.data.build import build_data
from linnaeus.data.other_split import eval_loader, labelled_against, read_split
from linnaeus.data.transforms import build_transforms
from linnaeus.dist import distributed_session, get_rank, get_world_size, is_main_process, run_on_all_ranks, \
    select_device
from linnaeus.engine.amp import build_amp
from linnaeus.engine.calibration import TemperatureFit, TemperatureScaled, write_temperatures
from linnaeus.engine.class_report import (class_lines, confused_siblings, first_per_rank, pair_counts, per_class,
                                          write_csv)
from linnaeus.engine.evaluator import evaluate, summary_lines
from linnaeus.engine.predictions import PredictionTable
from linnaeus.engine.run_log import setup_logging
from linnaeus.engine.selective import SelectiveStats, answered, solve_thresholds
from linnaeus.models.build import build_model
from linnaeus.runner.locate import locate_checkpoint
from linnaeus.runner.taxonomy_record import parent_names, taxonomy_levels

logger = logging.getLogger("linnaeus")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="linnaeus-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", required=True, help="the experiment YAML the checkpoint was trained with")
    p.add_argument("--ckpt", required=True,
                   help="'latest', 'best' (by CHECKPOINT.MONITOR) or 'step:N' of the config's run; a run dir; a "
                        "checkpoint's path, bare name (cache, then bucket) or URI; a sharded checkpoint's directory")
    p.add_argument("--data", default="", help="evaluate on this iNaturalist JSON or CSV manifest instead of the "
                                              "config's validation split (labels matched by class name)")
    p.add_argument("--data-root", default="", help="where --data's image paths start (default: its folder)")
    p.add_argument("--out", default="", help="output folder (default: <run dir>/eval/<checkpoint>[_ema])")
    p.add_argument("--ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    p.add_argument("--topk", type=int, default=5, help="classes listed per rank in predictions.csv")
    p.add_argument("--target-accuracy", type=float, default=None,
                   help="solve per-rank confidence thresholds for this accuracy (e.g. 0.99) on the data evaluated: "
                        "thresholds.json, for linnaeus-predict --min-confidence @thresholds.json")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a temperature per rank on the data evaluated (temperature scaling), report the "
                        "calibrated metrics and write temperature.json, for linnaeus-predict --temperature")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides of the config")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.cfg, args.opts)
    except ConfigError as e:
        print(f"linnaeus-eval: config error: {e}", file=sys.stderr)
        return 2
    try:
        with distributed_session(cfg.TRAIN.COLLECTIVE_TIMEOUT_S):
            run_eval(cfg, args.ckpt, out=args.out, ema=args.ema, topk=args.topk, target=args.target_accuracy,
                     data_file=args.data, data_root=args.data_root, calibrate=args.calibrate)
    except (CheckpointError, ValueError) as e:
        print(f"linnaeus-eval: {e}", file=sys.stderr)
        return 1
    return 0


def run_eval(cfg: CfgNode, ckpt: str, *, out: str = "", ema: bool = False, topk: int = 5,
             target: float | None = None, data_file: str = "", data_root: str = "",
             calibrate: bool = False) -> dict[str, Any]:
    """Evaluate checkpoint ``ckpt`` on ``cfg``'s validation split (or the manifest ``data_file``); returns
    the metrics (every rank). With ``calibrate`` the metrics, rows and thresholds are those of the model
    with temperatures fitted on the same data (a first pass)."""
    rank, world_size, device = get_rank(), get_world_size(), select_device()
    path = run_on_all_ranks(lambda: locate_checkpoint(cfg, ckpt), f"locating checkpoint {ckpt!r}", CheckpointError)
    name = path.name.split(".")[0] + ("_ema" if ema else "") + (f"_{Path(data_file).stem}" if data_file else "")
    out_dir = Path(out) if out else run_dir(cfg) / "eval" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir, rank)
    logger.info("Evaluating %s%s (world size %d, device %s)", path, " (EMA weights)" if ema else "", world_size, device)

    data = build_data(cfg, rank, world_size)  # its taxonomy is the model's: the data evaluated is labelled in it
    evaluated = {"file": "the config's validation split"}
    if data_file:
        data, evaluated = _other_data(cfg, data, data_file, data_root, rank, world_size)
    if data.val_loader is None:
        raise ValueError(f"the config's data has no validation split to evaluate on (DATA.ROOT {cfg.DATA.ROOT}, "
                         f"DATA.VAL_FRACTION {cfg.DATA.VAL_FRACTION}); pass --data FILE.")
    model = build_model(cfg, data.taxonomy.num_classes).to(device)
    _load(model, path, ema=ema, expected=taxonomy_levels(data.taxonomy))
    task_keys = list(cfg.DATA.TASK_KEYS)
    table = PredictionTable(task_keys, {k: data.taxonomy.names(k) for k in task_keys},
                            list(data.val_loader.sampler), data.val_dataset.path, topk=topk)
    selective = SelectiveStats(task_keys, data.hierarchy)  # the risk-coverage figure; thresholds with a target

    def on_batch(*batch: Any) -> None:
        table(*batch)
        selective(*batch)

    autocast, _ = build_amp(cfg, device)
    calibration: dict[str, Any] = {}
    if calibrate:
        model, calibration = _calibrate(model, data, task_keys, device, autocast, cfg.EVAL.CONSISTENT_DECODING)
    metrics = evaluate(model, data.val_loader, task_keys, device, autocast=autocast, hierarchy=data.hierarchy,
                       consistent_decoding=cfg.EVAL.CONSISTENT_DECODING, on_batch=on_batch)
    rows = table.gather()
    outcomes = selective.gather()
    if is_main_process():
        table.write(rows, out_dir / "predictions.csv")
        record = {"checkpoint": str(path), "ema": ema, "world_size": world_size, "data": evaluated, "metrics": metrics}
        if calibration:
            calibration["ece_after"] = {k: metrics[f"val/ece/{k}"] for k in task_keys if f"val/ece/{k}" in metrics}
            record["calibration"] = calibration
            write_temperatures(out_dir / "temperature.json", calibration["temperatures"], checkpoint=str(path),
                               ema=ema, data=evaluated)
            logger.info("Temperature scaling: %s; calibration error before %s, after %s; temperature.json for "
                        "linnaeus-predict --temperature %s", _rounded(calibration["temperatures"]),
                        _rounded(calibration["ece_before"]), _rounded(calibration["ece_after"]),
                        out_dir / "temperature.json")
        counts = pair_counts(rows, task_keys)
        classes = per_class(counts, task_keys)
        record.update(_class_report(counts, classes, task_keys, parent_names(data.taxonomy), out_dir))
        if target is not None:
            record["selective"] = _selective(outcomes, task_keys, target, out_dir, calibration.get("temperatures"))
        (out_dir / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        # Imported here: matplotlib costs every process that imports this module (training's too, for
        # --eval-only) half a second of start-up, and only this process draws.
        from linnaeus.report.evaluation import write_evaluation_report

        written = write_evaluation_report(out_dir, record, rows, outcomes, classes, task_keys,
                                          run_dir(cfg) / "tensorboard")
        logger.info("\n".join(["", *summary_lines(metrics, task_keys, data.taxonomy.num_classes),
                               f"Wrote {out_dir}: metrics.json, predictions.csv ({len(rows)} images), per_class.csv, "
                               f"confused_siblings.csv, {', '.join(p.name for p in written.values())}"]))
    return metrics


def _other_data(cfg: CfgNode, data: Any, data_file: str, data_root: str, rank: int,
                world_size: int) -> tuple[Any, dict[str, Any]]:
    """``data`` with its validation split replaced by the manifest ``data_file``, labelled by class name."""
    manifest = read_split(data_file, data_root or None, cfg.DATA.TASK_KEYS)
    dataset, outside = labelled_against(manifest, data.taxonomy, build_transforms(cfg)[1], int(cfg.EXPERIMENT.SEED))
    if outside:
        logger.warning("%s: images whose class the model's taxonomy lacks, per rank: %s (left out of that rank's "
                       "metrics)", data_file, outside)
    loader = eval_loader(dataset, cfg.EVAL.BATCH_SIZE or cfg.DATA.BATCH_SIZE, rank, world_size, cfg.DATA.NUM_WORKERS)
    return replace(data, val_loader=loader, val_dataset=dataset), {"file": str(data_file), "images": len(dataset),
                                                                    "outside_taxonomy": outside}


def _class_report(counts: dict[str, Any], classes: list[dict[str, Any]], task_keys: list[str],
                  parents: dict[str, dict[str, str]], out_dir: Path) -> dict[str, Any]:
    """per_class.csv and confused_siblings.csv, and the first of each in metrics.json and the log."""
    pairs = confused_siblings(counts, task_keys, parents)
    write_csv(classes, out_dir / "per_class.csv", ["rank", "class", "images", "right", "accuracy"])
    write_csv(pairs, out_dir / "confused_siblings.csv", ["rank", "parent", "true", "predicted", "images"])
    worst, confused = first_per_rank(classes, 5), first_per_rank(pairs, 5)
    for line in class_lines(worst, confused, task_keys):
        logger.info("%s", line)
    return {"worst_classes": worst, "confused_siblings": confused}


def _calibrate(model: Any, data: Any, task_keys: list[str], device: Any, autocast: Any,
               consistent: bool) -> tuple[Any, dict[str, Any]]:
    """The model with a temperature per rank fitted on ``data``'s validation loader (a first pass)."""
    fit = TemperatureFit(task_keys)
    before = evaluate(model, data.val_loader, task_keys, device, autocast=autocast, hierarchy=data.hierarchy,
                      consistent_decoding=consistent, on_batch=fit)
    temperatures = fit.solve()
    return TemperatureScaled(model, temperatures), {
        "temperatures": temperatures, "ece_before": {k: before[f"val/ece/{k}"] for k in task_keys
                                                     if f"val/ece/{k}" in before}}


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


def _selective(outcomes: list, task_keys: list[str], target: float, out_dir: Path,
               temperatures: dict[str, float] | None) -> dict[str, Any]:
    """Thresholds for ``target`` (thresholds.json, what predict reads) and what they answer on this data;
    solved on calibrated probabilities, the file carries the temperatures they need."""
    thresholds = solve_thresholds(outcomes, task_keys, target)
    report = {"target_accuracy": target, "thresholds": thresholds, **answered(outcomes, task_keys, thresholds)}
    solved = {"target_accuracy": target, "thresholds": thresholds, **({"temperatures": temperatures} if temperatures
                                                                       else {})}
    (out_dir / "thresholds.json").write_text(json.dumps(solved, indent=2) + "\n")
    shares = ", ".join(f"{rank} {100 * share:.1f}%" for rank, share in report["share"].items())
    logger.info("Selective prediction at %.3g target accuracy: thresholds %s; answered at %s (accuracy of the "
                "answers %s); thresholds.json for linnaeus-predict --min-confidence @%s", target,
                {k: round(v, 4) for k, v in thresholds.items()}, shares,
                "n/a" if report["answered_accuracy"] is None else f"{100 * report['answered_accuracy']:.1f}%",
                out_dir / "thresholds.json")
    return report


def _load(model: Any, path: Path, *, ema: bool, expected: dict[str, list[str]] | None) -> None:
    """Every model tensor from ``path`` (strict), after checking that its taxonomy is the data's."""
    weights = read_weights(path, use_ema=ema)
    if ema and "ema" not in weights.container:
        raise CheckpointError(f"{path} holds no EMA weights (--ema): it was trained with TRAIN.EMA.ENABLED False, "
                              "or is a weights-only file of the model.")
    if weights.taxonomy is not None and expected is not None and weights.taxonomy != expected:
        raise CheckpointError(f"{path} was trained on another taxonomy than the config's data (its classes per rank "
                              "differ): evaluate it with the config and data it was trained on.")
    report = load_weights(model, weights.tensors, strategy="strict", source=path, weights_file=weights)
    logger.info("%s", report.summary())


if __name__ == "__main__":
    from linnaeus.cli.commands import exit_process

    exit_process(main())
