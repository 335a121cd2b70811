"""CheckpointManager: when to save, the save transaction, background writing, resume.

A training loop drives it like this (every rank makes the same calls)::

    manager = CheckpointManager(run_dir / "checkpoints", policy, config=cfg.dump())
    resumed = manager.resume(model=model, optimizer=opt, scheduler=sched, sampler=sampler)
    ...
    if manager.should_save(epoch=epochs_done, step=step, end_of_epoch=True):
        manager.save(epoch=epochs_done, step=step, metrics=val_metrics, model=model, optimizer=opt, ...)
    manager.poll()   # surfaces a failed background save on every rank
    ...
    manager.close()  # waits for the save in flight

or, for any state of its own, as a transaction (fairseq2-style begin/commit)::

    with manager.begin(epoch=3, step=1200, metrics={"val/acc1": 71.2}) as ckpt:
        ckpt["model"] = model.state_dict()
        ckpt["optimizer"] = optimizer.state_dict()
    # committed here; an exception inside the block discards it

In DDP only rank 0 writes; all ranks learn the outcome, and a failed save raises on all.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from linnaeus.dist import broadcast_object, get_rank, get_world_size, raise_on_all_ranks, run_on_all_ranks

from .async_writer import AsyncWriter
from .catalog import CheckpointInfo, list_checkpoints
from .commit import commit_for_saver, read_latest
from .errors import CheckpointError, InvalidOperationError
from .history import MetricHistory
from .lineage import parent_sha256
from .policy import RUN_FIELDS, CheckpointPolicy, render_filename, template_fields
from .retention import cleanup_stale, delete_checkpoint, plan_retention
from .scan import load_newest, newest_verified, nothing_to_load_error
from .state import (
    KIND_FULL,
    KIND_WEIGHTS,
    Stateful,
    build_state,
    config_text,
    gather_rng_states,
    make_meta,
    model_state_dict,
    plain_metrics,
    restore_state,
)
from .sharded import restore_any
from .sharded_saver import save_sharded_for
from .taxonomy import TAXONOMY_KEY, check_same_taxonomy
from .transaction import CheckpointTransaction
from .verify import load_verified
from .writer_lock import acquire_on_writer_rank

logger = logging.getLogger("linnaeus.checkpoint")


@dataclass
class ResumeResult:
    path: Path
    progress: dict[str, int]  # epoch (completed), step, epoch_step, samples
    state: dict[str, Any]


class CheckpointManager:
    """Saves, retains and finds the checkpoints of one saver in one directory.

    Two managers may share a directory (e.g. full checkpoints + a weights-only saver with
    its own interval, name and keep count): each one's retention only touches files whose
    ``meta.saver`` is its ``name``, and only full-checkpoint managers move ``latest``.
    From construction to ``close()`` rank 0 holds the directory's writer lock (shared by the
    managers of one process; :mod:`.writer_lock`): construction is a collective in DDP and
    raises :class:`DirectoryLockedError` on every rank while another process writes there.

    Hooks (rank 0, on the writer thread when async): ``on_commit(path)`` after each commit;
    ``can_delete(path) -> bool`` before retention deletes a file (False keeps it for now,
    e.g. until its upload is confirmed).
    """

    def __init__(self, directory: str | Path, policy: CheckpointPolicy | None = None, *, name: str = "checkpoint",
                 config: Any = None, experiment: str = "", model_name: str = "", run_id: str | None = None,
                 run_timestamp: str | None = None, name_fields: Mapping[str, Any] | None = None,
                 update_latest: bool | None = None, can_delete: Callable[[Path], bool] | None = None,
                 on_commit: Callable[[Path], None] | None = None, sharded: bool = False) -> None:
        self.directory = Path(directory)
        self.sharded = sharded  # save DCP directories written by every rank (sharded.py), not one file
        self.policy = policy or CheckpointPolicy()
        self.name = name
        self.config_text = config_text(config)
        self.experiment = experiment
        self.model_name = model_name
        self.run_id = run_id or uuid.uuid4().hex[:12]
        # {run_timestamp}: the run's start, recorded in every checkpoint and taken over on resume
        # like the run id, so a relaunch keeps naming its files with the first launch's time.
        self.run_timestamp = run_timestamp or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.name_fields = _run_name_fields(self.policy, name_fields)
        self.parent_sha256 = ""  # lineage: sha256 of the file this run resumed from ("" = fresh start)
        self.update_latest = (not self.policy.weights_only) if update_latest is None else update_latest
        self.can_delete = can_delete
        self.on_commit = on_commit
        self.protect: set[str] = set()  # file names retention never deletes (e.g. the one resumed from)
        # {level: class names in index order} (taxonomy.py): saved in every file, compared on restore.
        self.taxonomy: dict[str, list[str]] | None = None
        self.metrics = MetricHistory(self.policy.monitor, self.policy.mode)
        self.last_committed: Path | None = None
        self._writer = AsyncWriter(name) if self.policy.async_save else None
        self._open_txn: CheckpointTransaction | None = None
        self._closed = False
        # One writer per directory: rank 0 holds the OS lock until close(); every rank raises if it can't.
        self._lease = acquire_on_writer_rank(self.directory)
        if self.is_writer:
            cleanup_stale(self.directory)

    @property
    def history(self) -> list[dict[str, float]]:
        return self.metrics.history

    @property
    def best(self) -> dict[str, Any]:
        return self.metrics.best

    # ------------------------------------------------------------------ decisions
    @property
    def is_writer(self) -> bool:
        return get_rank() == 0

    @property
    def kind(self) -> str:
        return KIND_WEIGHTS if self.policy.weights_only else KIND_FULL

    def should_save(self, *, epoch: int, step: int, end_of_epoch: bool, is_last: bool = False) -> bool:
        """Whether the policy wants a save now (pure: every rank computes the same answer).

        ``epoch`` = epochs completed, ``step`` = optimizer steps done; ``is_last`` marks the
        end of training (always saved, even with SAVE_LAST_ONLY or an interval that misses it).
        """
        if is_last:
            return True
        if self.policy.save_last_only:
            return False
        return self.policy.interval.due(epoch=epoch, step=step, end_of_epoch=end_of_epoch)

    def filename_for(self, *, epoch: int, step: int, end_of_epoch: bool = True, metrics: Mapping[str, float] | None = None) -> str:
        """Render the policy's template; mid-epoch saves of an epoch-interval policy get the {step} one.

        Local to this process: ``{rank}`` and ``{timestamp}`` differ between ranks. ``begin()``
        and ``save()`` use rank 0's rendering on every rank. Raises InvalidOperationError
        when the template uses a metric this save does not have.
        """
        use_mid = not end_of_epoch and not self.policy.interval.by_steps
        template = self.policy.mid_epoch_filename if use_mid else self.policy.filename
        fields = {"epoch": epoch, "step": step, "experiment": self.experiment, "model": self.model_name,
                  "timestamp": datetime.datetime.now().strftime("%Y%m%d-%H%M%S"), "rank": get_rank(),
                  "run_timestamp": self.run_timestamp, **self.name_fields,
                  **plain_metrics(metrics)}
        return render_filename(template, fields)

    # ------------------------------------------------------------------ saving
    def begin(self, *, epoch: int, step: int, epoch_step: int = 0, samples: int = 0, end_of_epoch: bool = True,
              metrics: Mapping[str, Any] | None = None, filename: str | None = None) -> CheckpointTransaction:
        """Open a save transaction (see :class:`CheckpointTransaction`)."""
        self._check_open()
        if self._open_txn is not None:
            raise InvalidOperationError(
                f"begin() while the transaction for {self._open_txn.path} is still open; commit or abort it first."
            )
        values = plain_metrics(metrics)
        name = self._agreed_filename(filename, epoch=epoch, step=step, end_of_epoch=end_of_epoch, metrics=values)
        progress = {"epoch": int(epoch), "step": int(step), "epoch_step": int(epoch_step), "samples": int(samples)}
        self._open_txn = CheckpointTransaction(self, filename=name, progress=progress, metrics=values)
        return self._open_txn

    def _agreed_filename(self, filename: str | None, *, epoch: int, step: int, end_of_epoch: bool,
                         metrics: dict[str, float]) -> str:
        """Rank 0's file name, on every rank (a collective in DDP).

        Only rank 0 writes, so every rank's ``txn.path``/``save()`` must name rank 0's file,
        whereas ``{rank}``, ``{timestamp}`` and rank-local metrics render differently per rank.
        A rendering error on rank 0 is raised on every rank instead of leaving them waiting.
        """
        def render() -> str:
            try:
                return filename or self.filename_for(epoch=epoch, step=step, end_of_epoch=end_of_epoch, metrics=metrics)
            except InvalidOperationError as e:
                where = " (rank 0 names the file for every rank)" if get_world_size() > 1 else ""
                raise InvalidOperationError(
                    f"cannot name the save at epoch {epoch}, step {step} in {self.directory}{where}: {e}") from e

        name = run_on_all_ranks(lambda: render() if self.is_writer else None, "naming a checkpoint",
                                InvalidOperationError)
        return broadcast_object(name)

    def save(self, *, epoch: int, step: int, epoch_step: int = 0, samples: int = 0, end_of_epoch: bool = True,
             metrics: Mapping[str, Any] | None = None, model: nn.Module | Mapping[str, Any],
             extra: Mapping[str, Any] | None = None, filename: str | None = None,
             **components: Stateful | None) -> Path:
        """Save ``model`` and each named component's state (a collective in DDP). Returns the path.

        ``components`` are the training state beside the model, by checkpoint key: typically
        ``optimizer=``, ``scheduler=``, ``scaler=``, ``ema=``, ``sampler=``; any other
        :class:`~linnaeus.checkpoint.state.Stateful` under any other name is saved the same way.
        Synchronous: the file is committed when this returns. Async: it is committed in
        the background; errors surface on the next ``save``/``poll``/``wait``/``close``.
        With ``sharded=True`` every rank writes its shards of a checkpoint directory (synchronous).
        """
        if self.sharded:
            return save_sharded_for(self, epoch=epoch, step=step, epoch_step=epoch_step, samples=samples,
                                    end_of_epoch=end_of_epoch, metrics=metrics, model=model, extra=extra,
                                    filename=filename, components=components)
        with self.begin(epoch=epoch, step=step, epoch_step=epoch_step, samples=samples, end_of_epoch=end_of_epoch,
                        metrics=metrics, filename=filename) as ckpt:
            ckpt.update(build_state(model, components, weights_only=self.policy.weights_only))
            if extra:
                ckpt.update(extra)
        return ckpt.path

    def _commit(self, txn: CheckpointTransaction) -> None:
        self._check_open()
        # Misuse found on one rank must stop all of them before the collectives below.
        self._agree(txn.problem(), f"save of {txn.path}")
        if self._writer is not None:
            # One save in flight; a failure of the previous one is raised before starting another.
            if self.is_writer:
                self._writer.wait_idle()
            self.poll()
        state = self._complete_state(txn)
        if self._writer is not None:
            if self.is_writer:
                frozen = self._writer.snapshot(state)  # here: training may change tensors right after we return
                self._writer.submit(lambda: self._write(frozen, txn.filename), f"save of {txn.path}")
            return
        error = None
        if self.is_writer:
            try:
                self._write(state, txn.filename)
            except CheckpointError as e:  # re-raised on every rank by _agree
                error = e
        self._agree(error, f"save of {txn.path}")

    def _complete_state(self, txn: CheckpointTransaction) -> dict[str, Any]:
        """Add what every checkpoint carries (progress, rng, metrics, config, meta) to the user's entries."""
        epoch, step = txn.progress["epoch"], txn.progress["step"]
        self.metrics.record(epoch, step, txn.metrics, txn.filename)
        state = dict(txn.state)
        if isinstance(state["model"], nn.Module) or any(k.startswith("module.") for k in state["model"]):
            state["model"] = model_state_dict(state["model"])
        if self.policy.weights_only:
            state = {"model": state["model"]}
        else:
            state.setdefault("progress", dict(txn.progress))
            state.setdefault("metrics", self.metrics.state_dict())
            if "rng" not in state:
                state["rng"] = gather_rng_states()  # collective: every rank's RNG, for exact resume
        state["config"] = txn.state.get("config", self.config_text)
        if self.taxonomy is not None:  # weights-only files too: a transfer maps heads by these names
            state[TAXONOMY_KEY] = self.taxonomy
        state["meta"] = make_meta(
            kind=self.kind, saver=self.name, file=txn.filename, run_id=self.run_id, run_timestamp=self.run_timestamp,
            epoch=epoch, step=step, metrics=txn.metrics, extra=txn.meta_extra, parent_sha256=self.parent_sha256,
        )
        return state

    def _write(self, state: dict[str, Any], filename: str) -> None:
        """Rank 0: commit, run the hook, apply retention (on the writer thread when async).

        Failures come out as CheckpointError naming the file and whether it got committed.
        """
        result = commit_for_saver(self.directory, filename, state, saver=self.name, update_latest=self.update_latest)
        self.last_committed = result.path
        logger.info("Saved checkpoint %s", result.path)
        logger.debug("  %d bytes, sha256 %s, %.2fs", result.size, result.sha256, result.seconds)
        for what, action in (("on_commit hook", self.on_commit), ("retention", lambda _: self.apply_retention())):
            if action is None:
                continue
            try:
                action(result.path)
            except Exception as e:
                raise CheckpointError(
                    f"checkpoint {result.path} was committed, but the {what} failed: {type(e).__name__}: {e}"
                ) from e

    # ------------------------------------------------------------------ async control
    def poll(self) -> None:
        """Raise :class:`CheckpointError` on every rank if a background save has failed.

        A collective in DDP (all ranks must call it at the same points): it all-reduces a
        4-byte error flag, i.e. one small all-reduce per call (tens of microseconds on
        gloo/NCCL within a node), plus a gather of the message only when a save failed.
        A no-op for synchronous managers.
        """
        if self._writer is None:
            return
        error = self._writer.take_error() if self.is_writer else None
        self._agree(error, "asynchronous save")

    def wait(self) -> None:
        """Block until the background save (if any) is committed; raise its error on every rank."""
        if self._writer is not None and self.is_writer:
            self._writer.wait_idle()
        self.poll()

    def close(self) -> None:
        """Finish the save in flight and refuse further saves. Safe to call twice."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            if self._writer is not None:
                self._writer.release_buffers()
            if self._lease is not None:
                self._lease.release()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close() if exc_type is None else self.close_after_error()

    def close_after_error(self) -> None:
        """:meth:`close` for a caller unwinding an exception, perhaps on this rank alone: finish
        this rank's save in flight (it commits, or the previous files stay) with no collective,
        and raise nothing (a failed save is logged by the writer), so the caller's exception is
        the one that propagates. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._writer is not None and self.is_writer:
                self._writer.release_buffers()  # waits for the job in flight first
                self._writer.take_error()
        finally:
            if self._lease is not None:
                self._lease.release()

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidOperationError(f"checkpoint manager for {self.directory} is closed; create a new one to save.")

    @staticmethod
    def _agree(error: BaseException | None, what: str) -> None:
        """Raise on every rank if ``error`` is set on any rank (a collective in DDP)."""
        raise_on_all_ranks(error, what, CheckpointError)

    # ------------------------------------------------------------------ retention
    def checkpoints(self) -> list[CheckpointInfo]:
        """This saver's committed, readable checkpoints on disk, oldest first.

        Files in a newer format are left out: this version cannot judge them, so retention
        never deletes them.
        """
        return [i for i in list_checkpoints(self.directory)
                if i.committed and i.readable and not i.too_new and i.saver == self.name]

    def apply_retention(self) -> list[Path]:
        """Delete this saver's checkpoints the policy no longer keeps; returns the deleted paths."""
        p = self.policy
        if not p.prunes:
            return []
        if p.keep_local_n >= 0 and self.can_delete is None:
            raise InvalidOperationError(
                f"keep_local_n={p.keep_local_n} limits local copies whose upload is confirmed, but this manager has "
                "no can_delete hook to say which are: pass can_delete=uploader.can_delete (a BackgroundUploader), "
                "or keep_local_n=-1.")
        latest = read_latest(self.directory)
        confirmed = self.can_delete
        doomed = plan_retention(self.checkpoints(), keep_last_n=p.keep_last_n, keep_best_n=p.keep_best_n,
                                monitor=p.monitor, mode=p.mode, protect=self.protect | ({latest} if latest else set()),
                                latest=latest, keep_local_n=p.keep_local_n,
                                uploaded=None if confirmed is None else lambda info: confirmed(info.path))
        deleted = []
        for info in doomed:
            if self.can_delete is not None and not self.can_delete(info.path):
                logger.debug("Keeping %s for now: the deletion hook declined.", info.path)
                continue
            delete_checkpoint(info.path)
            deleted.append(info.path)
            logger.info("Deleted checkpoint %s (retention)", info.path)
        return deleted

    # ------------------------------------------------------------------ resume
    def find_resumable(self) -> Path | None:
        """Newest checkpoint here that verifies (sha256 + structure), or None (all ranks agree).

        Damaged files are skipped with a warning; a file in a newer format than this linnaeus
        reads raises :class:`CheckpointIncompatibleError` on every rank (see :mod:`.resume`).
        """
        return newest_verified(self.directory)

    def load(self, path: str | Path, *, map_location: Any = "cpu", require_sidecar: bool = True) -> dict[str, Any]:
        """Verify (sha256, streamed beside the load) and load with ``weights_only=True``."""
        return load_verified(path, map_location=map_location, require_sidecar=require_sidecar)

    def load_resumable(self, *, map_location: Any = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """(path, state) of the newest valid checkpoint here, or None; one read pass per file
        tried. Skips and stops like :meth:`find_resumable`."""
        return load_newest(self.directory, map_location=map_location)

    def load_last(self, *, map_location: Any = "cpu") -> tuple[Path, dict[str, Any]]:
        """:meth:`load_resumable` for a caller that needs a checkpoint (fairseq2's
        ``load_last_checkpoint``): raises :class:`CheckpointNotFoundError` listing the places
        looked and why each file there was passed over, instead of returning None."""
        found = self.load_resumable(map_location=map_location)
        if found is None:
            raise nothing_to_load_error(self.directory)
        return found

    def restore(self, state: Mapping[str, Any], *, path: str | Path | None = None, rng: bool = True,
                model: nn.Module | None = None, **components: Stateful | None) -> dict[str, int]:
        """Load ``state`` into ``model`` and the named components (as passed to :meth:`save`),
        take over its metric history and, for a file of this directory, its run id (a resumed
        run keeps its lineage); protect ``path`` from retention; returns its progress."""
        source = str(path) if path is not None else f"checkpoint {state.get('meta', {}).get('file', '?')}"
        check_same_taxonomy(state, self.taxonomy, source=source)  # before anything is loaded
        progress = restore_any(state, model, components, rng=rng, source=source)  # file or sharded, any world size
        self.metrics.load_state_dict(state.get("metrics") or {})
        if path is not None and Path(path).parent.resolve() == self.directory.resolve():
            self.protect.add(Path(path).name)
            self.run_id = str(state.get("meta", {}).get("run_id") or self.run_id)
            self.run_timestamp = str(state.get("meta", {}).get("run_timestamp") or self.run_timestamp)
        if path is not None and self.is_writer:  # only the writer's meta is saved
            self.parent_sha256 = parent_sha256(Path(path))
        return progress

    def resume(self, *, map_location: Any = "cpu", rng: bool = True, model: nn.Module | None = None,
               **components: Stateful | None) -> ResumeResult | None:
        """Find, verify, load and restore the newest valid checkpoint; None for a fresh start."""
        found = self.load_resumable(map_location=map_location)
        if found is None:
            return None
        path, state = found
        progress = self.restore(state, path=path, rng=rng, model=model, **components)
        return ResumeResult(path, progress, state)


def _run_name_fields(policy: CheckpointPolicy, given: Mapping[str, Any] | None) -> dict[str, Any]:
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
