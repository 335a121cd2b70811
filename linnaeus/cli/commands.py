"""The console scripts (and ``tools/*.py``): each runs its command's ``main`` and ends the process with
:func:`exit_process`.

A command's ``main`` returns its exit status and may be called in-process (the tests do); only these
wrappers end the process. Each imports its command when called, so a command loads only what it uses.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Callable, NoReturn


def exit_process(code: int) -> NoReturn:
    """End the process with ``code`` as a normal exit would, less the interpreter's teardown of every
    module. With torch, torchvision and timm loaded that teardown costs about a second of CPU per
    process (measured: 1.2 s of a 5.1 s two-step training run on 2 cores) and does nothing for a
    process about to end: the kernel closes files and frees memory. What a normal exit does that
    matters still runs, in its order: other threads are waited for, then every ``atexit`` handler
    (logging's flush and close, ``weakref.finalize``, multiprocessing's cleanup), then the streams
    are flushed."""
    # The two steps of CPython's own finalization (Py_FinalizeEx) that run Python code, in its order:
    # threading's exit hooks (concurrent.futures tells its idle workers to stop) and the wait for
    # non-daemon threads, then the atexit handlers.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: what a normal exit ignores too
            pass
    os._exit(code)


def _run(main: Callable[[], int | None]) -> NoReturn:
    exit_process(main() or 0)


def train() -> NoReturn:
    from linnaeus.main import cli

    _run(cli)


def ckpt() -> NoReturn:
    from linnaeus.cli.ckpt import main

    _run(main)


def evaluate() -> NoReturn:
    from linnaeus.cli.eval import main

    _run(main)


def predict() -> NoReturn:
    from linnaeus.cli.predict import main

    _run(main)


__all__ = ["ckpt", "evaluate", "exit_process", "predict", "train"]
