"""When to save and what to call the file: interval parsing and filename templates."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Mapping

# Fields every template may use; metric fields (e.g. {val_acc1_species}) come on top.
KNOWN_FIELDS = frozenset({"epoch", "step", "experiment", "model", "timestamp", "rank"})


@dataclass(frozen=True)
class Interval:
    """Save every ``every`` epochs (unit "ep") or optimizer steps (unit "st")."""

    every: int
    unit: str  # "ep" | "st"

    @property
    def by_steps(self) -> bool:
        return self.unit == "st"

    def due(self, *, epoch: int, step: int, end_of_epoch: bool) -> bool:
        """Whether a save is due after ``step`` optimizer steps / ``epoch`` completed epochs."""
        if self.by_steps:
            return step > 0 and step % self.every == 0
        return end_of_epoch and epoch > 0 and epoch % self.every == 0

    def __str__(self) -> str:
        return f"{self.every}{self.unit}"


_INTERVAL_RE = re.compile(r"^\s*(\d+)\s*(ep|st)?\s*$")


def parse_interval(value: Any) -> Interval:
    """``"1ep"``, ``"2ep"``, ``"500st"``, or a bare int (epochs)."""
    if isinstance(value, bool):
        raise ValueError(f"INTERVAL expects '<N>ep', '<N>st' or an int number of epochs, got {value!r}.")
    if isinstance(value, int):
        value = str(value)
    m = _INTERVAL_RE.match(str(value))
    if not m or int(m.group(1)) <= 0:
        raise ValueError(
            f"INTERVAL expects a positive '<N>ep' (epochs), '<N>st' (optimizer steps) or int, got {value!r}."
        )
    return Interval(int(m.group(1)), m.group(2) or "ep")


def template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as e:
        raise ValueError(f"filename template {template!r} is not a valid format string: {e}") from None


def validate_filename_template(template: str, interval: Interval) -> None:
    """Reject templates that would let two saves of one run collide (or that escape the dir)."""
    if not template or "/" in template or "\\" in template or template in (".", ".."):
        raise ValueError(f"filename template must be a plain file name, got {template!r}.")
    fields = template_fields(template)
    if template.startswith(".") or template.endswith((".tmp", ".sha256")) or template == "latest":
        raise ValueError(
            f"filename template {template!r} clashes with linnaeus' own names "
            "(hidden temp files, '.sha256' sidecars, 'latest'); choose another name."
        )
    if interval.by_steps and "step" not in fields:
        raise ValueError(
            f"filename template {template!r} saves every {interval} but has no {{step}} field, so two "
            "saves within one epoch would share a name. Add {step}, e.g. 'checkpoint_step_{step}.pth'."
        )
    if not fields & {"epoch", "step"}:
        raise ValueError(
            f"filename template {template!r} has neither {{epoch}} nor {{step}}, so successive saves "
            "would overwrite each other. Add {epoch} or {step}."
        )


def render_filename(template: str, fields: Mapping[str, Any]) -> str:
    """Fill a template; metric names may contain '/', which becomes '_' in field names."""
    flat = {k.replace("/", "_"): v for k, v in fields.items()}
    try:
        name = template.format(**flat)
    except KeyError as e:
        raise ValueError(
            f"filename template {template!r} uses field {e.args[0]!r}, which this save does not have "
            f"(available: {', '.join(sorted(flat))})."
        ) from None
    if "/" in name or name.startswith("."):
        raise ValueError(f"filename template {template!r} rendered to an invalid file name {name!r}.")
    return name


@dataclass(frozen=True)
class CheckpointPolicy:
    """Everything that decides when checkpoints are written, how they are named and kept."""

    interval: Interval = Interval(1, "ep")
    filename: str = "checkpoint_epoch_{epoch}.pth"
    mid_epoch_filename: str = "checkpoint_epoch_{epoch}_step_{step}.pth"
    keep_last_n: int = 0  # 0 = keep all
    keep_best_n: int = 0
    monitor: str = ""
    mode: str = "max"
    async_save: bool = False
    weights_only: bool = False
    save_last_only: bool = False

    def __post_init__(self) -> None:
        validate_filename_template(self.filename, self.interval)
        validate_filename_template(self.mid_epoch_filename, Interval(1, "st"))
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}.")
        if self.keep_best_n > 0 and not self.monitor:
            raise ValueError("keep_best_n > 0 needs a monitor metric name.")
        if self.keep_last_n < 0 or self.keep_best_n < 0:
            raise ValueError("keep_last_n and keep_best_n must be >= 0.")
