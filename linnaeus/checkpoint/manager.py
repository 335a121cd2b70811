"""CheckpointManager: when to save, the save transaction, background writing, retention, resume.

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

The manager decides what a checkpoint holds (the anatomy, :meth:`_contents`) and what follows a
commit (the log line, the hook, retention: :meth:`_after_commit`), once for every format; its
format (:mod:`.formats`: a single file, or a sharded directory written by every rank) decides how
it is written, read and restored. In DDP every rank learns the outcome, and a failed save raises
on all of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from linnaeus.dist import broadcast_object, get_rank, raise_on_all_ranks

from .disk import acquire_on_writer_rank
from .errors import CheckpointError, InvalidOperationError
from .formats import CheckpointFormat, SaveResult, choose_format, format_of_state
from .naming import agreed_filename, render_for, run_name_fields
from .policy import CheckpointPolicy
from .state import (KIND_FULL, KIND_WEIGHTS, TAXONOMY_KEY, TREE_KEY, MetricHistory, SnapshotOverlap, Stateful,
                    check_same_taxonomy, config_text, gather_rng_states, make_meta, plain_metrics, present_components)
from .store import LocalCheckpoints, RunLineage, apply_retention, cleanup_stale, not_ours, parent_sha256, restore_newest
from .transaction import CheckpointTransaction

logger = logging.getLogger("linnaeus.checkpoint")


@dataclass
class ResumeResult:
    path: Path
    progress: dict[str, int]  # epoch (completed), step, epoch_step, samples
    state: dict[str, Any]


class CheckpointManager(LocalCheckpoints):
    """Saves, retains and finds the checkpoints of one saver in one directory.

    Two managers may share a directory (e.g. full checkpoints + a weights-only saver with
    its own interval, name and keep count): each one's retention only touches checkpoints whose
    ``meta.saver`` is its ``name``, and only full-checkpoint managers move ``latest``; the second
    shares the first's lineage (:meth:`follow`). From construction to ``close()`` rank 0 holds the
    directory's writer lock (shared by the managers of one process): construction is a collective
    in DDP and raises :class:`DirectoryLockedError` on every rank while another process writes there.

    ``format`` names the checkpoint format (``"file"``, ``"sharded"`` or a registered one, or a
    :class:`CheckpointFormat`); ``sharded=True`` is ``format="sharded"``.

    Hooks (rank 0, on the writer thread when async): ``on_commit(path)`` after each commit;
    ``can_delete(path) -> bool`` before retention deletes a checkpoint (False keeps it for now,
    e.g. until its upload is confirmed).
    """

    def __init__(self, directory: str | Path, policy: CheckpointPolicy | None = None, *, name: str = "checkpoint",
                 config: Any = None, experiment: str = "", model_name: str = "", run_id: str | None = None,
                 run_timestamp: str | None = None, name_fields: Mapping[str, Any] | None = None,
                 update_latest: bool | None = None, can_delete: Callable[[Path], bool] | None = None,
                 on_commit: Callable[[Path], None] | None = None, sharded: bool = False,
                 format: str | CheckpointFormat | None = None) -> None:
        super().__init__(directory, name)
        self.format = choose_format(format, sharded=sharded)
        self.policy = policy or CheckpointPolicy()
        self.format.check_policy(weights_only=self.policy.weights_only, saver=name)
        self.config_text = config_text(config)
        self.experiment = experiment
        self.model_name = model_name
        # run id, {run_timestamp}, parent digest, protected names: taken over on resume, shared by follow()
        self.lineage = RunLineage(**{k: v for k, v in (("run_id", run_id), ("run_timestamp", run_timestamp)) if v})
        self.name_fields = run_name_fields(self.policy, name_fields)
        self.update_latest = (not self.policy.weights_only) if update_latest is None else update_latest
        self.can_delete = can_delete
        self.on_commit = on_commit
        # {level: class names in index order} (state/taxonomy.py): saved in every checkpoint, compared on restore;
        # and, where the levels form a tree, each class's parent (saved, for decoding without the dataset).
        self.taxonomy: dict[str, list[str]] | None = None
        self.taxonomy_tree: dict[str, list[str]] | None = None
        self.metrics = MetricHistory(self.policy.monitor, self.policy.mode)
        self.last_committed: Path | None = None
        self._background = (self.format.background(name, process=self.policy.writer_process)
                            if self.policy.async_save else None)
        self._overlap = SnapshotOverlap() if self.policy.overlap_snapshot and self._background else None
        self._open_txn: CheckpointTransaction | None = None
        self._closed = False
        # One writer per directory: rank 0 holds the OS lock until close(); every rank raises if it can't.
        self._lease = acquire_on_writer_rank(self.directory)
        # One run, one id and one start on every rank: rank 0's (a resume takes them over from its checkpoint).
        self.lineage.run_id, self.lineage.run_timestamp = broadcast_object((self.run_id, self.run_timestamp))
        if self.is_writer:
            cleanup_stale(self.directory)

    @property
    def sharded(self) -> bool:
        return self.format.name == "sharded"

    @property
    def history(self) -> list[dict[str, float]]:
        return self.metrics.history

    @property
    def best(self) -> dict[str, Any]:
        return self.metrics.best

    # ------------------------------------------------------------------ lineage
    @property
    def run_id(self) -> str:
        return self.lineage.run_id

    @property
    def run_timestamp(self) -> str:
        return self.lineage.run_timestamp

    @property
    def parent_sha256(self) -> str:
        return self.lineage.parent_sha256

    @property
    def protect(self) -> set[str]:
        """Names retention never deletes (the checkpoint resumed from)."""
        return self.lineage.protect

    def follow(self, leader: CheckpointManager) -> None:
        """Make this saver (a weights-only saver beside the full one) share ``leader``'s lineage: the
        run id, the run's start and the parent digest in every checkpoint it writes are those
        ``leader`` holds at that moment, and its retention keeps what ``leader``'s protects."""
        self.lineage = leader.lineage

    # ------------------------------------------------------------------ decisions
    @property
    def is_writer(self) -> bool:
        return get_rank() == 0

    @property
    def kind(self) -> str:
        return KIND_WEIGHTS if self.policy.weights_only else KIND_FULL

    def should_save(self, *, epoch: int, step: int, end_of_epoch: bool, is_last: bool = False,
                    elapsed_ms: tuple[int, int] = (0, 0)) -> bool:
        """Whether the policy wants a save now (pure: the same answer on every rank). ``epoch`` = epochs
        completed, ``step`` = optimizer steps done, ``elapsed_ms`` = training time at the previous and this
        step boundary (agreed across ranks by the caller); ``is_last``: the end of training (always saved)."""
        return is_last or (not self.policy.save_last_only and self.policy.interval.due(
            epoch=epoch, step=step, end_of_epoch=end_of_epoch, elapsed_ms=elapsed_ms))

    def filename_for(self, *, epoch: int, step: int, end_of_epoch: bool = True,
                     metrics: Mapping[str, float] | None = None) -> str:
        """Render the policy's template; mid-epoch saves of an epoch-interval policy get the {step} one.

        Local to this process: ``{rank}`` and ``{timestamp}`` differ between ranks. ``begin()``
        and ``save()`` use rank 0's rendering on every rank. Raises InvalidOperationError
        when the template uses a metric this save does not have.
        """
        return render_for(self.policy, epoch=epoch, step=step, end_of_epoch=end_of_epoch, metrics=metrics,
                          fields={"experiment": self.experiment, "model": self.model_name,
                                  "run_timestamp": self.run_timestamp, **self.name_fields})

    # ------------------------------------------------------------------ saving
    def begin(self, *, epoch: int, step: int, epoch_step: int = 0, samples: int = 0, end_of_epoch: bool = True,
              metrics: Mapping[str, Any] | None = None, filename: str | None = None) -> CheckpointTransaction:
        """Open a save transaction (see :class:`CheckpointTransaction`); its path is the entry this
        manager's format commits (a sharded manager's is a directory)."""
        self._check_open()
        if self._open_txn is not None:
            raise InvalidOperationError(
                f"begin() while the transaction for {self._open_txn.path} is still open; commit or abort it first."
            )
        values = plain_metrics(metrics)
        name = agreed_filename(filename, lambda: self.filename_for(epoch=epoch, step=step, end_of_epoch=end_of_epoch,
                                                                  metrics=values),
                               f"the save at epoch {epoch}, step {step} in {self.directory}")
        progress = {"epoch": int(epoch), "step": int(step), "epoch_step": int(epoch_step), "samples": int(samples)}
        self._open_txn = CheckpointTransaction(self.directory / self.format.entry_name(name), filename=name,
                                               progress=progress, metrics=values, commit=self._commit,
                                               release=self._release_txn)
        return self._open_txn

    def _release_txn(self) -> None:
        self._open_txn = None

    def save(self, *, epoch: int, step: int, epoch_step: int = 0, samples: int = 0, end_of_epoch: bool = True,
             metrics: Mapping[str, Any] | None = None, model: nn.Module | Mapping[str, Any],
             extra: Mapping[str, Any] | None = None, filename: str | None = None,
             **components: Stateful | None) -> Path:
        """Save ``model`` and each named component's state (a collective in DDP). Returns the path.

        ``components`` are the training state beside the model, by checkpoint key: typically
        ``optimizer=``, ``scheduler=``, ``scaler=``, ``ema=``, ``sampler=``; any other
        :class:`~linnaeus.checkpoint.state.Stateful` under any other name is saved the same way.
        Synchronous: committed when this returns. Async: committed in the background; errors
        surface on the next ``save``/``poll``/``wait``/``close``. With ``overlap_snapshot`` the
        live optimizers' parameters and state and the EMA are copied after this returns, and those
        optimizers' next ``step`` waits for the copy (see :meth:`wait_snapshot`).
        """
        present = present_components(components)
        with self.begin(epoch=epoch, step=step, epoch_step=epoch_step, samples=samples, end_of_epoch=end_of_epoch,
                        metrics=metrics, filename=filename) as ckpt:
            ckpt["model"] = model
            if not self.policy.weights_only:
                ckpt.update(dict(present))
            if extra:
                ckpt.update(extra)
        return ckpt.path

    def _commit(self, txn: CheckpointTransaction) -> None:
        """The transaction's commit: the anatomy, written in this manager's format (a collective)."""
        self._check_open()
        # Misuse found on one rank must stop all of them before the collectives below.
        self._agree(txn.problem() or (not_ours(txn.path, self.name) if self.is_writer else None), f"save of {txn.path}")
        if self._background is not None:
            # One save in flight; a failure of the previous one is raised before starting another.
            self._background.wait_idle()
            self.poll()
        step = txn.progress["step"]
        self.format.save(self.directory, txn.name, self._contents(txn), update_latest=self.update_latest,
                         background=self._background, on_committed=lambda result: self._after_commit(result, step),
                         overlap=self._overlap.plan(txn.state) if self._overlap is not None else None,
                         copies=self.policy.node_copies)

    def wait_snapshot(self) -> None:
        """Return once the save in flight has copied what it deferred (overlap_snapshot). The optimizers
        given to :meth:`save` wait by themselves; call this before anything else changes their parameters
        or the EMA, e.g. an EMA update after a step that a GradScaler skipped."""
        if self._overlap is not None:
            self._overlap.gate.wait()

    def _contents(self, txn: CheckpointTransaction) -> dict[str, Any]:
        """The anatomy: the user's entries plus what every checkpoint carries (progress, rng, metrics,
        config, taxonomy, meta). A collective (every rank's RNG)."""
        epoch, step = txn.progress["epoch"], txn.progress["step"]
        self.metrics.record(epoch, step, txn.metrics, txn.name)
        contents = dict(txn.state)
        if self.policy.weights_only:
            contents = {"model": contents["model"]}
        else:
            contents.setdefault("progress", dict(txn.progress))
            contents.setdefault("metrics", self.metrics.state_dict())
            if "rng" not in contents:
                contents["rng"] = gather_rng_states()  # collective: every rank's RNG, for exact resume
        contents["config"] = txn.state.get("config", self.config_text)
        if self.taxonomy is not None:  # weights-only files too: a transfer maps heads by these names
            contents[TAXONOMY_KEY] = self.taxonomy
            if self.taxonomy_tree is not None:
                contents[TREE_KEY] = self.taxonomy_tree
        contents["meta"] = make_meta(kind=self.kind, saver=self.name, file=txn.name, epoch=epoch, step=step,
                                     metrics=txn.metrics, extra=txn.meta_extra, **self.lineage.meta_fields())
        return contents

    def _after_commit(self, result: SaveResult, step: int) -> None:
        """Rank 0, right after each commit (on the writer thread when async): log it, run the hook,
        apply retention. Failures come out as CheckpointError saying the checkpoint is committed."""
        self.last_committed = result.path
        resumed = self.lineage.resumed
        if resumed is not None and step > resumed[1]:  # a relaunch would take this one now
            self.protect.discard(resumed[0])
            self.lineage.resumed = None
        logger.info("Saved checkpoint %s%s", result.path, "" if self._background is None else
                    " (written in the background)")
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
        """Raise :class:`CheckpointError` on every rank if a background save has failed. A collective
        in DDP (all ranks call it at the same points): one 4-byte all-reduce (tens of microseconds),
        plus a gather of the message only when a save failed. A no-op for synchronous managers."""
        if self._background is None:
            return
        self._agree(self._background.take_error(), "asynchronous save")

    def wait(self) -> None:
        """Block until the background save (if any) is committed; raise its error on every rank."""
        if self._background is not None:
            self._background.wait_idle()
        self.poll()

    def close(self) -> None:
        """Finish the save in flight and refuse further saves. Safe to call twice."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            self._release(take_error=False)

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close() if exc_type is None else self.close_after_error()

    def close_after_error(self) -> None:
        """:meth:`close` for a caller unwinding an exception, perhaps on this rank alone: finish
        this rank's save in flight (it commits, or the previous checkpoints stay) with no collective,
        and raise nothing (a failed save is logged by the writer), so the caller's exception is
        the one that propagates. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._release(take_error=True)

    def _release(self, *, take_error: bool) -> None:
        """Buffers, hooks and the lock; the background job in flight is waited for first."""
        try:
            if self._background is not None:
                self._background.release_buffers()
                if take_error:  # logged by the writer; the caller's exception is the one that propagates
                    self._background.take_error()
            if self._overlap is not None:
                self._overlap.gate.unwatch()
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

    # ------------------------------------------------------------------ retention and resume
    def apply_retention(self) -> list[Path]:
        """Delete this saver's checkpoints the policy no longer keeps; returns the deleted paths."""
        return apply_retention(self.directory, self.policy, self.checkpoints(), protect=self.protect,
                               can_delete=self.can_delete)

    def restore(self, state: Mapping[str, Any], *, path: str | Path | None = None, rng: bool = True,
                model: nn.Module | None = None, **components: Stateful | None) -> dict[str, int]:
        """Load ``state`` into ``model`` and the named components (as passed to :meth:`save`),
        whatever format and world size wrote it; take over its metric history and, for a
        checkpoint of this directory, its run id (a resumed run keeps its lineage); protect
        ``path`` from retention until a newer checkpoint commits; returns its progress."""
        source = str(path) if path is not None else f"checkpoint {state.get('meta', {}).get('file', '?')}"
        check_same_taxonomy(state, self.taxonomy, source=source)  # before anything is loaded
        progress = format_of_state(state).restore(state, model, components, rng=rng, source=source)
        self.metrics.load_state_dict(state.get("metrics") or {})
        self.lineage.origin_sha256 = str(state.get("meta", {}).get("origin_sha256") or "")  # kept; an explicit target sets its own
        if path is not None and Path(path).parent.resolve() == self.directory.resolve():
            self.protect.add(Path(path).name)  # until a newer checkpoint commits (_after_commit)
            self.lineage.resumed = (Path(path).name, progress["step"])
            self.lineage.run_id = str(state.get("meta", {}).get("run_id") or self.run_id)
            self.lineage.run_timestamp = str(state.get("meta", {}).get("run_timestamp") or self.run_timestamp)
        if path is not None and self.is_writer:  # only the writer's meta is saved
            self.lineage.parent_sha256 = parent_sha256(Path(path))
        return progress

    def resume(self, *, map_location: Any = "cpu", rng: bool = True, model: nn.Module | None = None,
               **components: Stateful | None) -> ResumeResult | None:
        """Find, verify, load and restore the newest valid checkpoint; None for a fresh start. A
        checkpoint found damaged while restoring is skipped like one found damaged before
        (:func:`~linnaeus.checkpoint.store.restore_newest`)."""
        done = restore_newest(lambda skip: self.load_resumable(map_location=map_location, skip=skip),
                              lambda found: found[0], lambda found: self.restore(
                                  found[1], path=found[0], rng=rng, model=model, **components))
        return None if done is None else ResumeResult(done[0][0], done[1], done[0][1])


__all__ = ["CheckpointManager", "CheckpointTransaction", "ResumeResult"]
