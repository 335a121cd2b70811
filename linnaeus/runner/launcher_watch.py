"""A torchrun worker stops when its launcher is gone, instead of training on as an orphan.

torchrun starts every worker in a session of its own, so when the launcher itself dies (the
OOM killer, ``kill -9`` of its pid, a crashed agent) nothing stops the workers: they would
train to the end as orphans, saving and pruning checkpoints beside the relaunch, or holding
the run dir's writer lock so that the relaunch is refused.

A daemon thread waits on a pidfd of the launcher (or polls ``getppid()`` where pidfds are
missing) and, once it is gone, logs one line and sets :attr:`LauncherWatch.gone`. The launcher is
the parent this process had when it first imported linnaeus (:func:`launcher_pid`), not when the
watch starts after the heavy imports: a launcher that died during them is seen as gone too. The
training loop calls :meth:`LauncherWatch.check` at every step boundary, before any save, and
leaves with :class:`LauncherGone` (exit status :data:`EXIT_LAUNCHER_GONE`): the runner's error
path lets a save already in flight commit and releases the writer lock. Nothing new is saved:
a save needs every rank at the same step, and ranks on other nodes, or a rendezvous store the
launcher hosted, may be gone as well. (So this is not SIGTERM's path, which saves first.)

The main thread may never reach a step boundary: it can wait inside a collective whose peer
will not answer until the process group's timeout. If the process still runs
:data:`GRACE_S` after the launcher went, the thread finishes the job itself: it waits for the
asynchronous checkpoint writer (a save in flight commits, as at a normal interpreter exit) and
ends the process with ``os._exit``; the kernel drops the lock.

Why not ``PR_SET_PDEATHSIG``: it fires when the parent *thread* that started the worker ends,
not the launcher process, and the signal's Python handler runs only on the main thread between
bytecodes, which is exactly where a worker blocked in a collective is not.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from typing import Any

logger = logging.getLogger("linnaeus")

# EX_TEMPFAIL (sysexits.h): a temporary failure; relaunching the same command continues.
EXIT_LAUNCHER_GONE = 75
# How long the main thread has to reach a step boundary (and unwind) before the watch thread
# ends the process itself; a save in flight is waited for beyond it.
GRACE_S = 10.0
# Fallback without pidfds: how often the parent pid is compared.
POLL_S = 0.5


class LauncherGone(SystemExit):
    """The torchrun launcher of this worker is gone: the worker leaves without saving.

    A ``SystemExit`` (status :data:`EXIT_LAUNCHER_GONE`), so that it passes ``except Exception``
    handlers and ends the process without a traceback: the watch already logged why.
    """

    def __init__(self) -> None:
        super().__init__(EXIT_LAUNCHER_GONE)


def launched_by_torchrun() -> bool:
    """torchrun (torch.distributed.run / elastic agent) sets TORCHELASTIC_RUN_ID for its workers."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def launcher_pid() -> int:
    """The parent this process had when it started (when it first imported linnaeus): the launcher.
    Not ``os.getppid()`` now, which after the launcher's death names whoever adopted the orphan."""
    from linnaeus import _IMPORTED_BY

    pid, parent = _IMPORTED_BY
    return parent if pid == os.getpid() else os.getppid()  # a forked child: its parent is the forker


class LauncherWatch:
    """Context manager: watches the parent process while the block runs (under torchrun only)."""

    def __init__(self, enabled: bool | None = None, grace_s: float | None = None) -> None:
        self.enabled = launched_by_torchrun() if enabled is None else enabled
        self.grace_s = GRACE_S if grace_s is None else grace_s
        self.launcher_pid = launcher_pid()
        self._gone = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def gone(self) -> bool:
        return self._gone.is_set()

    def check(self) -> None:
        """Raise :class:`LauncherGone` once the launcher is gone (call where stopping is safe)."""
        if self._gone.is_set():
            raise LauncherGone()

    def raise_if_gone(self, error: BaseException) -> None:
        """While unwinding ``error``: if the launcher is gone, that is the cause (a peer that
        left first breaks this rank's collective), so leave as :class:`LauncherGone` instead."""
        if self._gone.is_set() and not isinstance(error, LauncherGone):
            raise LauncherGone() from error

    def __enter__(self) -> "LauncherWatch":
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, name="linnaeus-launcher-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._gone.is_set():
            # The run has unwound (its save in flight committed, the lock released): end the process
            # now rather than through the interpreter's teardown, which took seconds here.
            self._end_process()

    # ------------------------------------------------------------------ the watch thread
    def _watch(self) -> None:
        pid = self.launcher_pid
        if not self._wait_for_exit(pid):
            return
        self._gone.set()
        logger.error("The launcher of this worker (pid %d) is gone; stopping without a new save (a save in flight "
                     "finishes first) and exiting %d. Relaunch the same command to resume from the last committed "
                     "checkpoint.", pid, EXIT_LAUNCHER_GONE)
        if not self._stop.wait(self.grace_s):
            self._end_process()  # the main thread did not leave the run in time: it is blocked

    @staticmethod
    def _end_process() -> None:
        for thread in threading.enumerate():
            # The asynchronous writer's save in flight (AsyncWriter's thread, "linnaeus-<saver>-writer")
            # commits first. Not every non-daemon thread: idle executor workers (hashing) never end.
            if thread.name.startswith("linnaeus-") and thread.name.endswith("-writer") and not thread.daemon:
                thread.join()
        for handler in logger.handlers:
            handler.flush()
        os._exit(EXIT_LAUNCHER_GONE)

    def _wait_for_exit(self, pid: int) -> bool:
        """Block until process ``pid`` (our parent) has exited: True; False if the watch was stopped."""
        pidfd = None
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pass  # no pidfds (kernel < 5.3) or the parent is already gone: the getppid check decides
        try:
            while not self._stop.is_set():
                # The parent pid changes (to 1 or a subreaper) once the parent has exited; checked
                # right after pidfd_open too, so that a parent that died before it is not missed.
                if os.getppid() != pid:
                    return True
                if pidfd is None:
                    time.sleep(POLL_S)
                elif select.select([pidfd], [], [], POLL_S)[0]:
                    return True
            return False
        finally:
            if pidfd is not None:
                os.close(pidfd)


__all__ = ["EXIT_LAUNCHER_GONE", "GRACE_S", "LauncherGone", "LauncherWatch", "launched_by_torchrun",
           "launcher_pid"]
