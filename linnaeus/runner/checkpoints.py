"""The run's checkpoints as the config asks for them: which savers, where to resume, when to save.

Every decision about checkpoints is the library's (``linnaeus.checkpoint``): where to resume
from (:func:`~linnaeus.checkpoint.resume.find_resume_point`), what a save writes, retention,
upload order. This module maps CHECKPOINT.*, TRAIN.RESUME / TRAIN.AUTO_RESUME and
ENV.*.BUCKET onto it, tells the savers when the training loop is at a save point, and puts
the config keys into the library's errors, so the user reads the names they can change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from yacs.config import CfgNode

from linnaeus.checkpoint import CheckpointManager
from linnaeus.checkpoint.disk import WriterLease, acquire_on_writer_rank
from linnaeus.checkpoint.errors import CheckpointIncompatibleError, DirectoryLockedError
from linnaeus.checkpoint.remote import BackgroundUploader
from linnaeus.checkpoint.replicas import Replicator
from linnaeus.checkpoint.resume import ResumePoint, start_timeline
from linnaeus.checkpoint.state import TaxonomyChangedError
from linnaeus.checkpoint.store import restore_newest
from linnaeus.config import build_policy, build_weights_policy, checkpoint_dir, config_yaml
from linnaeus.config.parallel import sharded_checkpoints
from linnaeus.dist import get_world_size, is_main_process
from linnaeus.engine.run_log import EVERY_RANK
from linnaeus.runner import config_diff
from linnaeus.runner.clock import TrainingClock
from linnaeus.runner.node_local import set_up_node_local
from linnaeus.runner.resume_choice import choose_resume_point
from linnaeus.runner.taxonomy_record import taxonomy_levels, taxonomy_parents
from linnaeus.runner.uploads import RunUploads

logger = logging.getLogger("linnaeus")

# Components that older checkpoints lack: restoring one of those starts them fresh, and says so.
_NEWER_COMPONENTS = {"clock": "records no training time (saved by an older linnaeus): it counts from here",
                     "healing": "records no self-healing state (saved by an older linnaeus): it starts empty"}

class RunCheckpoints:
    """The run's savers (full + optional weights-only), its uploader, and its save schedule."""

    def __init__(self, cfg: CfgNode, run_dir: Path) -> None:
        self.cfg = cfg
        self.directory = checkpoint_dir(cfg)  # CHECKPOINT.LOCAL_DIR, else the run dir's checkpoints/
        self.replicas: Replicator | None = None  # set once the savers exist
        self._node_lock: WriterLease | None = None
        self._lock = self._lock_directory()  # held until close(); the savers share it
        self.uploads = RunUploads(cfg, run_dir)  # the bucket folder's lease first: a second live run stops
        self.remote = self.uploads.remote
        model_name = cfg.MODEL.TIMM_NAME if cfg.MODEL.TYPE == "timm" else f"hybrid_{cfg.MODEL.HYBRID.CONVNEXT_VARIANT}"
        common = dict(config=config_yaml(cfg), experiment=cfg.EXPERIMENT.NAME, model_name=model_name,
                      name_fields={"dataset": cfg.DATA.DATASET, "n_epochs": cfg.TRAIN.EPOCHS})
        full = not cfg.CHECKPOINT.WEIGHTS_ONLY
        self.main = CheckpointManager(self.directory, build_policy(cfg), name="checkpoint", **common,
                                      sharded=sharded_checkpoints(cfg),
                                      **self._hooks("checkpoint", full=full, main=True))
        self.weights = None
        if cfg.CHECKPOINT.WEIGHTS_SAVER.ENABLED:
            self.weights = CheckpointManager(self.directory, build_weights_policy(cfg), name="weights",
                                             update_latest=False, **common,
                                             **self._hooks("weights", full=False, main=False))
            self.weights.follow(self.main)  # one lineage for both savers
        # Node-local directories: copies of each checkpoint on other nodes, each node's directory lock, and
        # (sharded, with a bucket) the uploader of this node's parts, where rank 0's uploader is not.
        self.replicas, self._node_lock, parts = set_up_node_local(
            cfg, self.directory, self.main.format.name, {m.name: m.apply_retention for m in self._savers()},
            self.remote, **self.uploads.options)
        self.uploads.add_parts(parts)
        self.objects: dict[str, Any] = {}
        self.progress: Any = None
        # Per saver (by name): the step of its last save, so that no saver saves twice at one step.
        self._saved_step: dict[str, int] = {}
        # Called right before every save (main.py: the TensorBoard writer's flush, so the events a
        # resume from this checkpoint keeps are on disk before the checkpoint is).
        self.before_save: list[Callable[[], None]] = []
        self._closed = False
        if cfg.CHECKPOINT.WEIGHTS_ONLY and is_main_process():
            logger.warning(
                "CHECKPOINT.WEIGHTS_ONLY is True: the main saver writes model weights only, without the "
                "optimizer, scheduler, sampler and RNG state, so this run cannot be resumed exactly: a relaunch "
                "with TRAIN.AUTO_RESUME stops with an error instead of continuing. For weights-only copies next to "
                "resumable full checkpoints, use CHECKPOINT.WEIGHTS_SAVER.ENABLED True with "
                "CHECKPOINT.WEIGHTS_ONLY False."
            )

    def _lock_directory(self) -> WriterLease | None:
        """One writer per run dir: a second launch stops here, on every rank, naming the first."""
        try:
            return acquire_on_writer_rank(self.directory)
        except DirectoryLockedError as e:
            raise DirectoryLockedError(f"{e} To run both, give this launch its own run dir: another "
                                       "EXPERIMENT.NAME or ENV.OUTPUT.BASE_DIR.") from e

    def _hooks(self, saver: str, *, full: bool, main: bool) -> dict[str, Any]:
        """A saver's hooks (rank 0): each commit is queued for upload (:mod:`.uploads`) and for the copies
        on other nodes; retention may only delete a local copy once its upload is confirmed."""

        def copy(path: Path) -> None:
            if self.replicas is not None:
                self.replicas.on_commit(path, saver=saver, update_latest=full)

        return self.uploads.hooks(saver, full=full, main=main, also=copy)

    @property
    def uploader(self) -> BackgroundUploader | None:
        return self.uploads.uploader

    def _savers(self) -> list[CheckpointManager]:
        return [m for m in (self.main, self.weights) if m is not None]

    @property
    def run_id(self) -> str:
        return self.main.run_id

    # ------------------------------------------------------------------ resume
    def find_resume_point(self, skip: Collection[str] = ()) -> ResumePoint | None:
        """The library's answer for this config (the same on every rank), its errors in config keys
        (:mod:`.resume_choice`). It moves nothing: :meth:`begin` does, once the point is restored.
        ``skip``: own checkpoints found damaged while restoring."""
        return choose_resume_point(self.cfg, self.main, self.remote, skip)

    def attach(self, *, progress: Any, taxonomy: Any = None, **objects: Any) -> None:
        """The live training objects that saves read from and a resume writes into; the data's
        ``taxonomy`` is recorded in every checkpoint and a resume refuses a different one."""
        self.progress = progress
        self.clock = TrainingClock()  # saved as the component "clock": training time survives a relaunch
        self.objects = {**{k: v for k, v in objects.items() if v is not None}, "clock": self.clock}
        record, tree = taxonomy_levels(taxonomy), taxonomy_parents(taxonomy)
        # Then rank 0's clock decides, on every rank: a saver's interval or the uploads' counts training time.
        self._timed = any(m.policy.interval.by_time for m in self._savers()) or self.uploads.timed
        for manager in self._savers():
            manager.taxonomy, manager.taxonomy_tree = record, tree

    def begin(self, point: ResumePoint | None) -> None:
        """Resume ``point`` (from :meth:`find_resume_point`) or start fresh. Every refusal comes first
        (:meth:`restore`); only then does anything move: a restart sets the abandoned timeline aside, and
        (rank 0) the checkpoints already on disk are queued for upload, so a relaunch finishes what the
        last launch did not."""
        if point is not None:
            point = self._restore_newest(point)
        else:
            logger.info("No checkpoint to resume from: starting fresh (run id %s)", self.run_id)
        start_timeline(self.main, point, remote=self.remote)
        self.clock.start()
        p = self.progress
        self.uploads.begin(self.directory, skip=point.partial if point is not None else (), epoch=p.epoch, step=p.step,
                           elapsed_ms=self.clock.now_ms)

    def _restore_newest(self, point: ResumePoint) -> ResumePoint:
        """Restore ``point``. When the run chose it (not TRAIN.RESUME) and it turns out damaged while
        restoring (a sharded checkpoint's shards are hashed as they are read), the next older one is
        chosen and restored instead, as a file found damaged before the choice would have been."""
        if point.source == "explicit":
            self.restore(point)
            return point
        first = [point]
        done = restore_newest(lambda skip: first.pop() if first else self.find_resume_point(skip),
                              lambda p: p.path, self.restore)
        assert done is not None, "the first choice is a point, and a failure with nothing older raises"
        return done[0]

    def restore(self, point: ResumePoint, *, verb: str = "Resumed from") -> None:
        """Load ``point`` (read once by :meth:`find_resume_point`) into the attached objects.

        First the checkpoint's config is compared with this one (:mod:`.config_diff`): refused
        changes stop here, before anything is loaded; optimizer hyperparameters are re-applied
        after the optimizer's saved state."""
        changes = []
        if point.state.get("config"):
            changes = config_diff.config_changes(point.state["config"], config_yaml(self.cfg),
                                                 saved_world_size=point.state.get("meta", {}).get("world_size"),
                                                 world_size=get_world_size())
            config_diff.refuse(changes, point.path)
        fresh = config_diff.optimizer_hyperparameters(self.objects.get("optimizer"))
        started = config_diff.fresh_components(changes) & set(self.objects)  # turned on: nothing saved to restore
        for name in _NEWER_COMPONENTS.keys() & self.objects.keys() - point.state.keys():
            started.add(name)
            logger.info("%s %s", point.path, _NEWER_COMPONENTS[name])
        restored = {k: v for k, v in self.objects.items() if k not in started}
        try:
            self.progress.load_state_dict(self.main.restore(point.state, path=point.path, **restored))
        except TaxonomyChangedError as e:
            raise CheckpointIncompatibleError(
                f"{e} In the config: the dataset of the checkpoint's run (DATA.*), or a new EXPERIMENT.NAME with "
                f"MODEL.PRETRAINED {point.path} and MODEL.PRETRAINED_STRATEGY transfer.", path=point.path) from e
        if "ema" in started:
            self.objects["ema"].set(self.objects["model"])
            logger.info("TRAIN.EMA.ENABLED turned on: the EMA starts from the resumed weights")
        if "scaler" in started:
            logger.info("TRAIN.AMP turned on: the GradScaler starts at its default scale")
        config_diff.reapply(changes, self.objects.get("optimizer"), fresh)
        if is_main_process():
            config_diff.log_changes(changes, point.path)
        self._saved_step[self.main.name] = self.progress.step
        point.state = {}  # needed once; don't keep a second copy of the model alive
        logger.info("%s %s (epoch %d, step %d)%s", verb, point.path, self.progress.epoch, self.progress.step,
                    f"; {point.tier}" if point.tier else "", extra=EVERY_RANK)

    def roll_back(self) -> ResumePoint | None:
        """Restore the run's newest committed checkpoint into the live objects, mid-run (every rank; a
        collective), verified as at a resume; None when the run has none. Saves in flight commit first."""
        for manager in self._savers():
            manager.wait()

        def newest(skip: frozenset[str]) -> ResumePoint | None:
            found = self.main.load_resumable(skip=skip)
            return None if found is None else ResumePoint(found[0], found[1], "run")

        done = restore_newest(newest, lambda p: p.path, lambda p: self.restore(p, verb="Rolled back to"))
        self.clock.start()  # the time of the steps rolled back is not training time, as a killed launch's is not
        return None if done is None else done[0]

    def last_metrics(self) -> dict[str, Any]:
        return dict(self.main.history[-1]) if self.main.history else {}

    # ------------------------------------------------------------------ saving
    def _save(self, manager: CheckpointManager, *, end_of_epoch: bool, metrics: dict[str, Any] | None) -> None:
        # The save in flight commits first (the new one would wait for it inside save()), so that the
        # hooks decide at the moment the new save starts: a launcher that died meanwhile stops it.
        manager.wait()
        for hook in self.before_save:
            hook()
        p, objects = self.progress, dict(self.objects)
        if manager is self.main:
            self.uploads.before_save(epoch=p.epoch, step=p.step, end_of_epoch=end_of_epoch,
                                     elapsed_ms=self.clock.now_ms)
        if manager is self.weights and self.cfg.CHECKPOINT.WEIGHTS_SAVER.USE_EMA and "ema" in objects:
            objects["model"] = getattr(objects["ema"], "module", objects["ema"])
        manager.save(epoch=p.epoch, step=p.step, epoch_step=p.epoch_step, samples=p.samples,
                     end_of_epoch=end_of_epoch, metrics=_scalar_metrics(metrics), **objects)
        self._saved_step[manager.name] = p.step

    def maybe_save_step(self, progress: Any) -> None:
        """After an optimizer step: step-interval saves (never the epoch-interval ones)."""
        for manager in self._savers():
            if manager.should_save(epoch=progress.epoch, step=progress.step, end_of_epoch=False,
                                   elapsed_ms=self.clock.elapsed_ms):
                self._save(manager, end_of_epoch=False, metrics=None)

    def maybe_save_epoch(self, progress: Any, metrics: dict[str, Any], *, is_last: bool) -> None:
        for manager in self._savers():
            due = manager.should_save(epoch=progress.epoch, step=progress.step, end_of_epoch=True, is_last=is_last)
            # A step-interval save that landed on the epoch's last step already holds this state.
            if due and not (manager.policy.interval.by_steps and self._saved_at(manager, progress.step)):
                self._save(manager, end_of_epoch=True, metrics=metrics)

    def _saved_at(self, manager: CheckpointManager, step: int) -> bool:
        return self._saved_step.get(manager.name) == step

    def save_preemption(self) -> None:
        if not self._saved_at(self.main, self.progress.step):
            self._save(self.main, end_of_epoch=False, metrics=None)
        self.close()

    # ------------------------------------------------------------------ coordination
    def step_boundary(self, signalled: bool, deadline: Any,
                      health: torch.Tensor | None = None) -> tuple[bool, list[float]]:
        """After each optimizer step: stop if any rank was signalled or is past its deadline; rank 0's
        clock; the ranks' mean of the step's ``health`` (loss, gradient norm), in the same all-reduce."""
        preempt = self.cfg.CHECKPOINT.SAVE_ON_PREEMPT
        return self.clock.step_boundary((signalled and preempt) or deadline.reached(), means=health,
                                        collective=preempt or deadline.active or self._timed or health is not None)

    def wait_snapshot(self) -> None:
        """Before the trainer changes what a save may still be copying (CHECKPOINT.ASYNC_OVERLAP): the
        optimizer's step waits by itself, but an EMA update after a step the GradScaler skipped does not."""
        for manager in self._savers():
            manager.wait_snapshot()

    def poll(self) -> None:
        """Raise a failed background save or upload on every rank (collectives: call on all ranks)."""
        for manager in self._savers():
            manager.poll()
        if self.replicas is not None:  # the same on every rank, as below
            self.replicas.poll()
        self.uploads.poll()  # the same on every rank, so all of them join the collective

    def close(self) -> None:
        """Finish saves in flight, then uploads; raises what failed on every rank. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for manager in self._savers():
            manager.close()
        if self.replicas is not None:
            self.replicas.close()  # every commit is queued by now: the last checkpoint's copies are made
        # Files that retention kept only because their upload was not confirmed yet (this launch's last
        # ones, earlier launches' ones) may go now, not at the next launch.
        self.uploads.close(then=lambda: [m.apply_retention() for m in self._savers()] if is_main_process() else None)
        self._release()

    def _release(self) -> None:
        """The bucket folder's lease (once nothing more is uploaded), then the directory's lock."""
        self.uploads.release_lease()
        for lock in (self._lock, self._node_lock):
            if lock is not None:
                lock.release()

    def close_after_error(self) -> None:
        """:meth:`close` while the run unwinds an exception (perhaps on this rank alone): this rank's
        saves in flight commit, then its uploads of committed checkpoints finish (up to
        :data:`UPLOAD_WAIT_AFTER_ERROR_S`), holding the writer lock; no collective runs and nothing
        is raised, so the run's own error propagates. An upload that fails is logged."""
        if self._closed:
            return
        self._closed = True
        try:
            for manager in self._savers():
                manager.close_after_error()
            if self.replicas is not None:
                self.replicas.abandon()
            self.uploads.close_after_error()
        finally:
            self._release()


def _scalar_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step")}


__all__ = ["RunCheckpoints"]
