"""Eval and predict throughput: linnaeus's loops against bare loops over the same model and images.

    python benchmarks/eval_throughput.py                     # configs/demo.yaml's model, 1 thread
    python benchmarks/eval_throughput.py --rounds 20 --opts DATA.BATCH_SIZE 128

The images are decoded and transformed once and held in memory, so that the comparison measures the
loops, not JPEG decoding (which both would share):

- eval: :func:`linnaeus.engine.evaluator.evaluate` with the hooks ``linnaeus-eval`` gives it (the
  per-image prediction table and the selective-prediction outcomes), against a loop that runs the
  model and counts top-1 hits per rank;
- predict: the model, then :class:`linnaeus.engine.prediction.Predictor` rows written as CSV (to
  memory), against a loop that runs the model and takes each rank's softmax top-k.

Rounds alternate which loop goes first; each pair gives one ratio. Target: >= 0.95 for both.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linnaeus.config import load_config  # noqa: E402
from linnaeus.data.build import build_data  # noqa: E402
from linnaeus.engine.evaluator import evaluate  # noqa: E402
from linnaeus.engine.prediction import Predictor  # noqa: E402
from linnaeus.engine.predictions import PredictionTable  # noqa: E402
from linnaeus.engine.selective import SelectiveStats  # noqa: E402
from linnaeus.models.build import build_model  # noqa: E402
from linnaeus.runner.taxonomy_record import taxonomy_levels, taxonomy_parents  # noqa: E402
from linnaeus.data.hierarchy import Hierarchy  # noqa: E402
from results import record  # noqa: E402


class Cached(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        items = [dataset[i] for i in range(len(dataset))]
        self.images = torch.stack([x for x, _ in items])
        self.labels = torch.stack([y for _, y in items])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def timed(fn) -> float:
    start = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "linnaeus_bench"))
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    cfg = load_config(args.cfg, ["DATA.ROOT", str(work / "toy2400"), "DATA.TOY_NUM_SAMPLES", "2400", "DATA.NUM_WORKERS", "0",
                                 "ENV.OUTPUT.BASE_DIR", str(work / "runs"), *args.opts])
    torch.manual_seed(cfg.EXPERIMENT.SEED)
    data = build_data(cfg)
    keys = list(cfg.DATA.TASK_KEYS)
    cached = Cached(data.val_dataset)
    loader = DataLoader(cached, batch_size=cfg.DATA.BATCH_SIZE)
    model = build_model(cfg, data.taxonomy.num_classes).eval()
    levels, tree_record = taxonomy_levels(data.taxonomy), taxonomy_parents(data.taxonomy)
    tree = Hierarchy.from_record(levels, tree_record)
    names = {k: data.taxonomy.names(k) for k in keys}
    indices, paths = list(range(len(cached))), data.val_dataset.path

    def bare_eval() -> int:
        hits = torch.zeros(len(keys))
        with torch.no_grad():
            for images, labels in loader:
                out = model(images)
                hits += torch.stack([(out[k].argmax(-1) == labels[:, i]).sum() for i, k in enumerate(keys)])
        return len(cached)

    def our_eval() -> int:
        table, selective = PredictionTable(keys, names, indices, paths), SelectiveStats(keys, tree)
        evaluate(model, loader, keys, torch.device("cpu"), hierarchy=data.hierarchy,
                 on_batch=lambda *b: (table(*b), selective(*b)))
        return len(cached)

    def bare_predict() -> int:
        with torch.inference_mode():
            for images, _ in loader:
                out = model(images)
                [out[k].softmax(-1).topk(min(5, out[k].shape[-1]), dim=-1) for k in keys]
        return len(cached)

    def our_predict() -> int:
        predictor = Predictor(levels, tree, {k: 0.5 for k in keys})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=predictor.columns())
        with torch.inference_mode():
            for images, _ in loader:
                for row in predictor.rows(model(images)):
                    writer.writerow({"path": "x.jpg", "error": "", **row})
        return len(cached)

    pairs = {"eval": (our_eval, bare_eval), "predict": (our_predict, bare_predict)}
    print(f"model {cfg.MODEL.TYPE}, {len(cached)} validation images at {cfg.DATA.IMG_SIZE}px, batch "
          f"{cfg.DATA.BATCH_SIZE}, {args.threads} thread(s), torch {torch.__version__}")
    for ours, bare in pairs.values():  # warm-up
        ours(), bare()
    print(f"\n{'':>8} {'ours img/s':>12} {'bare img/s':>12} {'ratio':>8}")
    for name, (ours, bare) in pairs.items():
        results = []
        for r in range(args.rounds):
            if r % 2 == 0:
                o, b = timed(ours), timed(bare)
            else:
                b, o = timed(bare), timed(ours)
            results.append((o, b))
        ratios = [o / b for o, b in results]
        print(f"{name:>8} {statistics.median(o for o, _ in results):>12.1f} "
              f"{statistics.median(b for _, b in results):>12.1f} {statistics.median(ratios):>8.3f}  "
              f"(pairs {min(ratios):.3f}-{max(ratios):.3f}; target >= 0.95: "
              f"{'PASS' if statistics.median(ratios) >= 0.95 else 'FAIL'})")
        record("eval_throughput", f"{name}: linnaeus / bare loop, images/s", ratios, ">= 0.95")


if __name__ == "__main__":
    main()
