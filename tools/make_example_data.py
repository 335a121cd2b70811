#!/usr/bin/env python
"""Write the small example datasets (iNaturalist JSON or CSV manifest with missing ranks) to a folder.

    python tools/make_example_data.py inat data/inat_example
    python tools/make_example_data.py csv data/csv_example --train-per-species 20

``configs/inat_example.yaml`` does this itself on first use (``DATA.EXAMPLE inat``); run this to
look at the files, or to make a bigger set. See docs/data.md for the formats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linnaeus.data.examples import KINDS, ensure_example_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=KINDS, help="inat: train.json/val.json + JPEGs; csv: train.csv/val.csv + JPEGs")
    p.add_argument("root", help="folder to create (must be missing or empty)")
    p.add_argument("--train-per-species", type=int, default=40)
    p.add_argument("--val-per-species", type=int, default=4)
    p.add_argument("--img-size", type=int, default=64, help="square JPEG size in pixels")
    a = p.parse_args(argv)
    root = ensure_example_dataset(a.root, a.kind, a.train_per_species, a.val_per_species, a.img_size)
    print(f"example {a.kind} dataset in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
