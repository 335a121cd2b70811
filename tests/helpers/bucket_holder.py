#!/usr/bin/env python
"""A live run's hold on its run dir and bucket folder, without training: ``bucket_holder.py --cfg CFG
--opts ...`` (the arguments of ``tools/train.py``) builds the run's checkpoints (the writer lock,
the bucket folder's lease and its heartbeat), prints ``holding`` and sleeps until killed."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from linnaeus.config import load_config, run_dir  # noqa: E402
from linnaeus.main import parse_args  # noqa: E402
from linnaeus.runner.checkpoints import RunCheckpoints  # noqa: E402


def main() -> None:
    args = parse_args(sys.argv[1:])
    cfg = load_config(args.cfg, args.opts)
    RunCheckpoints(cfg, run_dir(cfg))
    print("holding", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
