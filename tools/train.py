#!/usr/bin/env python
"""Train a linnaeus experiment: `python tools/train.py --cfg configs/demo.yaml [--opts KEY VALUE ...]`.

Under `torchrun --nproc_per_node=N tools/train.py ...` it runs distributed data parallel.
"""

import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from linnaeus.cli.commands import train  # noqa: E402

if __name__ == "__main__":
    train()
