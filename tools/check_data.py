#!/usr/bin/env python
"""Check a run's dataset before training: the manifest checks a run does when it starts, then
every image decoded (a run decodes lazily and stops at the first bad one).

    python tools/check_data.py --cfg configs/inat_example.yaml [--workers 8] [--opts KEY VALUE ...]

Exit status 0: every image decodes. 1: some do not (the first ten are listed, and the count).
2: the config or the manifest is refused (the message names the problems).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linnaeus.config import ConfigError, load_config  # noqa: E402
from linnaeus.data.build import build_data  # noqa: E402
from linnaeus.data.check import undecodable_images  # noqa: E402
from linnaeus.data.taxonomy import DatasetError  # noqa: E402

SHOWN = 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", required=True)
    p.add_argument("--workers", type=int, default=4, help="decoding processes (0: this process)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        data = build_data(load_config(a.cfg, a.opts), 0, 1)
    except (ConfigError, DatasetError, FileNotFoundError) as e:
        print(f"check_data: {e}", file=sys.stderr)
        return 2
    problems, total = [], 0
    for ds in (data.train_dataset, data.val_dataset):
        if ds is not None:
            problems += undecodable_images(ds, a.workers)
            total += len(ds)
    if problems:
        shown = "\n".join(f"  - {m}" for m in problems[:SHOWN])
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        print(f"check_data: {len(problems)} of {total} images do not decode:\n{shown}{more}", file=sys.stderr)
        return 1
    print(f"check_data: all {total} images decode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
