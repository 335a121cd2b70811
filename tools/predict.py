#!/usr/bin/env python
"""Predict with a checkpoint: `python tools/predict.py --ckpt CKPT --images PATH [PATH ...] --out FILE.csv`.

One process; DataLoader workers decode the images.
"""

import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from linnaeus.cli.commands import predict  # noqa: E402

if __name__ == "__main__":
    predict()
