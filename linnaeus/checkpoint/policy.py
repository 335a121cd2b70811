"""When to save and what to call the file: interval parsing and filename templates."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Mapping, Union

from .errors import InvalidOperationError, InvalidPolicyError

# Fields that describe the run rather than one save, given to the manager once (``name_fields``):
# the dataset's name and the run's total epochs.
RUN_FIELDS = frozenset({"dataset", "n_epochs"})
# Fields every template may use; metric fields (e.g. {val_acc1_species}) come on top. {timestamp} is
# the moment of the save; {run_timestamp} the run's start, the same in all its files and relaunches.
KNOWN_FIELDS = frozenset({"epoch", "step", "experiment", "model", "timestamp", "run_timestamp", "rank"}) | RUN_FIELDS
# Stand-ins for a trial rendering, so that a bad format spec fails when the policy is made.
_SAMPLE_FIELDS = {"epoch": 1, "step": 1, "experiment": "exp", "model": "model", "timestamp": "20000101-000000",
                  "run_timestamp": "20000101-000000", "rank": 0, "dataset": "data", "n_epochs": 1}
# Interval units: "ba" (batches, Composer's spelling) is an alias of "st": an optimizer step. Durations
# ("90s", "30min", "2h") are counted in seconds of training.
_UNITS = {"ep": ("ep", 1), "st": ("st", 1), "ba": ("st", 1), "s": ("s", 1), "min": ("s", 60), "h": ("s", 3600)}
_SAMPLE_METRIC = 0.5


@dataclass(frozen=True)
class Interval:
    """Save every ``every`` epochs (unit "ep"), optimizer steps ("st") or seconds of training ("s").

    Seconds of training are the run's wall-clock time summed over its launches, as stored in each
    checkpoint (the runner's ``progress.elapsed_ms``): a save is due at the first step boundary past
    each multiple of ``every``, so a run preempted every 25 minutes still saves every 30 minutes of
    training, and a relaunch neither saves at once nor starts the count again.
    """

    every: int
    unit: str  # "ep" | "st" | "s"

    def __post_init__(self) -> None:
        # due() divides by every: a zero would fail at the first save, not here.
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every <= 0:
            raise InvalidPolicyError("interval", f"interval needs a positive int count, got every={self.every!r}.")
        if self.unit not in ("ep", "st", "s"):
            raise InvalidPolicyError(
                "interval", f"interval unit must be 'ep' (epochs), 'st' (optimizer steps) or 's' (seconds of "
                f"training), got {self.unit!r}."
            )

    @property
    def terms(self) -> tuple["Interval", ...]:
        return (self,)

    @property
    def by_steps(self) -> bool:
        return self.unit == "st"

    @property
    def by_time(self) -> bool:
        return self.unit == "s"

    def due(self, *, epoch: int, step: int, end_of_epoch: bool, elapsed_ms: tuple[int, int] = (0, 0)) -> bool:
        """Whether a save is due after ``step`` optimizer steps / ``epoch`` completed epochs, or, for
        seconds, whether the training time went past a multiple of ``every`` from ``elapsed_ms[0]``
        (the previous step boundary) to ``elapsed_ms[1]`` (this one), in milliseconds."""
        if (self.by_steps and step <= 0) or (self.unit == "ep" and epoch <= 0):
            return False
        return self.crossed(since=(epoch - 1, step - 1, elapsed_ms[0]), now=(epoch, step, elapsed_ms[1]),
                            end_of_epoch=end_of_epoch)

    def crossed(self, *, since: tuple[int, int, int], now: tuple[int, int, int], end_of_epoch: bool) -> bool:
        """Whether a multiple of ``every`` lies after ``since`` and at or before ``now``, each (epoch,
        step, training ms); epochs count only at an epoch's end. :meth:`due` asks it from the previous
        step boundary, the upload interval from the last checkpoint uploaded."""
        unit = 2 if self.by_time else 1 if self.by_steps else 0
        every = self.every * 1000 if self.by_time else self.every
        if unit == 0 and not end_of_epoch:
            return False
        return now[unit] // every > since[unit] // every

    def __str__(self) -> str:
        if self.by_time:
            for unit, seconds in (("h", 3600), ("min", 60)):
                if self.every % seconds == 0:
                    return f"{self.every // seconds}{unit}"
            return f"{self.every}s"
        return f"{self.every}{self.unit}"


@dataclass(frozen=True)
class Schedule:
    """Several intervals: a save is due when any of them is (``["1ep", "30min"]``)."""

    terms: tuple[Interval, ...]

    def __post_init__(self) -> None:
        if len(self.terms) < 2 or not all(isinstance(t, Interval) for t in self.terms):
            raise InvalidPolicyError("interval", f"a schedule is two or more Intervals, got {self.terms!r}.")

    @property
    def by_steps(self) -> bool:
        return any(t.by_steps for t in self.terms)

    @property
    def by_time(self) -> bool:
        return any(t.by_time for t in self.terms)

    def due(self, *, epoch: int, step: int, end_of_epoch: bool, elapsed_ms: tuple[int, int] = (0, 0)) -> bool:
        return any(t.due(epoch=epoch, step=step, end_of_epoch=end_of_epoch, elapsed_ms=elapsed_ms)
                   for t in self.terms)

    def crossed(self, *, since: tuple[int, int, int], now: tuple[int, int, int], end_of_epoch: bool) -> bool:
        return any(t.crossed(since=since, now=now, end_of_epoch=end_of_epoch) for t in self.terms)

    def __str__(self) -> str:
        return ",".join(str(t) for t in self.terms)


Cadence = Union[Interval, Schedule]
_INTERVAL_RE = re.compile(r"^\s*(\d+)\s*(ep|st|ba|s|min|h)?\s*$")


def parse_interval(value: Any) -> Cadence:
    """``"1ep"``, ``"2ep"``, ``"500st"`` (``"500ba"`` the same), ``"90s"``, ``"30min"``, ``"2h"``, or a
    bare int (epochs); several of them (a list, or one string ``"1ep,30min"`` or ``"[1ep, 30min]"``) make
    a :class:`Schedule`. An :class:`Interval` or :class:`Schedule` passes through."""
    if isinstance(value, (Interval, Schedule)):
        return value
    items: list[Any] = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) == 1 and isinstance(items[0], str):
        items = [x for x in items[0].strip().strip("[]").split(",") if x.strip()] or [items[0]]
    terms: list[Interval] = []
    for item in items:
        m = None if isinstance(item, bool) else _INTERVAL_RE.match(str(item).strip().strip("'\""))
        if not m or int(m.group(1)) <= 0:
            break
        unit, scale = _UNITS[m.group(2) or "ep"]
        term = Interval(int(m.group(1)) * scale, unit)
        if term not in terms:
            terms.append(term)
    else:
        if terms:
            return terms[0] if len(terms) == 1 else Schedule(tuple(terms))
    raise InvalidPolicyError(
        "interval",
        f"interval expects a positive '<N>ep' (epochs), '<N>st' or '<N>ba' (optimizer steps), '<N>s', "
        f"'<N>min' or '<N>h' (training time), an int (epochs), or a list of them; got {value!r}.",
    )


def template_fields(template: str) -> set[str]:
    """Names of the ``{fields}`` in ``template``."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as e:
        raise ValueError(f"filename template {template!r} is not a valid format string: {e}") from None


def metric_field_name(metric: str) -> str:
    """Template field of a metric: '/' becomes '_' ('val/acc1/species' -> 'val_acc1_species')."""
    return metric.replace("/", "_")


def metric_fields(template: str) -> set[str]:
    """Fields of ``template`` that name metrics (anything but epoch, step, experiment, ...)."""
    return template_fields(template) - KNOWN_FIELDS


def validate_filename_template(template: str, interval: Cadence, *, field: str = "filename") -> None:
    """Reject templates that would let two saves of one run collide (or that escape the dir).

    Raises :class:`InvalidPolicyError` naming ``field`` (the policy field the template is in).
    """
    if not isinstance(template, str) or not template or "/" in template or "\\" in template \
            or template in (".", ".."):
        raise InvalidPolicyError(field, f"filename template must be a plain file name, got {template!r}.")
    try:
        fields = template_fields(template)
    except ValueError as e:
        raise InvalidPolicyError(field, str(e)) from None
    if template.startswith(".") or template.endswith((".tmp", ".sha256")) or template == "latest":
        raise InvalidPolicyError(
            field,
            f"filename template {template!r} clashes with linnaeus' own names "
            "(hidden temp files, '.sha256' sidecars, 'latest'); choose another name."
        )
    if interval.by_steps and "step" not in fields:
        raise InvalidPolicyError(
            field,
            f"filename template {template!r} saves every {interval} but has no {{step}} field, so two "
            "saves within one epoch would share a name. Add {step}, e.g. 'checkpoint_step_{step}.pth'.",
            related=("interval",) if field == "filename" else (),
        )
    if not fields & {"epoch", "step"}:
        raise InvalidPolicyError(
            field,
            f"filename template {template!r} has neither {{epoch}} nor {{step}}, so successive saves "
            "would overwrite each other. Add {epoch} or {step}."
        )
    sample = {**dict.fromkeys(fields, _SAMPLE_METRIC), **_SAMPLE_FIELDS}
    try:
        template.format(**sample)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise InvalidPolicyError(
            field,
            f"filename template {template!r} cannot be rendered: {type(e).__name__}: {e}. Use named fields "
            "with format specs that fit them: {epoch}/{step}/{rank} are integers, metric fields are floats "
            "(e.g. {val_acc1_species:.3f}), {experiment}/{model}/{timestamp}/{run_timestamp}/{dataset} are text, "
            "{n_epochs} an integer."
        ) from None


def render_filename(template: str, fields: Mapping[str, Any]) -> str:
    """Fill a template; metric names may contain '/', which becomes '_' in field names.

    Raises :class:`InvalidOperationError` when the template needs a metric this save does
    not carry (e.g. a save without a validation before it), naming the field and the metrics
    that are there.
    """
    flat = {metric_field_name(k): v for k, v in fields.items()}
    try:
        name = template.format(**flat)
    except KeyError as e:
        missing = str(e.args[0])
        if missing in KNOWN_FIELDS:  # only a direct caller can leave these out; the manager never does
            raise InvalidOperationError(
                f"filename template {template!r} uses {{{missing}}}, but it was not among the fields given "
                f"({', '.join(sorted(flat))}); pass {missing}=... to render_filename."
            ) from None
        metrics = sorted(k for k in fields if k not in KNOWN_FIELDS)
        have = f"metrics {', '.join(metrics)}" if metrics else "no metrics"
        fields_list = ", ".join("{" + metric_field_name(m) + "}" for m in metrics)
        raise InvalidOperationError(
            f"filename template {template!r} uses the metric field {{{missing}}}, but this save has {have}"
            f"{' (fields ' + fields_list + ')' if metrics else ''}. Metric fields are metric names with '/' "
            "replaced by '_' (val/acc1/species -> {val_acc1_species}). Pass that metric to this save "
            "(metrics=...), save only after the evaluation that produces it, or remove the field from the template."
        ) from None
    except (ValueError, TypeError, IndexError, AttributeError) as e:
        raise InvalidOperationError(
            f"filename template {template!r} cannot be rendered with {dict(flat)}: {type(e).__name__}: {e}. "
            "Fix the field's format spec in the template."
        ) from None
    if "/" in name or name.startswith("."):
        raise InvalidOperationError(
            f"filename template {template!r} rendered to {name!r}, which is not a plain file name "
            "(it contains '/' or starts with '.'); check the values of its fields (e.g. the experiment name)."
        )
    return name


@dataclass(frozen=True)
class CheckpointPolicy:
    """Everything that decides when checkpoints are written, how they are named and kept.

    The policy owns its rules: constructing an invalid one raises :class:`InvalidPolicyError`
    naming the field, so a policy that exists is one every save can follow.
    """

    interval: Cadence = Interval(1, "ep")
    filename: str = "checkpoint_epoch_{epoch}.pth"
    mid_epoch_filename: str = "checkpoint_epoch_{epoch}_step_{step}.pth"
    keep_last_n: int = 0  # 0 = keep all (unless keep_best_n selects alone)
    keep_best_n: int = 0
    keep_local_n: int = -1  # >= 0: at most this many local copies whose upload is confirmed; -1 = no limit
    monitor: str = ""
    mode: str = "max"
    async_save: bool = False
    # With async_save: copy what only the optimizers change (parameters, optimizer state, the EMA) while
    # the next forward and backward run; the optimizers' step waits for it (disk/overlap.py).
    overlap_snapshot: bool = False
    # With async_save: serialise, hash and write in a child process (disk/process_writer.py), so the
    # writing leaves the training process's interpreter; the commit stays in this process.
    writer_process: bool = False
    weights_only: bool = False
    save_last_only: bool = False
    # On node-local directories: how many other nodes keep a copy of each node's part of a sharded
    # checkpoint, sent right after its commit (single-file copies: linnaeus.checkpoint.replicas).
    node_copies: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.interval, (Interval, Schedule)):
            raise InvalidPolicyError(
                "interval", f"interval must be an Interval or a Schedule, got {self.interval!r}; use "
                "parse_interval('2ep') (epochs), parse_interval('500st') (optimizer steps), parse_interval('30min') "
                "(training time) or parse_interval(['1ep', '30min'])."
            )
        validate_filename_template(self.filename, self.interval, field="filename")
        validate_filename_template(self.mid_epoch_filename, Interval(1, "st"), field="mid_epoch_filename")
        if self.overlap_snapshot and not self.async_save:
            raise InvalidPolicyError(
                "overlap_snapshot", "overlap_snapshot=True overlaps the snapshot of a background save with "
                "training; it needs async_save=True (a synchronous save has written everything when it returns).",
                related=("async_save",))
        if self.writer_process and not self.async_save:
            raise InvalidPolicyError(
                "writer_process", "writer_process=True writes background saves in a child process; it needs "
                "async_save=True (a synchronous save writes in the caller).", related=("async_save",))
        if isinstance(self.node_copies, bool) or not isinstance(self.node_copies, int) or self.node_copies < 0:
            raise InvalidPolicyError("node_copies", f"node_copies must be an int >= 0 (0 = none), got "
                                                    f"node_copies={self.node_copies!r}.")
        if self.mode not in ("min", "max"):
            raise InvalidPolicyError("mode", f"mode must be 'min' or 'max', got {self.mode!r}.")
        for name, zero in (("keep_last_n", "keep all"), ("keep_best_n", "keep none for being best")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidPolicyError(name, f"{name} must be an int >= 0 (0 = {zero}), got {name}={value!r}.")
        if isinstance(self.keep_local_n, bool) or not isinstance(self.keep_local_n, int) or self.keep_local_n < -1:
            raise InvalidPolicyError(
                "keep_local_n", "keep_local_n must be an int >= -1 (-1 = no limit; N >= 0 = keep at most N local "
                f"copies once their upload is confirmed), got keep_local_n={self.keep_local_n!r}.")
        if self.keep_best_n > 0 and not self.monitor:
            raise InvalidPolicyError(
                "keep_best_n",
                f"keep_best_n={self.keep_best_n} needs a monitor metric name to rank checkpoints by, "
                "e.g. monitor='val/acc1/species'; or set keep_best_n=0.",
                related=("monitor",),
            )

    @property
    def prunes(self) -> bool:
        """Whether retention may delete anything (keep-last, keep-best alone, or a local-copy limit)."""
        return self.keep_last_n > 0 or self.keep_best_n > 0 or self.keep_local_n >= 0

    @property
    def metric_fields(self) -> frozenset[str]:
        """Metric fields of ``filename``: a save can only be named once those metrics exist."""
        return frozenset(metric_fields(self.filename))
