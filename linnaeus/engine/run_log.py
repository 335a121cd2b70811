"""A run's records: rank 0 logs to ``<run dir>/log.txt`` and stdout; TensorBoard under ``<run dir>/tensorboard/``.

(Named ``run_log``, not ``logging``, so that it does not shadow the standard library's module.)

Everything in the package logs to children of the ``"linnaeus"`` logger (``linnaeus.engine``,
``linnaeus.checkpoint``, ...), so one configuration here routes them all, including the
checkpoint library's ``Resumed from ...`` / ``Saved checkpoint ...`` lines that scripts read.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy

from linnaeus.checkpoint.disk import fsync_dir

LOG_FILE = "log.txt"
TB_DIR = "tensorboard"
EVENTS_GLOB = "events.out.tfevents.*"  # SummaryWriter's file names
_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"
# ``logger.info(..., extra=EVERY_RANK)``: a line every rank prints, not rank 0 alone.
EVERY_RANK = {"every_rank": True}


def setup_logging(run_dir: str | os.PathLike, rank: int) -> logging.Logger:
    """Configure the ``"linnaeus"`` logger for this process and return it.

    Rank 0: INFO and above to stdout and to ``<run_dir>/log.txt`` (append mode, so a resumed
    run continues the same file). Other ranks: WARNING and above to stderr, prefixed with the
    rank, and the INFO records marked ``extra=EVERY_RANK`` (the ``Resumed from`` line). Idempotent: calling it again (a second run in one process) replaces the handlers it
    installed before. The logger does not propagate to the root logger, so an application that
    configured root logging does not print every line twice.
    """
    logger = logging.getLogger("linnaeus")
    for h in [h for h in logger.handlers if getattr(h, "_linnaeus_handler", False)]:
        logger.removeHandler(h)
        h.close()
    logger.propagate = False
    if rank == 0:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        formatter = logging.Formatter(_FORMAT, datefmt=_DATEFMT)
        handlers: list[logging.Handler] = [
            logging.StreamHandler(sys.stdout),
            logging.FileHandler(run_dir / LOG_FILE, mode="a", encoding="utf-8"),
        ]
        logger.setLevel(logging.INFO)
    else:
        formatter = logging.Formatter(f"[rank {rank}] {_FORMAT}", datefmt=_DATEFMT)
        handlers = [logging.StreamHandler(sys.stderr)]
        handlers[0].addFilter(lambda r: r.levelno >= logging.WARNING or getattr(r, "every_rank", False))
        logger.setLevel(logging.INFO)
    for h in handlers:
        h.setFormatter(formatter)
        h._linnaeus_handler = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    # Children inherit the level and handlers; make sure nothing set earlier detaches them.
    checkpoint_logger = logging.getLogger("linnaeus.checkpoint")
    checkpoint_logger.setLevel(logging.NOTSET)
    checkpoint_logger.propagate = True
    return logger


class NullWriter:
    """Stands in for ``SummaryWriter`` on ranks other than 0: every ``add_*``, ``flush`` and ``close`` is a no-op."""

    log_dir = None

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("add_") or name in ("flush", "close"):
            return _noop
        raise AttributeError(name)


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def build_tb_writer(run_dir: str | os.PathLike, rank: int, resumed_step: int = 0) -> "RunEventWriter | NullWriter":
    """Rank 0: a :class:`RunEventWriter` on ``<run_dir>/tensorboard`` for a run that continues
    from ``resumed_step`` (``progress.step`` after a restore; 0 for a fresh start). Other ranks:
    a :class:`NullWriter`."""
    if rank != 0:
        return NullWriter()
    return RunEventWriter(Path(run_dir) / TB_DIR, resumed_step)


class RunEventWriter:
    """``SummaryWriter`` for a run that may be a relaunch: what TensorBoard shows after a resume is
    what an uninterrupted run would have logged, each step once.

    A relaunch continues from a checkpoint at step T. Events at steps <= T were logged before that
    checkpoint was saved (main.py flushes this writer right before every save, see :meth:`flush`),
    so they stay. Events after T were logged by the interrupted launch after its last checkpoint:
    this launch logs those steps again, so the event file it opens starts with
    ``purge_step=T + 1`` and TensorBoard drops the stale ones (it drops every step >= a
    SessionLog.START's step, in all earlier files).

    Two details make the result exact:

    * The file is opened on the first write, not before, so a relaunch of a finished run, which
      logs nothing, leaves ``tensorboard/`` as it was.
    * A checkpoint saved after step T's optimizer step but before that epoch's validation (a
      step-interval save on an epoch's last step, or a preemption there) resumes by validating
      at step T again, so the interrupted launch may already have logged validation at T after
      the checkpoint. Scalars this launch logs at T are therefore held back until it moves past
      T, then compared with the scalars the earlier files hold at T: if they are all there with
      the same values (the resume is exact), nothing is written again; otherwise the new file
      purges from T and writes T's scalars once, the earlier ones it does not replace included,
      at their original wall times. Only scalars are carried over this way; linnaeus logs nothing
      else.

    Other ``add_*`` calls are passed to the ``SummaryWriter`` as they come.
    """

    def __init__(self, log_dir: Path, resumed_step: int) -> None:
        self.log_dir = Path(log_dir)
        self.resumed_step = resumed_step
        self._writer: Any = None
        self._purged = False  # a reopen after close() must not purge this launch's own events
        self._files: list[Path] = []
        self._dir_synced = False
        self._held: dict[str, tuple[float, float]] = {}  # tag -> (value, wall time) logged at resumed_step

    def add_scalar(self, tag: str, scalar_value: Any, global_step: int | None = None,
                   walltime: float | None = None, **kwargs: Any) -> None:
        if self._writer is None and not self._purged and global_step == self.resumed_step and not kwargs:
            self._held[tag] = (float(scalar_value), time.time() if walltime is None else walltime)
            return
        self._open(needed=True).add_scalar(tag, scalar_value, global_step, walltime, **kwargs)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("add_"):
            return getattr(self._open(needed=True), name)
        raise AttributeError(name)

    def flush(self) -> None:
        """Write everything logged so far to disk and fsync it: called right before each checkpoint
        save, so a checkpoint never outlives the events a resume from it keeps (kill -9 included;
        a power loss too). Events logged after the last checkpoint may still be lost with the
        process: a resume logs those steps again."""
        writer = self._open(needed=False)
        if writer is None:
            return
        writer.flush()
        for path in self._files:
            _fsync(path)
        if not self._dir_synced and self._files:
            fsync_dir(self.log_dir)  # the new file's name, once
            self._dir_synced = True

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open(self, *, needed: bool) -> Any:
        """The ``SummaryWriter``, opened now if ``needed`` or if held-back scalars must be written."""
        if self._writer is not None:
            return self._writer
        purge_step: int | None = None
        rewrite: dict[str, tuple[float, float]] = {}
        if not self._purged:
            purge_step = self.resumed_step + 1
            held, self._held = self._held, {}
            if held:
                earlier = scalars_at_step(self.log_dir, self.resumed_step)
                if any(tag not in earlier or not _same_value(earlier[tag][0], value)
                       for tag, (value, _) in held.items()):
                    purge_step = self.resumed_step
                    rewrite = {**{t: e for t, e in earlier.items() if t not in held}, **held}
        if not (needed or rewrite):
            return None
        from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import

        before = set(self.log_dir.glob(EVENTS_GLOB))
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        self._purged = True
        self._files += sorted(set(self.log_dir.glob(EVENTS_GLOB)) - before)
        for tag, (value, wall_time) in rewrite.items():
            self._writer.add_scalar(tag, value, self.resumed_step, walltime=wall_time)
        return self._writer


def scalars_at_step(log_dir: Path, step: int) -> dict[str, tuple[float, float]]:
    """The scalars TensorBoard shows at ``step`` in ``log_dir``: tag -> (value, wall time).

    Reads the event files in TensorBoard's order (sorted names) with its own loader, and honours
    its purge rule: a SessionLog.START at step s hides every earlier event at a step >= s."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    found: dict[str, tuple[float, float]] = {}
    for path in sorted(Path(log_dir).glob(EVENTS_GLOB)):
        for event in LegacyEventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                if event.step <= step:
                    found.clear()
            elif event.step == step and event.HasField("summary"):
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        found[value.tag] = (value.simple_value, event.wall_time)
    return found


def _same_value(stored: float, value: float) -> bool:
    # Event files hold float32: compare at that precision (NaN equals NaN: the same logged point).
    a, b = numpy.float32(stored), numpy.float32(value)
    return bool(a == b or (numpy.isnan(a) and numpy.isnan(b)))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
