"""Which format a checkpoint is in: the one place that tells them apart, and the entry points that
read, verify and load a checkpoint of any format through it.

:func:`format_of` asks each registered format whether it claims a path; their claims never
overlap (a regular file; a directory holding a manifest or DCP metadata). A state loaded by a
format is recognised by :func:`format_of_state`; the single-file format takes what no other
claims, so it is asked last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointNotFoundError, InvalidOperationError
from .base import CheckpointFormat, CheckpointInfo, VerifyResult
from .file import FileFormat
from .sharded import ShardedFormat

_FORMATS: list[CheckpointFormat] = []
_FALLBACK: list[CheckpointFormat] = []


def register_format(fmt: CheckpointFormat, *, fallback: bool = False) -> None:
    """Make ``fmt`` known to :func:`format_of` (and by its name to :func:`format_named`). A
    ``fallback`` format owns any loaded state that no other format claims."""
    if any(f.name == fmt.name for f in _FORMATS + _FALLBACK):
        raise ValueError(f"a checkpoint format named {fmt.name!r} is already registered.")
    (_FALLBACK if fallback else _FORMATS).append(fmt)


def formats() -> tuple[CheckpointFormat, ...]:
    """Every registered format, the fallback last."""
    return (*_FORMATS, *_FALLBACK)


def format_named(name: str) -> CheckpointFormat:
    for fmt in formats():
        if fmt.name == name:
            return fmt
    raise ValueError(f"unknown checkpoint format {name!r}; registered: {', '.join(f.name for f in formats())}.")


def choose_format(format: str | CheckpointFormat | None, *, sharded: bool = False) -> CheckpointFormat:
    """The format a saver writes: ``format`` (a name or a format), else sharded or single files."""
    chosen = format if isinstance(format, CheckpointFormat) else format_named(format or ("sharded" if sharded
                                                                                          else "file"))
    if sharded and chosen.name != "sharded":
        raise InvalidOperationError(f"sharded=True contradicts format={chosen.name!r}; give one of them.")
    return chosen


def format_of(path: str | Path) -> CheckpointFormat | None:
    """The format of the checkpoint at ``path``, or None when nothing there is a checkpoint."""
    path = Path(path)
    return next((fmt for fmt in formats() if fmt.claims(path)), None)


def format_of_state(state: Mapping[str, Any]) -> CheckpointFormat:
    """The format whose :meth:`~CheckpointFormat.load` gave ``state``."""
    return next(fmt for fmt in formats() if fmt.owns_state(state))


register_format(ShardedFormat())
register_format(FileFormat(), fallback=True)


# ----------------------------------------------------------------------------- any format
def read_info(path: str | Path) -> CheckpointInfo:
    """What a checkpoint holds, without its tensors; FileNotFoundError when ``path`` is none."""
    path = Path(path)
    fmt = format_of(path)
    if fmt is None:
        raise FileNotFoundError(f"no checkpoint at {path}")
    return fmt.read_info(path)


def verify_checkpoint(path: str | Path, *, require_sidecar: bool = True) -> VerifyResult:
    """Full check of one checkpoint: every byte against its marker (sidecar or manifest), then its
    structure. A checkpoint this process cannot read is reported ``unreadable``, never damaged."""
    path = Path(path)
    fmt = format_of(path)
    if fmt is None:
        what = ("a directory without a manifest.json or DCP .metadata: not a checkpoint" if path.is_dir()
                else "file does not exist")
        return VerifyResult(path, False, what)
    return fmt.verify(path, require_marker=require_sidecar)


def load_verified_digest(path: str | Path, *, map_location: Any = "cpu", require_sidecar: bool = True,
                         hash_always: bool = False) -> tuple[dict[str, Any], str | None]:
    """(state, identity digest of the bytes loaded) of a checkpoint, verified while it is read and
    loaded with ``weights_only=True``; the digest lets other ranks check they load the same bytes."""
    path = Path(path)
    fmt = format_of(path)
    if fmt is None:
        what = "is a directory, not a checkpoint" if path.is_dir() else "does not exist"
        raise CheckpointNotFoundError(
            f"checkpoint {path} {what}. Expected a checkpoint file (e.g. checkpoint_epoch_3.pth) or a sharded "
            f"checkpoint directory; check the path, or list what is there with `linnaeus-ckpt ls {path.parent}`.")
    return fmt.load(path, map_location=map_location, require_marker=require_sidecar, hash_always=hash_always)


def load_verified(path: str | Path, *, map_location: Any = "cpu", require_sidecar: bool = True) -> dict[str, Any]:
    """:func:`load_verified_digest` without the digest."""
    return load_verified_digest(path, map_location=map_location, require_sidecar=require_sidecar)[0]


__all__ = ["choose_format", "format_named", "format_of", "format_of_state", "formats", "load_verified", "load_verified_digest",
           "read_info", "register_format", "verify_checkpoint"]
