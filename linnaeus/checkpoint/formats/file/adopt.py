"""Moving a committed file aside, and committing one that came without its sidecar (adopting it)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...disk import FileDigest, digest_file, dir_lock, format_sidecar, fsync_dir, sidecar_path, write_durably
from ...errors import first_line
from ...state import newer_format_reason, newer_format_version, stored_progress, validate_structure


def move_file(path: Path, folder: Path) -> None:
    """Move the committed ``path`` into ``folder`` (same filesystem). At every instant the data has
    its sidecar beside it: the sidecar is copied durably, the data renamed (atomic), and only then
    the old sidecar removed (a crash in between leaves a sidecar without data, which cleanup
    removes). The caller holds the directory's in-process lock."""
    side = sidecar_path(path)
    if side.exists():
        write_durably(folder / side.name, side.read_bytes())
    os.rename(path, folder / path.name)
    fsync_dir(folder)
    fsync_dir(path.parent)
    side.unlink(missing_ok=True)


def adopt_file(path: Path, *, check: bool = True) -> str:
    """Write ``path``'s sidecar if it loads with ``weights_only=True`` and has a linnaeus
    checkpoint's structure in a format this version reads (``check=False``: whatever it holds);
    the sidecar records the hash of the bytes that were checked. Returns why it was refused, or ""
    once adopted."""
    before = path.stat()
    digest = digest_file(path)
    if not check:
        return _write_sidecar(path, before, digest, None)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any load failure is the reason it is refused
        return f"cannot be loaded with weights_only=True: {type(e).__name__}: {first_line(e)}"
    newer = newer_format_version(obj)
    if newer is not None:
        return newer_format_reason(newer)
    problems = validate_structure(obj)
    if problems:
        return "not a linnaeus checkpoint: " + "; ".join(problems)
    return _write_sidecar(path, before, digest, stored_progress(obj))


def _write_sidecar(path: Path, before: os.stat_result, digest: FileDigest, progress: dict[str, int] | None) -> str:
    after = path.stat()
    if (before.st_ino, before.st_size, before.st_mtime_ns) != (after.st_ino, after.st_size, after.st_mtime_ns):
        return "it changed while it was checked; run adopt again once nothing writes it"
    with dir_lock(path.parent):
        if sidecar_path(path).exists():
            return "a sidecar appeared meanwhile; verify it with `linnaeus-ckpt verify`"
        write_durably(sidecar_path(path), format_sidecar(digest, path.name, progress))
    return ""


__all__ = ["adopt_file", "move_file"]
