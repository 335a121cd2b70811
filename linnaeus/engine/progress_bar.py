"""The epoch's progress display on rank 0: a tqdm bar on a terminal, whole lines anywhere else.

A bar redraws itself in place with carriage returns. That is only readable where the bar and
the console log lines reach one terminal in the order they were written, so the bar is drawn
only when both stderr (the bar) and stdout (the ``"linnaeus"`` console log) are terminals.
While it is drawn, console log lines are written above it: under tqdm's lock the bar is
cleared, the line written *and flushed*, then the bar redrawn. (tqdm's own
``logging_redirect_tqdm`` flushes after the redraw, so a block-buffered stdout printed its line
after the bar: ``epoch 0:  31%|███ | 9/29 [...][... linnaeus.engine INFO] epoch 0 step 10``.)

Anywhere else (CI, ``> file``, ``| tee``) the same fields go to stderr as plain lines, at most
one per :data:`LINE_INTERVAL_S` and one at the end of the epoch: no ``\\r`` frames. The log
file (``log.txt``) is a separate handler and is never touched here.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import IO, Any, Iterator, Protocol

from tqdm import tqdm

# Seconds between two plain progress lines: the log lines already report every LOG_INTERVAL
# steps, so these only add percentage, rate and ETA and stay rare in a CI log.
LINE_INTERVAL_S = 30.0


class ProgressDisplay(Protocol):
    """What the trainer calls on a display: the subset of tqdm's interface it uses."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, refresh: bool = True, **kwargs: Any) -> None: ...

    def close(self) -> None: ...


@contextmanager
def epoch_progress(total: int | None, initial: int, desc: str, *, unit: str = "step",
                   line_interval_s: float = LINE_INTERVAL_S) -> Iterator[ProgressDisplay]:
    """A display for one epoch, closed on exit: a tqdm bar (console log lines above it) when
    stdout and stderr are terminals, else a :class:`LineProgress` on stderr.

    ``total`` is the epoch's optimizer steps (None: unknown), ``initial`` those already done
    (a mid-epoch resume).
    """
    if _is_terminal(sys.stdout) and _is_terminal(sys.stderr):
        # mininterval keeps redraws (each a terminal write from the hot loop) rare.
        bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, mininterval=2.0,
                   leave=False, file=sys.stderr)
        try:
            with console_logging_above_bars():
                yield bar
        finally:
            bar.close()
    else:
        display = LineProgress(total, initial, desc, sys.stderr, unit=unit, interval_s=line_interval_s)
        try:
            yield display
        finally:
            display.close()


class LineProgress:
    """tqdm's fields as whole lines, for a stream that is not a terminal.

    A line (``epoch 0:  40% 12/30 [00:04<00:06, 2.9step/s, loss=..., lr=...]``) is written when
    ``interval_s`` has passed since the last one and on :meth:`close` if steps were made since.
    Each line is one ``write`` and a flush, so it cannot be split by lines written elsewhere.
    """

    def __init__(self, total: int | None, initial: int, desc: str, stream: IO[str], *, unit: str = "step",
                 interval_s: float = LINE_INTERVAL_S) -> None:
        self.total = total
        self.initial = initial
        self.n = initial
        self.desc = desc
        self.stream = stream
        self.unit = unit
        self.interval_s = interval_s
        self._postfix = ""
        self._start = self._last_line = time.monotonic()
        self._n_written = initial
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last_line >= self.interval_s:
            self._write(now)

    def set_postfix(self, refresh: bool = True, **kwargs: Any) -> None:
        # Same text as tqdm's postfix; ``refresh`` has no meaning without a bar to redraw.
        self._postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n != self._n_written:
            self._write(time.monotonic())

    def _write(self, now: float) -> None:
        # ncols=0: tqdm's text without the bar graphic.
        line = tqdm.format_meter(self.n, self.total, now - self._start, ncols=0, prefix=self.desc, unit=self.unit,
                                 postfix=self._postfix or None, initial=self.initial)
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line, self._n_written = now, self.n


class _AboveBarsHandler(logging.StreamHandler):
    """A console handler that writes each record above the tqdm bars sharing its terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            # external_write_mode holds tqdm's lock, clears the bars, and redraws them on exit:
            # the flush must happen inside it, before the redraw.
            with tqdm.external_write_mode(file=self.stream):
                self.stream.write(msg + self.terminator)
                self.flush()
        except RecursionError:
            raise
        except Exception:  # as logging.StreamHandler.emit does: handleError reports it on stderr
            self.handleError(record)


@contextmanager
def console_logging_above_bars(logger_name: str = "linnaeus") -> Iterator[None]:
    """While tqdm bars are drawn, route the logger's stdout/stderr handlers through
    :class:`_AboveBarsHandler` (same stream, level, formatter and filters); other handlers
    (the log file) are untouched."""
    logger = logging.getLogger(logger_name)
    original = list(logger.handlers)
    logger.handlers = [_above_bars(h) if _is_console(h) else h for h in original]
    try:
        yield
    finally:
        logger.handlers = original


def _is_console(handler: logging.Handler) -> bool:
    # type(), not isinstance(): a FileHandler is a StreamHandler too.
    return type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr)


def _above_bars(handler: logging.StreamHandler) -> _AboveBarsHandler:
    replacement = _AboveBarsHandler(handler.stream)
    replacement.setLevel(handler.level)
    replacement.setFormatter(handler.formatter)
    for f in handler.filters:
        replacement.addFilter(f)
    return replacement


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
