"""Train under torchrun with an injected RuntimeError on rank 0, at resume or at pretrained loading.

Usage: torchrun ... rank0_fails.py {resume|pretrained} <tools/train.py args...>
The error is not a CheckpointError, OSError or ValueError: the other rank must still stop.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from linnaeus.cli.commands import exit_process, pause_gc, resume_gc  # noqa: E402

pause_gc()  # the imports below as tools/train.py makes them
from linnaeus.checkpoint.store import scan  # noqa: E402
from linnaeus.main import cli  # noqa: E402
from linnaeus.runner import pretrained  # noqa: E402
resume_gc()


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("injected failure on rank 0")


if __name__ == "__main__":
    where, argv = sys.argv[1], sys.argv[2:]
    if os.environ.get("RANK") == "0":
        if where == "resume":
            scan.load_verified_digest = _boom  # the verified read of the checkpoint to resume from
        else:
            pretrained.load_pretrained_from_cfg = _boom  # type: ignore[assignment]
    exit_process(cli(argv))  # as tools/train.py ends
