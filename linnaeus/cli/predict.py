"""``linnaeus-predict``: a checkpoint plus images → one CSV row per image, per taxonomic rank.

    linnaeus-predict --ckpt output/demo/checkpoints/checkpoint_epoch_6.pth --images photos/ --out preds.csv
    linnaeus-predict --ckpt checkpoint_epoch_6.pth --images a.jpg b.png list.csv --out preds.csv --min-confidence 0.9

No YAML is needed: the model, its input size and the taxonomy (class names, and the tree for the
most probable consistent path) come from what the checkpoint stores; ``--cfg`` overrides the config.
Orchestration only, top to bottom: locate and read the checkpoint → config → model → images → batches →
rows (:mod:`linnaeus.engine.prediction`) → CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from linnaeus.checkpoint import CheckpointError
from linnaeus.checkpoint.loading import WeightsFile, load_weights, read_weights
from linnaeus.config import ConfigError, config_from_text, get_default_config, load_config
from linnaeus.data.hierarchy import Hierarchy
from linnaeus.data.images import ImagesToPredict, find_images
from linnaeus.data.taxonomy import DatasetError
from linnaeus.data.transforms import build_eval_transform
from linnaeus.dist import select_device
from linnaeus.engine.amp import build_amp
from linnaeus.engine.calibration import TemperatureScaled, read_temperatures
from linnaeus.engine.prediction import Predictor, parse_thresholds
from linnaeus.engine.progress_bar import epoch_progress
from linnaeus.models.build import build_model
from linnaeus.utils.checkpoint_utils import input_resolver

logger = logging.getLogger("linnaeus")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="linnaeus-predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a checkpoint or weights file: path, bare name (cache, then bucket), "
                                                 "URI, or a sharded checkpoint's directory")
    p.add_argument("--images", nargs="+", required=True,
                   help="images, folders (searched recursively) and CSVs with a 'path' column")
    p.add_argument("--out", required=True, help="the CSV to write")
    p.add_argument("--min-confidence", default="0",
                   help="the probability a rank's answer needs to be given: one value for every rank (0.9), or "
                        "per rank (species=0.95,genus=0.9,family=0.5; a rank left out is never answered), or "
                        "@thresholds.json as linnaeus-eval --target-accuracy solves them")
    p.add_argument("--temperature", default="",
                   help="temperature.json from linnaeus-eval --calibrate: each rank's logits are divided by its "
                        "temperature (thresholds.json solved on calibrated probabilities carries them already)")
    p.add_argument("--topk", type=int, default=5, help="classes listed per rank")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes decoding images")
    p.add_argument("--cfg", default="", help="a config to use instead of the one the checkpoint stores")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE overrides of the config")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        written = predict(args)
    except (CheckpointError, ConfigError, DatasetError, ValueError) as e:
        print(f"linnaeus-predict: {e}", file=sys.stderr)
        return 1
    logger.info("Wrote %s (%d images)", args.out, written)
    return 0


def predict(args: argparse.Namespace) -> int:
    """Write the CSV ``args`` asks for; returns the number of rows."""
    locating = load_config(args.cfg, args.opts) if args.cfg else get_default_config()
    path = input_resolver(locating.ENV.INPUT)(args.ckpt)
    weights = read_weights(path, use_ema=args.ema)
    if args.ema and "ema" not in weights.container:
        raise CheckpointError(f"{path} holds no EMA weights (--ema).")
    cfg = locating if args.cfg else _stored_config(weights)
    levels = _taxonomy(weights)
    thresholds = parse_thresholds(args.min_confidence, list(levels))
    temperatures = _temperatures(args.temperature, args.min_confidence, list(levels))
    tree = Hierarchy.from_record(levels, weights.tree) if weights.tree is not None and len(levels) > 1 else None

    device = select_device()
    model = build_model(cfg, {k: len(v) for k, v in levels.items()}).to(device).eval()
    logger.info("%s", load_weights(model, weights.tensors, strategy="strict", source=path, weights_file=weights).summary())
    if temperatures:
        logger.info("Temperature scaling: %s", temperatures)
        model = TemperatureScaled(model, temperatures)
    images = find_images(args.images)
    if not images:
        raise DatasetError(f"no images found in {' '.join(args.images)} (looked for {', '.join(('.jpg', '.png', '.webp'))} "
                           "and the other usual suffixes in folders).")
    dataset = ImagesToPredict(images, build_eval_transform(cfg.DATA.IMG_SIZE), cfg.DATA.IMG_SIZE)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                        pin_memory=device.type == "cuda")
    autocast, _ = build_amp(cfg, device)
    predictor = Predictor(levels, tree, thresholds, topk=args.topk)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f, torch.inference_mode(), \
            epoch_progress(len(loader), 0, "predicting", unit="batch") as bar:
        writer = csv.DictWriter(f, fieldnames=predictor.columns())
        writer.writeheader()
        for batch, indices, errors in loader:
            with autocast():
                logits = model(batch.to(device, non_blocking=True))
            for row, i, error in zip(predictor.rows(logits), indices.tolist(), errors):
                writer.writerow({"path": str(images[i]), "error": error, **({} if error else row)})
            bar.update(1)
    return len(images)


def _temperatures(given: str, min_confidence: str, ranks: list[str]) -> dict[str, float]:
    """``--temperature``'s, or those of a thresholds.json solved on calibrated probabilities (which are
    meaningless without them); both given, they must agree."""
    solved_with: dict[str, float] = {}
    if min_confidence.strip().startswith("@"):
        source = Path(min_confidence.strip()[1:])
        if "temperatures" in json.loads(source.read_text()):
            solved_with = read_temperatures(source, ranks)
    if not given:
        return solved_with
    temperatures = read_temperatures(Path(given), ranks)
    if solved_with and solved_with != temperatures:
        raise ValueError(f"--temperature {given} gives {temperatures}, but the thresholds in "
                         f"{min_confidence.strip()[1:]} were solved with {solved_with}: pass the temperature.json of "
                         "the same linnaeus-eval --calibrate run, or leave --temperature out.")
    return temperatures


def _stored_config(weights: WeightsFile):  # -> CfgNode
    if not weights.config:
        raise CheckpointError(f"{weights.path} records no config (model architecture, input size): it is not a "
                              "linnaeus checkpoint or export. Pass the config it was trained with: --cfg FILE.")
    return config_from_text(weights.config, f"the config stored in {weights.path}")


def _taxonomy(weights: WeightsFile) -> dict[str, list[str]]:
    if weights.taxonomy is None:
        raise CheckpointError(f"{weights.path} records no taxonomy (the class names of each rank), so its outputs "
                              "cannot be named. Use a checkpoint written by linnaeus, or an export of one "
                              "(`linnaeus-ckpt export`).")
    return weights.taxonomy


if __name__ == "__main__":
    from linnaeus.cli.commands import exit_process

    exit_process(main())
