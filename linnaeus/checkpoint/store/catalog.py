"""What is in a checkpoint directory: one :class:`CheckpointInfo` per checkpoint, whatever its
format, read without its tensors and ordered by the training progress stored in each."""

from __future__ import annotations

import os
from pathlib import Path

from ..formats import CheckpointInfo, format_of, is_checkpoint_name


def list_checkpoints(directory: str | Path) -> list[CheckpointInfo]:
    """Every checkpoint in ``directory`` (files and sharded directories), oldest first (unreadable
    ones first). Folders that are no checkpoint (``abandoned-*/``) are not listed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    infos = []
    for entry in os.scandir(directory):
        if not is_checkpoint_name(entry.name):
            continue
        path = Path(entry.path)
        fmt = format_of(path)
        if fmt is None:
            continue
        try:
            infos.append(fmt.read_info(path))
        except FileNotFoundError:  # deleted by a concurrent retention pass
            continue
    return sorted(infos, key=lambda i: (i.readable, i.order_key, i.name))


__all__ = ["list_checkpoints"]
