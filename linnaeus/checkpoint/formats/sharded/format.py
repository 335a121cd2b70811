"""The sharded format: a directory written by every rank through torch.distributed.checkpoint (DCP),
committed by its ``manifest.json`` (:mod:`.manifest`) and one rename (:mod:`.save`), loadable at any
world size (:mod:`.load`). Full training checkpoints only: a weights file is for inference, in one piece.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ...disk import Overlap, fsync_dir, is_temp_name, remove_tree, temp_writer
from ...errors import InvalidOperationError
from ...state import Stateful
from ..base import (
    Background,
    CheckpointFormat,
    CheckpointInfo,
    Leftover,
    OnCommitted,
    SaveResult,
    VerifyResult,
)
from . import load, transfer
from .async_save import ShardedBackground
from .parts import delete_entry
from .manifest import MANIFEST, is_sharded_checkpoint, read_dir_info, sharded_dirname
from .save import save_now, stage

TEMP_DIR = "temp directory of an unfinished sharded save (or of one overwritten or deleted)"


class ShardedFormat(CheckpointFormat):
    name = "sharded"

    def claims(self, path: Path) -> bool:
        return is_sharded_checkpoint(path)

    def owns_state(self, state: Mapping[str, Any]) -> bool:
        return load.is_sharded_state(state)

    def entry_name(self, filename: str) -> str:
        return sharded_dirname(filename)

    # ----------------------------------------------------------------- reading
    def read_info(self, path: Path) -> CheckpointInfo:
        return read_dir_info(path)

    def verify(self, path: Path, *, require_marker: bool = True) -> VerifyResult:
        return load.verify_directory(path)  # a directory's marker is always required: it lists the files

    def load(self, path: Path, *, map_location: Any = "cpu", require_marker: bool = True,
             hash_always: bool = False) -> tuple[dict[str, Any], str | None]:
        return load.load_on_rank(path)  # the tensors stay on disk until restore()

    def restore(self, state: Mapping[str, Any], model: nn.Module | None, components: Mapping[str, Stateful | None],
                *, rng: bool, source: str) -> dict[str, int]:
        return load.restore_sharded(state, model, components, rng=rng, source=source)

    def read_weights(self, path: Path, *, use_ema: bool) -> Mapping[str, Any]:
        return load.read_weights(path, use_ema=use_ema)

    def describe(self, path: Path) -> dict[str, Any]:
        return load.describe(path)

    def identity(self, path: Path) -> str:
        return hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()  # the manifest holds every file's digests

    # ----------------------------------------------------------------- writing
    def check_policy(self, *, weights_only: bool, saver: str) -> None:
        if weights_only:
            raise InvalidOperationError(f"sharded saves are full checkpoints; saver {saver!r} is weights-only. "
                                        "Export weights from a sharded checkpoint with `linnaeus-ckpt export`.")

    def background(self, name: str, *, process: bool = False) -> Background:
        if process:
            raise InvalidOperationError(
                f"checkpoint manager {name!r}: writer_process=True writes single-file checkpoints in a child "
                "process; sharded saves are written by torch.distributed.checkpoint's own writer threads on "
                "every rank. Turn writer_process off for sharded checkpoints.")
        return ShardedBackground(name)

    def save(self, directory: Path, name: str, contents: Mapping[str, Any], *, update_latest: bool,
             background: Background | None, on_committed: OnCommitted,
             overlap: Overlap | None = None, copies: int = 0) -> SaveResult | None:
        staged = stage(directory, name, contents, update_latest=update_latest, copies=copies)
        if isinstance(background, ShardedBackground):
            background.start(staged, on_committed, overlap)
            return None
        return save_now(staged, on_committed)

    def delete(self, path: Path) -> None:
        delete_entry(path)

    def move(self, path: Path, folder: Path) -> None:
        os.rename(path, folder / path.name)  # one rename: the manifest goes with the files it lists
        fsync_dir(folder)
        fsync_dir(path.parent)

    def adopt(self, path: Path, *, check: bool = True) -> str:
        return ("a sharded checkpoint directory without its manifest.json cannot be adopted: nothing records its "
                "files' digests. Resume from another checkpoint, or move the directory out.")

    def leftovers(self, directory: Path) -> list[Leftover]:
        return [Leftover(Path(e.path), TEMP_DIR, temp_writer(e.name), partial(_remove, Path(e.path)))
                for e in os.scandir(directory) if e.is_dir(follow_symlinks=False) and is_temp_name(e.name)]

    # ----------------------------------------------------------------- transferring: the bucket layout is transfer.py's
    commit_files = staticmethod(transfer.commit_files)
    marker_identity = staticmethod(transfer.marker_identity)
    remote_entries = staticmethod(transfer.remote_entries)
    fetch = staticmethod(transfer.fetch)
    remote_parts = staticmethod(transfer.remote_parts)


def _remove(path: Path) -> bool:
    remove_tree(path)
    return False


__all__ = ["ShardedFormat"]
