"""TRAIN.PREEMPT_SIGNALS, TRAIN.DEADLINE and CHECKPOINT.SAVE_BEFORE_END: the one reading of each, used
by config validation and the runner, so a config passes validation exactly when the runner can act on it."""

from __future__ import annotations

import datetime
import signal
from typing import Mapping

from yacs.config import CfgNode as CN

from linnaeus.checkpoint.policy import InvalidPolicyError, parse_interval

from .errors import ConfigError

# A handler cannot be installed for these; SIGCHLD and SIGPIPE arrive in normal operation.
_REFUSED = {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, signal.SIGPIPE}


def preempt_signals(cfg: CN) -> tuple[signal.Signals, ...]:
    """TRAIN.PREEMPT_SIGNALS as signals ("SIGUSR1", "USR1" and "usr1" are one signal)."""
    out: list[signal.Signals] = []
    for name in cfg.TRAIN.PREEMPT_SIGNALS:
        full = str(name).strip().upper()
        full = full if full.startswith("SIG") else "SIG" + full
        known = full in signal.Signals.__members__
        if not known or signal.Signals[full] in _REFUSED:
            raise ConfigError(
                f"TRAIN.PREEMPT_SIGNALS: {name!r} is not a signal a run can stop on gracefully "
                f"({'it cannot be caught, or arrives in normal operation' if known else 'unknown name'}); "
                "use names such as SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP.")
        if signal.Signals[full] not in out:
            out.append(signal.Signals[full])
    return tuple(out)


def parse_deadline(text: str) -> float:
    """A Unix timestamp, or an ISO-8601 time (local time unless it names a zone); ValueError otherwise."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    return datetime.datetime.fromisoformat(text).timestamp()


def deadline_from(cfg: CN, environ: Mapping[str, str]) -> tuple[float | None, str]:
    """(the time the job will be killed, where it comes from): TRAIN.DEADLINE, else Slurm's end time of
    the job when under Slurm, else (None, "")."""
    if cfg.TRAIN.DEADLINE:
        try:
            return parse_deadline(cfg.TRAIN.DEADLINE), "TRAIN.DEADLINE"
        except ValueError:
            raise ConfigError(
                f"TRAIN.DEADLINE {cfg.TRAIN.DEADLINE!r} is neither a Unix timestamp nor an ISO-8601 time; write e.g. "
                "'2026-12-07T18:00:00' (local time), '2026-12-07T18:00:00+00:00', or 1796666400.") from None
    end = environ.get("SLURM_JOB_END_TIME", "")
    if end.strip().isdigit():
        return float(end), f"Slurm's end time of job {environ.get('SLURM_JOB_ID', '?')} (SLURM_JOB_END_TIME)"
    return None, ""


def save_before_end_s(cfg: CN) -> float | None:
    """CHECKPOINT.SAVE_BEFORE_END in seconds (None when empty)."""
    if not cfg.CHECKPOINT.SAVE_BEFORE_END:
        return None
    try:
        interval = parse_interval(cfg.CHECKPOINT.SAVE_BEFORE_END)
    except InvalidPolicyError:
        interval = None
    if interval is None or not hasattr(interval, "unit") or interval.unit != "s":
        raise ConfigError(f"CHECKPOINT.SAVE_BEFORE_END {cfg.CHECKPOINT.SAVE_BEFORE_END!r}: expected a duration such "
                          "as '5min', '90s' or '1h' (how long before the deadline the run commits and stops).")
    return float(interval.every)


def validate_cluster(cfg: CN) -> None:
    preempt_signals(cfg)
    margin = save_before_end_s(cfg)
    deadline, _ = deadline_from(cfg, {})  # the explicit one; Slurm's is read when the run starts
    if deadline is not None and margin is None:
        raise ConfigError(f"TRAIN.DEADLINE {cfg.TRAIN.DEADLINE!r} is set but CHECKPOINT.SAVE_BEFORE_END is empty: set "
                          "how long before the deadline the run commits a checkpoint and stops, e.g. '5min'.")


__all__ = ["deadline_from", "parse_deadline", "preempt_signals", "save_before_end_s", "validate_cluster"]
