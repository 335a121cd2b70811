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
from pathlib import Path
from typing import Any, Callable

LOG_FILE = "log.txt"
TB_DIR = "tensorboard"
_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


def setup_logging(run_dir: str | os.PathLike, rank: int) -> logging.Logger:
    """Configure the ``"linnaeus"`` logger for this process and return it.

    Rank 0: INFO and above to stdout and to ``<run_dir>/log.txt`` (append mode, so a resumed
    run continues the same file). Other ranks: WARNING and above to stderr, prefixed with the
    rank. Idempotent: calling it again (a second run in one process) replaces the handlers it
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
        logger.setLevel(logging.WARNING)
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


def build_tb_writer(run_dir: str | os.PathLike, rank: int, purge_step: int | None = None) -> Any:
    """``SummaryWriter(<run_dir>/tensorboard)`` on rank 0, a :class:`NullWriter` elsewhere.

    Pass ``purge_step=progress.step`` when (re)starting: TensorBoard then drops points at or
    after that step left by an earlier session that crashed after its last checkpoint, so a
    replayed stretch of training does not appear twice.
    """
    if rank != 0:
        return NullWriter()
    from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import

    return SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR), purge_step=purge_step)
