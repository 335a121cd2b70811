#!/usr/bin/env python
"""Evaluate a checkpoint: `python tools/eval.py --cfg configs/demo.yaml --ckpt latest [--ema] [--out DIR]`.

Under `torchrun --nproc_per_node=N tools/eval.py ...` every process evaluates its share.
"""

import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from linnaeus.cli.commands import evaluate  # noqa: E402

if __name__ == "__main__":
    evaluate()
