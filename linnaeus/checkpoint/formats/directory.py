"""Names in a checkpoint directory that every format shares, and the ``latest`` pointer.

``<name>`` is a checkpoint (a file, or a directory of a sharded one); ``latest`` holds the name of
the newest full checkpoint. Everything else the library writes is hidden (a leading dot), so it
never passes for a checkpoint: temp files and directories ``.<name>.tmp-<writer>-<rand>``
(:func:`~linnaeus.checkpoint.disk.temp_name`), a file format's pending sidecars and the writer
lock ``.lock``. A format's own markers (``<name>.sha256``) are no checkpoints either.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from ..disk import SIDECAR_SUFFIX, TEMP_SYNCED, write_durably
from ..ordering import CHECKPOINT_SUFFIXES
from ..testing import phase

logger = logging.getLogger("linnaeus.checkpoint")

LATEST = "latest"


def is_checkpoint_name(name: str) -> bool:
    """Could ``name`` be a checkpoint (as opposed to a temp, sidecar or pointer)?"""
    return not (name.startswith(".") or name.endswith(SIDECAR_SUFFIX) or name == LATEST)


def checkpoint_stem(name: str) -> str:
    """A checkpoint's name without its suffix: what names one save in every layout
    (``checkpoint_epoch_3.pth`` and ``checkpoint_epoch_3/`` are both ``checkpoint_epoch_3``)."""
    for suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def durable_phases(name: str) -> Callable[[str], None]:
    """A durable write's steps as fault-hook phases: ``<name>-temp``, then ``<name>``."""
    return lambda step: phase(f"{name}-temp" if step == TEMP_SYNCED else name)


def write_latest(directory: str | Path, name: str) -> None:
    """Point ``latest`` at ``name`` (durably: a crash leaves the old pointer or the new one)."""
    write_durably(Path(directory) / LATEST, name + "\n", on_step=durable_phases("latest"))


def read_latest(directory: str | Path) -> str | None:
    """The checkpoint name recorded in ``latest``, or None if there is none (or it is unusable)."""
    path = Path(directory) / LATEST
    try:
        name = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not name or "/" in name or not is_checkpoint_name(name):
        logger.warning("Ignoring %s: expected a checkpoint file name, found %r.", path, name[:80])
        return None
    return name


__all__ = ["LATEST", "checkpoint_stem", "durable_phases", "is_checkpoint_name", "read_latest", "write_latest"]
