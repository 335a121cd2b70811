"""A :class:`~linnaeus.checkpoint.manager.CheckpointManager` save in the sharded format: the same
anatomy, names, metric history, lineage, hooks and retention as a single-file save, written by
every rank through :func:`~linnaeus.checkpoint.sharded.save_sharded`."""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from torch import nn

from linnaeus.dist import is_main_process, run_on_all_ranks

from .errors import CheckpointError, InvalidOperationError
from .commit import SaveResult
from .sharded import save_sharded
from .sharded_async import ShardedAsyncSaver
from .sharded_manifest import sharded_dirname
from .state import KIND_FULL, Stateful, gather_rng_states, make_meta, plain_metrics
from .taxonomy import TAXONOMY_KEY

if TYPE_CHECKING:
    from .manager import CheckpointManager

logger = logging.getLogger("linnaeus.checkpoint")

# A manager's staging buffers live as long as it does (they are reused by each of its saves).
_ASYNC: "weakref.WeakKeyDictionary[CheckpointManager, ShardedAsyncSaver]" = weakref.WeakKeyDictionary()


def save_sharded_for(manager: CheckpointManager, *, epoch: int, step: int, epoch_step: int, samples: int,
                     end_of_epoch: bool, metrics: Mapping[str, Any] | None, model: nn.Module,
                     extra: Mapping[str, Any] | None, filename: str | None,
                     components: Mapping[str, Stateful | None]) -> Path:
    """``manager.save`` in the sharded format (a collective). Returns the committed directory."""
    manager._check_open()
    background = _background(manager)
    if manager.policy.weights_only:
        raise InvalidOperationError(f"sharded saves are full checkpoints; saver {manager.name!r} is weights-only. "
                                    "Export weights from a sharded checkpoint with `linnaeus-ckpt export`.")
    if not isinstance(model, nn.Module):
        raise InvalidOperationError("a sharded save needs the model itself (its parameters may be sharded), "
                                    f"not a {type(model).__name__}")
    values = plain_metrics(metrics)
    name = sharded_dirname(manager._agreed_filename(filename, epoch=epoch, step=step, end_of_epoch=end_of_epoch,
                                                    metrics=values))
    progress = {"epoch": int(epoch), "step": int(step), "epoch_step": int(epoch_step), "samples": int(samples)}
    manager.metrics.record(epoch, step, values, name)
    present = {k: v for k, v in components.items() if v is not None}
    optimizer = present.pop("optimizer", None)
    # A component that is a module (an EMA copy of the model) may be sharded like the model: DCP carries it.
    modules = {k: present.pop(k) for k in [k for k, v in present.items() if isinstance(v, nn.Module)]}
    rng = gather_rng_states()  # a collective: every rank's streams, for an exact resume at this world size
    meta = make_meta(kind=KIND_FULL, saver=manager.name, file=name, run_id=manager.run_id, epoch=epoch, step=step,
                     metrics=values, parent_sha256=manager.parent_sha256, run_timestamp=manager.run_timestamp,
                     extra={"format": "sharded"})
    rest: dict[str, Any] = {}
    if is_main_process():  # only rank 0 writes state.pt
        rest = {k: obj.state_dict() for k, obj in present.items()}
        rest.update(progress=progress, rng=rng, metrics=manager.metrics.state_dict(), config=manager.config_text,
                    meta=meta, **dict(extra or {}))
        if manager.taxonomy is not None:  # as in a single file: a resume compares it, a transfer maps heads by it
            rest[TAXONOMY_KEY] = manager.taxonomy
    def after_commit(result: SaveResult) -> None:
        manager.last_committed = result.path
        logger.info("Saved sharded checkpoint %s%s", result.path,
                    "" if background is None else " (written in the background)")
        if not manager.is_writer:
            return
        for what, action in (("on_commit hook", manager.on_commit), ("retention", lambda _: manager.apply_retention())):
            if action is None:
                continue
            try:
                action(result.path)
            except Exception as e:
                raise CheckpointError(f"checkpoint {result.path} was committed, but the {what} failed: "
                                      f"{type(e).__name__}: {e}") from e

    result = save_sharded(manager.directory, name, model=model, optimizer=optimizer, modules=modules, rest=rest,
                          manifest_extra={"progress": progress, "meta": meta, "config": manager.config_text},
                          update_latest=manager.update_latest, background=background, on_committed=after_commit)
    if result is None:  # committed in the background; poll() raises its failure on every rank
        return manager.directory / name
    run_on_all_ranks(lambda: after_commit(result), f"save of {result.path}", CheckpointError)
    return result.path


def _background(manager: CheckpointManager) -> ShardedAsyncSaver | None:
    """The manager's asynchronous saver (None for synchronous saves), after the save in flight has
    committed and its failure, if any, has been raised on every rank: one save in flight at a time."""
    writer = manager._writer
    if writer is None:
        return None
    writer.wait_idle()
    manager.poll()
    saver = _ASYNC.get(manager)
    if saver is None:
        saver = _ASYNC[manager] = ShardedAsyncSaver(writer)
    return saver
