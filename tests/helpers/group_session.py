"""The process group of a torchrun test helper, torn down as the runner's is.

An FSDP2 model holds the process group in reference cycles. Left to interpreter teardown, it
is freed after ``destroy_process_group``, during finalisation, where gloo's destructor can
abort a rank that has finished its work (exit -6, "terminate called without an active
exception"): a test fails now and then for no fault of the code it tests. So a helper does its
work in a function run inside :func:`linnaeus.dist.distributed_session` (which collects garbage
before it destroys the group), and reports how many FSDP2 modules outlived the session.
"""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path
from typing import Callable

from linnaeus.dist import DEFAULT_TIMEOUT_S, distributed_session


def alive_fsdp_modules() -> int:
    """FSDP2 modules still alive, counted without collecting garbage first."""
    from torch.distributed.fsdp import FSDPModule

    with warnings.catch_warnings():  # isinstance on torch's script objects warns about reduce_op
        warnings.simplefilter("ignore")
        return sum(isinstance(o, FSDPModule) for o in gc.get_objects())


def report_alive(prefix: str | Path) -> None:
    """Write this rank's count of live FSDP2 modules to ``<prefix>.rank<r>``."""
    with open(f"{prefix}.rank{os.environ.get('RANK', '0')}", "w") as f:
        f.write(f"{alive_fsdp_modules()}\n")


def run_in_session(body: Callable[[], None], alive: str | Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """``body()`` with a process group of ``timeout_s``; afterwards, the live FSDP2 modules to ``alive``."""
    with distributed_session(timeout_s):
        body()
    report_alive(alive)
