"""What a save is called: a policy's template rendered with the save's fields, the run-level fields
a manager is given once, and the one name every rank agrees on (rank 0's)."""

from __future__ import annotations

import datetime
from typing import Any, Callable, Mapping

from linnaeus.dist import broadcast_object, get_rank, get_world_size, run_on_all_ranks

from .errors import InvalidOperationError
from .policy import RUN_FIELDS, CheckpointPolicy, render_filename, template_fields
from .state import plain_metrics


def render_for(policy: CheckpointPolicy, *, epoch: int, step: int, end_of_epoch: bool,
               metrics: Mapping[str, float] | None, fields: Mapping[str, Any]) -> str:
    """Render ``policy``'s template for one save; mid-epoch saves of an epoch-interval policy get the
    ``{step}`` one. ``fields`` are the run's (experiment, model, run timestamp, dataset, ...)."""
    use_mid = not end_of_epoch and not policy.interval.by_steps
    template = policy.mid_epoch_filename if use_mid else policy.filename
    values = {"epoch": epoch, "step": step, "timestamp": datetime.datetime.now().strftime("%Y%m%d-%H%M%S"),
              "rank": get_rank(), **fields, **plain_metrics(metrics)}
    return render_filename(template, values)


def agreed_filename(filename: str | None, render: Callable[[], str], what: str) -> str:
    """Rank 0's file name, on every rank (a collective in DDP).

    Only rank 0 names the save, so every rank's ``txn.path``/``save()`` must name rank 0's file,
    whereas ``{rank}``, ``{timestamp}`` and rank-local metrics render differently per rank.
    A rendering error on rank 0 is raised on every rank instead of leaving them waiting.
    """
    def named() -> str:
        try:
            return filename or render()
        except InvalidOperationError as e:
            where = " (rank 0 names the file for every rank)" if get_world_size() > 1 else ""
            raise InvalidOperationError(f"cannot name {what}{where}: {e}") from e

    name = run_on_all_ranks(lambda: named() if get_rank() == 0 else None, "naming a checkpoint",
                            InvalidOperationError)
    return broadcast_object(name)


def run_name_fields(policy: CheckpointPolicy, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run-level name fields ({dataset}, {n_epochs}) a manager renders with; refuses, at
    construction rather than at the first save, a template that uses one it was not given."""
    fields = dict(given or {})
    unknown = sorted(set(fields) - RUN_FIELDS)
    if unknown:
        raise InvalidOperationError(f"name_fields {unknown} are not run-level name fields; expected some of "
                                    f"{sorted(RUN_FIELDS)}.")
    used = (template_fields(policy.filename) | template_fields(policy.mid_epoch_filename)) & RUN_FIELDS
    missing = sorted(used - set(fields))
    if missing:
        raise InvalidOperationError(
            f"filename template {policy.filename!r} / {policy.mid_epoch_filename!r} uses "
            f"{', '.join('{' + m + '}' for m in missing)}, which this manager was not given: pass "
            f"name_fields={{{', '.join(repr(m) + ': ...' for m in missing)}}} to CheckpointManager."
        )
    return fields


__all__ = ["agreed_filename", "render_for", "run_name_fields"]
