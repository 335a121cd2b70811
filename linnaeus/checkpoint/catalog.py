"""What is in a checkpoint directory: one :class:`CheckpointInfo` per file, read without
loading tensor data, cached, and ordered by the training progress stored in each file."""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .names import is_checkpoint_name
from .sidecar import sidecar_path
from .state import FORMAT_VERSION


@dataclass
class CheckpointInfo:
    """What retention, resume and ``linnaeus-ckpt ls`` need to know about one file."""

    path: Path
    size: int
    committed: bool  # has its .sha256 sidecar
    kind: str = "unknown"  # full | weights | foreign | unknown
    saver: str = ""
    epoch: int = -1
    step: int = -1
    epoch_step: int = 0
    created: str = ""
    run_id: str = ""  # lineage (lineage.py): the run, and the sha256 of the file it resumed from
    parent_sha256: str | None = None  # "" = a fresh start; None = not recorded (an older linnaeus)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # why it could not be read
    format_version: int | None = None  # meta.format_version, when it is an int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def too_new(self) -> bool:
        """Written by a newer linnaeus: intact but unreadable here, so never skipped or deleted."""
        return self.format_version is not None and self.format_version > FORMAT_VERSION

    @property
    def readable(self) -> bool:
        return self.error is None

    @property
    def order_key(self) -> tuple[int, int, int, str]:
        """Newer sorts later: by training progress stored in the file, never by mtime."""
        return (self.step, self.epoch, self.epoch_step, self.created)

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None or math.isnan(value) else value


_info_cache: dict[str, tuple[tuple[int, int, int], CheckpointInfo]] = {}
_info_cache_lock = threading.Lock()


def _reset_cache_lock_after_fork() -> None:
    global _info_cache_lock
    _info_cache_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_cache_lock_after_fork)


def read_info(path: str | Path) -> CheckpointInfo:
    """Progress/metrics/meta of one file without reading its tensor data.

    ``torch.load(mmap=True, weights_only=True)`` maps tensors lazily, so this costs the
    unpickling of the structure only; results are cached by (inode, size, mtime).
    """
    path = Path(path)
    if path.is_dir():  # a sharded checkpoint: its manifest is small and holds all of this
        from .sharded_manifest import read_dir_info
        return read_dir_info(path)
    st = path.stat()
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    committed = sidecar_path(path).exists()
    with _info_cache_lock:
        hit = _info_cache.get(str(path))
    if hit is not None and hit[0] == key:
        info = hit[1]
    else:
        info = read_info_uncached(path, st.st_size)
        with _info_cache_lock:
            _info_cache[str(path)] = (key, info)
    info.committed = committed
    return info


def forget_info(path: str | Path) -> None:
    """Drop ``path`` from the cache (it was deleted)."""
    with _info_cache_lock:
        _info_cache.pop(str(path), None)


def mmap_load(path: Path) -> tuple[Any, str | None]:
    """(object, None) or (None, why it cannot be loaded); tensors stay mapped, not read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True), None
    except Exception as e:  # noqa: BLE001 - any load failure means "unreadable", reported with its cause
        return None, f"cannot be loaded with weights_only=True: {type(e).__name__}: {first_line(e)}"


def read_info_uncached(path: Path, size: int, obj: Any = None) -> CheckpointInfo:
    """The info of ``path`` from ``obj`` (its loaded contents), or from a fresh mmap load."""
    info = CheckpointInfo(path=path, size=size, committed=False)
    if obj is None:
        obj, info.error = mmap_load(path)
        if info.error:
            return info
    if not isinstance(obj, Mapping):
        info.error = f"top level is {type(obj).__name__}, not a dict"
        return info
    meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
    progress = obj.get("progress") if isinstance(obj.get("progress"), Mapping) else {}
    version = meta.get("format_version")
    info.format_version = version if isinstance(version, int) and not isinstance(version, bool) else None
    try:
        # "foreign": no linnaeus meta at all (e.g. a timm state dict); structure is not checked.
        info.kind = str(meta.get("kind") or ("full" if progress else "unknown" if "meta" in obj else "foreign"))
        fill_progress(info, meta, progress)
    except (TypeError, ValueError) as e:
        # A newer format may lay out progress/meta differently; that is no damage. Its
        # progress stays unknown (-1), and resume stops at it instead of skipping it.
        if not info.too_new:
            info.error = f"malformed progress/meta: {e}"
    return info


def fill_progress(info: CheckpointInfo, meta: Mapping[str, Any], progress: Mapping[str, Any]) -> None:
    """Copy a checkpoint's progress, lineage and metrics into ``info`` (single files and sharded
    manifests store the same ``meta``/``progress``). Raises TypeError/ValueError when malformed."""
    info.saver = str(meta.get("saver", ""))
    info.epoch = int(progress.get("epoch", meta.get("epoch", -1)))
    info.step = int(progress.get("step", meta.get("step", -1)))
    info.epoch_step = int(progress.get("epoch_step", 0))
    info.created = str(meta.get("created", ""))
    info.run_id = str(meta.get("run_id", ""))
    info.parent_sha256 = meta["parent_sha256"] if isinstance(meta.get("parent_sha256"), str) else None
    info.metrics = {str(k): float(v) for k, v in dict(meta.get("metrics", {})).items()}


def first_line(e: BaseException) -> str:
    """The informative line of an exception message (torch's weights_only errors bury it)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error"):
            return ln[:300]
    return lines[0][:300] if lines else ""


def _is_sharded_dir(entry: os.DirEntry) -> bool:
    # Folders such as abandoned-*/ hold no DCP metadata or manifest at their top level.
    return entry.is_dir() and any(os.path.exists(os.path.join(entry.path, n)) for n in ("manifest.json", ".metadata"))


def list_checkpoints(directory: str | Path) -> list[CheckpointInfo]:
    """Every checkpoint-named file (and sharded checkpoint directory) in ``directory``, oldest first
    (unreadable ones first)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    infos = []
    for entry in os.scandir(directory):
        if not is_checkpoint_name(entry.name) or not (entry.is_file() or _is_sharded_dir(entry)):
            continue
        try:
            infos.append(read_info(Path(entry.path)))
        except FileNotFoundError:  # deleted by a concurrent retention pass
            continue
    return sorted(infos, key=lambda i: (i.readable, i.order_key, i.name))
