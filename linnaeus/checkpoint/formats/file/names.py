"""Names of a single-file checkpoint's pending sidecars.

While a committed file is overwritten (a fixed name such as ``last.pth``, an epoch trained
again), its new sha256 waits in ``.<name>.sha256.pending-<writer>`` (hidden, so never taken for a
checkpoint; ``<writer>`` is :func:`~linnaeus.checkpoint.disk.writer_id`) until the new data has
its name (:mod:`.commit`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...disk import SIDECAR_SUFFIX, WRITER_ID, writer_id

_PENDING_RE = re.compile(r"^\.(.+)" + re.escape(SIDECAR_SUFFIX) + rf"\.pending-({WRITER_ID})$")


def pending_sidecar_name(final_name: str) -> str:
    """Hidden name of the new sidecar while a committed file is overwritten; writer as in temp names."""
    return f".{final_name}{SIDECAR_SUFFIX}.pending-{writer_id()}"


def is_pending_sidecar_name(name: str) -> bool:
    return _PENDING_RE.match(name) is not None


def pending_sidecar_target(name: str) -> tuple[str, str] | None:
    """(data file name, writer identity) of a pending sidecar name, or None if ``name`` is not one."""
    m = _PENDING_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def pending_sidecars(path: str | Path) -> list[Path]:
    """Pending sidecars of ``path`` left by overwrites in progress or interrupted."""
    path = Path(path)
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    return sorted(path.parent / n for n in names
                  if (target := pending_sidecar_target(n)) is not None and target[0] == path.name)


__all__ = ["is_pending_sidecar_name", "pending_sidecar_name", "pending_sidecar_target", "pending_sidecars"]
