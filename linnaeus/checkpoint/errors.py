"""Errors raised by the checkpoint library.

Every message names the file involved, what was expected, what was found and what to
do about it, so a failed run can be fixed from its log alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


class CheckpointError(Exception):
    """Base class of every checkpoint failure (catch this to handle them all)."""


class BucketConflictError(CheckpointError):
    """Another writer's state is in a bucket folder where this one would write (a live run's lease,
    a committed checkpoint of another identity under the same name): refused, never retried."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint identifier or path does not lead to a file."""


class CheckpointCorruptError(CheckpointError):
    """A file is truncated, does not match its ``.sha256`` sidecar, or cannot be loaded safely."""

    def __init__(
        self,
        path: str | Path,
        reason: str,
        *,
        expected_sha256: str | None = None,
        actual_sha256: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.reason = reason
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256
        msg = f"checkpoint {self.path} is corrupt: {reason}"
        if expected_sha256 is not None or actual_sha256 is not None:
            msg += f" (expected sha256 {expected_sha256}, actual {actual_sha256})"
        msg += ". Delete or replace it; an older checkpoint can be used instead."
        super().__init__(msg)


class CheckpointIncompatibleError(CheckpointError):
    """A checkpoint does not fit the object it is restored into (keys, shapes), or was written
    in a newer format than this linnaeus reads (``.path`` names the file when known)."""

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
        path: str | Path | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        lines = [message]
        if self.missing:
            lines.append(f"  missing in checkpoint ({len(self.missing)}): {_preview(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in checkpoint ({len(self.unexpected)}): {_preview(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]
            lines.append(f"  shape mismatches ({len(shown)}): {_preview(shown)}")
        super().__init__("\n".join(lines))


class LatestUpdateError(CheckpointError):
    """A checkpoint was committed, but the ``latest`` pointer could not be moved to it."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        self.path, self.cause = Path(path), cause
        super().__init__(
            f"checkpoint {self.path} was committed (it verifies against its sidecar), but 'latest' in "
            f"{self.path.parent} could not be updated: {type(cause).__name__}: {cause}. The data is safe: resume "
            "picks the checkpoint with the most stored progress, 'latest' only breaks ties. Fix the cause (free "
            "space, permissions) before the next save."
        )


class CheckpointUnreadableError(CheckpointError):
    """This process cannot read a checkpoint (permissions, an I/O error): not a verdict on its bytes."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        self.path, self.cause = Path(path), cause
        super().__init__(
            f"cannot read checkpoint {self.path}: {type(cause).__name__}: {cause}. This is an access problem, not "
            "damage: the file was not checked and must not be deleted for it. Make it readable by this process "
            "(permissions, ownership, the mount), then try again."
        )


class NotATrainingCheckpointError(CheckpointIncompatibleError):
    """An intact file that is not a checkpoint of this library (e.g. a plain state dict): it holds
    weights at most, not the state a training run resumes from."""

    def __init__(self, path: str | Path, found: str, note: str = "") -> None:
        self.found = found
        super().__init__(
            f"{path} is not a linnaeus training checkpoint: it is {found}, so it holds no optimizer, scheduler, progress "
            "or RNG state to resume from. The file is intact (do not delete it). To start a run from its weights, "
            "load it as pretrained weights with a strategy (transfer, weights_only or strict) instead of resuming."
            + (f" {note}" if note else ""), path=path)


class InvalidOperationError(CheckpointError):
    """The library was used out of order (a save after close, nested transactions, ...)."""


class DirectoryLockedError(CheckpointError):
    """Another live process holds a checkpoint directory's writer lock (see :mod:`linnaeus.checkpoint.disk.writer_lock`)."""


class InvalidPolicyError(CheckpointError, ValueError):
    """A checkpoint policy (interval, filename template, retention) is invalid.

    ``field`` is the :class:`CheckpointPolicy` field at fault; ``related`` are other fields the
    message names (e.g. ``monitor`` for ``keep_best_n``), so that a caller that fills the policy
    from its own settings can point at those settings. A ``ValueError`` too, as bad arguments are.
    """

    def __init__(self, field: str, message: str, related: tuple[str, ...] = ()) -> None:
        self.field = field
        self.related = related
        super().__init__(message)


def first_line(e: BaseException) -> str:
    """The informative line of an exception message (torch's weights_only errors bury it)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error"):
            return ln[:300]
    return lines[0][:300] if lines else ""


def _preview(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
