"""Selective prediction on held-out images: do thresholds solved on the validation set keep their promise?

    python benchmarks/selective_holdout.py --ckpt RUN/checkpoints/checkpoint_epoch_6.pth \\
        --thresholds RUN/eval/checkpoint_epoch_6/thresholds.json [--images 1200] [--seed 1]

The thresholds come from ``linnaeus-eval --target-accuracy A`` on the run's validation split. This
script generates a fresh toy set from another seed (images the model has never seen, from the same
distribution), runs ``linnaeus-predict`` on it with ``--min-confidence @thresholds.json``, and
compares each answer with the truth (the species is the image's folder; genus and family follow the
tree the checkpoint stores): the share answered at each rank, the accuracy of those answers, and of
all of them, against the target. A quality measurement of a trained model, not a speed ratio: it is
not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linnaeus.checkpoint.loading import read_weights  # noqa: E402
from linnaeus.cli.predict import main as predict  # noqa: E402
from linnaeus.data.toy import ensure_toy_dataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--thresholds", required=True, help="thresholds.json from linnaeus-eval --target-accuracy")
    p.add_argument("--images", type=int, default=1200, help="held-out images to generate")
    p.add_argument("--seed", type=int, default=1, help="the toy generator's seed (the training set's is 0)")
    p.add_argument("--img-size", type=int, default=64)
    args = p.parse_args()

    solved = json.loads(Path(args.thresholds).read_text())
    weights = read_weights(args.ckpt)
    levels, tree = weights.taxonomy, weights.tree
    assert levels is not None and tree is not None, "the checkpoint records no taxonomy tree"
    ranks = list(levels)
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_toy_dataset(Path(tmp) / "heldout", args.images, args.img_size, seed=args.seed)
        out = Path(tmp) / "preds.csv"
        if predict(["--ckpt", args.ckpt, "--images", str(root), "--out", str(out),
                    "--min-confidence", f"@{args.thresholds}"]) != 0:
            raise SystemExit("linnaeus-predict failed")
        rows = list(csv.DictReader(out.open()))
    counts = {rank: [0, 0] for rank in (*ranks, "none")}  # answered, right
    for row in rows:
        truth = {ranks[0]: Path(row["path"]).parent.name}
        for finer, coarser in zip(ranks, ranks[1:]):
            truth[coarser] = tree[finer][levels[finer].index(truth[finer])]
        rank = row["confident_rank"] or "none"
        counts[rank][0] += 1
        counts[rank][1] += rank != "none" and row["confident_name"] == truth[rank]
    total, answered = len(rows), sum(c[0] for r, c in counts.items() if r != "none")
    target = solved["target_accuracy"]
    print(f"{total} held-out images (toy seed {args.seed}), thresholds for {target:.3g} accuracy: "
          f"{ {k: round(v, 4) for k, v in solved['thresholds'].items()} }")
    print(f"{'answered at':<12} {'share':>8} {'accuracy':>9}")
    for rank, (n, right) in counts.items():
        acc = f"{100 * right / n:.1f}%" if n and rank != "none" else "-"
        print(f"{rank:<12} {100 * n / total:>7.1f}% {acc:>9}")
    overall = sum(c[1] for c in counts.values()) / answered if answered else float("nan")
    print(f"coverage {100 * answered / total:.1f}%, accuracy of the answers {100 * overall:.2f}% "
          f"(target {100 * target:.0f}%: {'met' if overall >= target else 'NOT met'})")


if __name__ == "__main__":
    main()
