"""Resume targets that name a checkpoint of the run itself: ``latest`` and ``step:N``.

``latest`` is the file the directory's ``latest`` pointer names (its newest committed full
checkpoint); ``step:N`` is the run's checkpoint whose stored progress is optimizer step N
(fairseq2's ``load_checkpoint(step_nr=N)``). Both are looked up in the run's checkpoint
directory first, then in its bucket folder; a miss lists every place looked. Anything else is
an identifier (path, URI, bare name) for :mod:`linnaeus.checkpoint.resolve`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, CheckpointNotFoundError
from ..formats import CheckpointInfo, format_of, read_latest
from ..ordering import newest_first
from ..remote import RemoteRun
from ..sources import DownloadOptions
from ..state import KIND_FULL
from ..store import list_checkpoints

logger = logging.getLogger("linnaeus.checkpoint")

LATEST = "latest"
_STEP_RE = re.compile(r"^step:(.*)$")


class InvalidResumeTargetError(CheckpointError, ValueError):
    """A ``step:`` target whose step is not a positive integer."""


@dataclass(frozen=True)
class RunTarget:
    """``latest`` (``step`` is None) or ``step:N`` of the run's own checkpoints."""

    step: int | None = None

    def __str__(self) -> str:
        return LATEST if self.step is None else f"step:{self.step}"


def parse_run_target(value: str) -> RunTarget | None:
    """``"latest"`` → ``RunTarget()``, ``"step:500"`` → ``RunTarget(500)``; None for an identifier.

    Raises :class:`InvalidResumeTargetError` for ``step:`` with anything but a positive integer.
    """
    value = value.strip()
    if value == LATEST:
        return RunTarget()
    m = _STEP_RE.match(value)
    if m is None:
        return None
    text = m.group(1).strip()
    if not text.isdigit() or int(text) <= 0:
        raise InvalidResumeTargetError(
            f"{value!r}: 'step:' must be followed by a positive integer optimizer step, e.g. 'step:500' (the "
            "run's checkpoint saved after 500 optimizer steps; `linnaeus-ckpt ls <run dir>` shows each file's step). "
            "Use 'latest' for the run's newest checkpoint.")
    return RunTarget(int(text))


def locate_run_target(target: RunTarget, directory: Path, remote: RemoteRun | None = None,
                      download: DownloadOptions = DownloadOptions()) -> Path:
    """The local file ``target`` names in ``directory`` (fetched from ``remote`` when only it has
    one). Raises :class:`CheckpointNotFoundError` listing every place looked. No collectives."""
    looked: list[str] = []
    found = _local_latest(directory, looked) if target.step is None else _local_step(directory, target.step, looked)
    if found is not None:
        return found
    if remote is None:
        looked.append("this run's bucket folder: not searched (no remote configured for this run)")
    else:
        name = _remote_name(target, remote)
        if name is not None:
            path = remote.fetch(name, directory, download)
            logger.info("Fetched %s%s (%s) from this run's bucket folder -> %s", remote.display, name, target, path)
            return path
        looked.append(f"{remote.display}latest (the bucket folder's marker: absent)" if target.step is None
                      else f"{remote.display} (no committed checkpoint at step {target.step})")
    what = ("the run's newest committed checkpoint (what its 'latest' pointer names)" if target.step is None
            else f"the run's checkpoint at step {target.step}")
    raise CheckpointNotFoundError(f"{target}: {what} not found. Looked in:\n" + "\n".join(f"  - {p}" for p in looked))


def _local_latest(directory: Path, looked: list[str]) -> Path | None:
    name = read_latest(directory)
    pointer = directory / LATEST
    if name is None:
        looked.append(f"{pointer} (absent: this run has committed no full checkpoint here)")
        return None
    if format_of(directory / name) is None:
        looked.append(f"{pointer} (names {name}, which does not exist)")
        return None
    return directory / name


def _local_step(directory: Path, step: int, looked: list[str]) -> Path | None:
    infos = [i for i in list_checkpoints(directory) if i.committed and i.readable]
    at = [i for i in infos if i.step == step]
    if at:
        # A full checkpoint over a weights-only copy of the same step (the latter cannot resume).
        return newest_first([i for i in at if i.kind == KIND_FULL] or at)[0].path
    looked.append(f"{directory} (no committed checkpoint at step {step}; {_steps_held(infos)})")
    return None


def _steps_held(infos: list[CheckpointInfo]) -> str:
    steps = sorted({i.step for i in infos if i.step >= 0})
    if not steps:
        return "it holds none"
    shown = ", ".join(str(s) for s in steps[-12:])
    return f"steps held: {'..., ' if len(steps) > 12 else ''}{shown}"


def _remote_name(target: RunTarget, remote: RemoteRun) -> str | None:
    if target.step is None:
        return remote.read_marker()
    at = set(remote.entries_after(target.step - 1)) - set(remote.entries_after(target.step))
    return sorted(at)[0] if at else None


__all__ = ["InvalidResumeTargetError", "LATEST", "RunTarget", "locate_run_target", "parse_run_target"]
