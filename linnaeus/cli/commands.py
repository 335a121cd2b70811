"""The console scripts (and ``tools/*.py``): each imports its command with the cycle collector paused
(:func:`pause_gc`), runs the command's ``main`` and ends the process with :func:`exit_process`.

A command's ``main`` returns its exit status and may be called in-process (the tests do); only these
wrappers end the process. Each imports its command when called, so a command loads only what it uses.
"""

from __future__ import annotations

import atexit
import gc
import importlib
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


def pause_gc() -> None:
    """Before the heavy imports. torch, torchvision and timm create hundreds of thousands of objects
    that live as long as the process, and the cycle collector runs full collections over them while
    they are being created: about a second of CPU per process (measured: ``import linnaeus.main``
    takes 3.2 to 4.1 s with the collector paused, 4.8 to 6.6 s without)."""
    gc.disable()


def resume_gc() -> None:
    """After the heavy imports: what they made is frozen out of every later collection (``gc.freeze``:
    the training loop's collections do not scan it either, and forked DataLoader workers keep sharing
    its pages), then the collector runs again."""
    gc.freeze()
    gc.enable()


def _run(module: str, function: str = "main") -> NoReturn:
    """Import ``module`` with the collector paused, run its ``function`` (the command's main), exit."""
    pause_gc()
    try:
        main: Callable[[], int | None] = getattr(importlib.import_module(module), function)
    finally:
        resume_gc()
    exit_process(main() or 0)


def train() -> NoReturn:
    _run("linnaeus.main", "cli")


def ckpt() -> NoReturn:
    _run("linnaeus.cli.ckpt")


def evaluate() -> NoReturn:
    _run("linnaeus.cli.eval")


def predict() -> NoReturn:
    _run("linnaeus.cli.predict")


__all__ = ["ckpt", "evaluate", "exit_process", "pause_gc", "predict", "resume_gc", "train"]
