"""What is in a checkpoint directory: one :class:`CheckpointInfo` per checkpoint, whatever its
format, read without its tensors and ordered by the training progress stored in each."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError, CheckpointNotFoundError
from ..formats import CheckpointInfo, checkpoint_stem, format_of, is_checkpoint_name, read_info


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


def find_checkpoint(directory: str | Path, name: str) -> Path | None:
    """The checkpoint ``name`` names in ``directory``, in whichever layout it was saved: ``name``
    itself, else the one checkpoint of the same name without a suffix (``checkpoint_epoch_3.pth``
    finds a sharded ``checkpoint_epoch_3/`` and the reverse). None when there is none; raises
    CheckpointNotFoundError when two layouts of that name are there."""
    path = Path(directory) / name
    if format_of(path) is not None:
        return path
    same = [i.path for i in list_checkpoints(directory) if checkpoint_stem(i.name) == checkpoint_stem(name)]
    if len(same) > 1:
        raise CheckpointNotFoundError(f"{name!r} could name any of {', '.join(str(p) for p in same)}; give the "
                                      "exact name of the one to use.")
    return same[0] if same else None


def not_ours(path: Path, saver: str) -> CheckpointError | None:
    """Why saver ``saver`` must not overwrite ``path`` (another saver's checkpoint), or None."""
    try:
        owner = read_info(path).saver
    except FileNotFoundError:
        return None
    if owner and owner != saver:
        return CheckpointError(f"refusing to overwrite {path}: it belongs to saver {owner!r}, not {saver!r}. "
                               "Give the two savers different FILENAME templates.")
    return None


__all__ = ["find_checkpoint", "list_checkpoints", "not_ours"]
