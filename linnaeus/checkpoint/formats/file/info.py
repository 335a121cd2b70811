"""What a single-file checkpoint holds, read without its tensor data and cached.

``torch.load(mmap=True, weights_only=True)`` maps tensors lazily, so reading a file's progress,
lineage and metrics costs the unpickling of its structure only; the result is cached by (inode,
size, mtime), since a committed file is only ever replaced by a rename, never rewritten in place.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping

import torch

from ...disk import sidecar_path
from ...errors import CheckpointError, first_line
from ..base import CheckpointInfo, fill_progress

_info_cache: dict[str, tuple[tuple[int, int, int], CheckpointInfo]] = {}
_info_cache_lock = threading.Lock()


def _reset_cache_lock_after_fork() -> None:
    global _info_cache_lock
    _info_cache_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_cache_lock_after_fork)


def describe_file(path: Path) -> dict[str, Any]:
    """``linnaeus-ckpt inspect``'s view of a checkpoint file (tensors mapped, not read)."""
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict.")
    model = obj.get("model") if isinstance(obj.get("model"), dict) else {}
    tensors = [v for v in model.values() if isinstance(v, torch.Tensor)]
    out: dict[str, Any] = {
        "file": str(path),
        "size": path.stat().st_size,
        "keys": sorted(obj),
        "model": {
            "tensors": len(tensors),
            "parameters": int(sum(t.numel() for t in tensors)),
            "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in tensors}),
            "first_keys": list(model)[:8],
        },
    }
    for key in ("meta", "progress", "sampler"):
        if isinstance(obj.get(key), dict):
            out[key] = obj[key]
    if isinstance(obj.get("metrics"), dict):
        out["metrics"] = metrics_summary(obj["metrics"])
    if "rng" in obj:
        out["rng_ranks"] = len(obj["rng"]) if isinstance(obj["rng"], list) else 1
    out["components"] = [k for k in ("optimizer", "scheduler", "scaler", "ema") if k in obj]
    if isinstance(obj.get("config"), str):
        out["config_lines"] = len(obj["config"].splitlines())
    return out


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's metric record as ``inspect`` shows it: the best value and how many records."""
    return {"best": metrics.get("best", {}), "history_len": len(metrics.get("history", []))}


def read_file_info(path: str | Path) -> CheckpointInfo:
    """Progress/metrics/meta of one checkpoint file without reading its tensor data.

    ``torch.load(mmap=True, weights_only=True)`` maps tensors lazily, so this costs the
    unpickling of the structure only; results are cached by (inode, size, mtime).
    """
    path = Path(path)
    st = path.stat()
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    committed = sidecar_path(path).exists()
    with _info_cache_lock:
        hit = _info_cache.get(str(path))
    if hit is not None and hit[0] == key:
        info = hit[1]
    else:
        info = read_info_uncached(path, st.st_size)
        if not info.unreadable:  # permissions change without a new mtime: ask again next time
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
        try:
            with open(path, "rb"):  # an access problem is no verdict on the bytes
                pass
        except PermissionError as e:
            info.error, info.unreadable = f"cannot read it: {type(e).__name__}: {e}", True
            return info
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


__all__ = ["describe_file", "metrics_summary", "forget_info", "mmap_load", "read_file_info", "read_info_uncached"]
