"""Which checkpoint is newer: the one ordering that resume, retention, uploads and listings use.

Newer means more training progress — optimizer steps, then epochs, then the position inside
the epoch — never a file's modification time, which a copy, a restore from backup or a clock
change rewrites. Where two files hold the same progress (a step-interval save and the
end-of-epoch save of the same step, a file copied under a second name), the one the directory's
``latest`` pointer names is the newer: it is the one the writer committed last.

Locally the progress is the one stored in each file (``CheckpointInfo.order_key``). In a bucket
the data is not downloaded to list it, so the progress comes from the file name
(:func:`progress_from_name`); the remote ``latest`` marker, which names the newest checkpoint
confirmed remote, then decides as the local pointer does.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Protocol, TypeVar

_EPOCH = re.compile(r"(?:^|[_\-.])(?:epoch|ep)[_\-]?(\d+)", re.IGNORECASE)
_STEP = re.compile(r"(?:^|[_\-.])(?:step|st|iter|ba)[_\-]?(\d+)", re.IGNORECASE)  # ba: Composer's batches
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


class Ordered(Protocol):
    """What :func:`newest_first` sorts: a file name and the progress stored in the file."""

    @property
    def name(self) -> str: ...

    @property
    def order_key(self) -> tuple[Any, ...]: ...


T = TypeVar("T", bound=Ordered)


def newest_first(items: Iterable[T], latest: str | None = None) -> list[T]:
    """``items`` from most to least progress; ``latest`` (a file name) wins ties."""
    return sorted(items, key=lambda i: (i.order_key, i.name == latest), reverse=True)


def oldest_first(items: Iterable[T], latest: str | None = None) -> list[T]:
    """The reverse of :func:`newest_first` (commit order, for replaying uploads)."""
    return newest_first(items, latest)[::-1]


def progress_from_name(name: str, modtime: str = "") -> tuple[Any, ...]:
    """Sort key of a checkpoint known only by name (older < newer).

    Parses ``epoch_<E>`` and ``step_<S>`` (also ``ep<E>`` / ``st<S>`` / ``ba<S>`` / ``iter<S>``). An
    end-of-epoch file ``..._epoch_E`` sorts before the mid-epoch files ``..._epoch_E_step_S``
    (saved during epoch E+1), which sort by step, and all of them before ``..._epoch_<E+1>``.
    Names with no number sort oldest, among themselves by ``modtime`` (all there is).
    """
    epoch = _EPOCH.search(name)
    step = _STEP.search(name)
    if epoch is None and step is None:
        return (0, -1, -1, -1, modtime, name)
    e = int(epoch.group(1)) if epoch else -1
    s = int(step.group(1)) if step else -1
    return (1, e, 0 if step is None else 1, s, modtime, name)


def default_name_filter(name: str) -> bool:
    """Full training checkpoints known by name: a checkpoint suffix, not a ``weights_*`` export."""
    return name.endswith(CHECKPOINT_SUFFIXES) and not name.startswith("weights_")


__all__ = ["default_name_filter", "newest_first", "oldest_first", "progress_from_name"]
