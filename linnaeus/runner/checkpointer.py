"""The runner's use of the checkpoint library: config → savers, where to resume from, when to save.

Everything checkpoint-specific (transactions, verification, retention, async writing,
uploads) lives in ``linnaeus.checkpoint``; this module only maps CHECKPOINT.*, TRAIN.RESUME,
TRAIN.AUTO_RESUME and ENV.*.BUCKET onto it, like any user of the library would.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from yacs.config import CfgNode

from linnaeus.checkpoint.manager import CheckpointManager
from linnaeus.checkpoint.policy import CheckpointPolicy, parse_interval
from linnaeus.checkpoint.remote import download_remote_latest
from linnaeus.checkpoint.resolve import resolve
from linnaeus.checkpoint.upload import BackgroundUploader
from linnaeus.dist import any_rank_true, barrier, broadcast_object, is_main_process

logger = logging.getLogger("linnaeus")


def _model_name(cfg: CfgNode) -> str:
    return cfg.MODEL.TIMM_NAME if cfg.MODEL.TYPE == "timm" else f"hybrid_{cfg.MODEL.HYBRID.CONVNEXT_VARIANT}"


def build_policy(cfg: CfgNode) -> CheckpointPolicy:
    c = cfg.CHECKPOINT
    return CheckpointPolicy(
        interval=parse_interval(c.INTERVAL), filename=c.FILENAME, mid_epoch_filename=c.MID_EPOCH_FILENAME,
        keep_last_n=c.KEEP_LAST_N, keep_best_n=c.KEEP_BEST_N, monitor=c.MONITOR, mode=c.MODE,
        async_save=c.ASYNC, weights_only=c.WEIGHTS_ONLY, save_last_only=c.SAVE_LAST_ONLY,
    )


def build_weights_policy(cfg: CfgNode) -> CheckpointPolicy:
    w = cfg.CHECKPOINT.WEIGHTS_SAVER
    return CheckpointPolicy(interval=parse_interval(w.INTERVAL), filename=w.FILENAME,
                            keep_last_n=w.KEEP_LAST_N, async_save=cfg.CHECKPOINT.ASYNC, weights_only=True)


class Checkpointer:
    """Owns the run's savers (full + optional weights-only), the uploader and the resume decision."""

    def __init__(self, cfg: CfgNode, run_dir: Path) -> None:
        self.cfg = cfg
        self.directory = run_dir / "checkpoints"
        self.uploader = None
        if cfg.ENV.OUTPUT.BUCKET.ENABLED and is_main_process():
            self.uploader = BackgroundUploader(cfg.ENV.OUTPUT.BUCKET, cfg.EXPERIMENT.NAME)
        hooks: dict[str, Any] = {}
        if self.uploader is not None:
            # Retention may only delete a local copy once its upload is confirmed.
            hooks = {"on_commit": self.uploader.on_commit, "can_delete": self.uploader.can_delete}
        common = dict(config=cfg.dump(), experiment=cfg.EXPERIMENT.NAME, model_name=_model_name(cfg), **hooks)
        self.main = CheckpointManager(self.directory, build_policy(cfg), name="checkpoint", **common)
        self.weights = None
        if cfg.CHECKPOINT.WEIGHTS_SAVER.ENABLED:
            self.weights = CheckpointManager(self.directory, build_weights_policy(cfg), name="weights",
                                             update_latest=False, **common)
        self.weights_use_ema = cfg.CHECKPOINT.WEIGHTS_SAVER.USE_EMA
        self.objects: dict[str, Any] = {}
        self.progress: Any = None
        # Runs of the same experiment share one run id across relaunches (taken from the checkpoint).
        self.run_id = broadcast_object(self.main.run_id)
        self._set_run_id(self.run_id)
        self._last_saved_step = -1

    def _set_run_id(self, run_id: str) -> None:
        self.run_id = run_id
        for m in (self.main, self.weights):
            if m is not None:
                m.run_id = run_id

    # ------------------------------------------------------------------ resume
    def find_resume_point(self) -> Path | None:
        """TRAIN.RESUME (any identifier) > newest verified local checkpoint > newest one in the bucket."""
        cfg = self.cfg
        if cfg.TRAIN.RESUME:
            return self._resolve_resume(cfg.TRAIN.RESUME)
        if not cfg.TRAIN.AUTO_RESUME:
            return None
        found = self.main.find_resumable()
        if found is None and cfg.ENV.OUTPUT.BUCKET.ENABLED:
            found = self._fetch_from_bucket()
        return found

    def _resolve_resume(self, identifier: str) -> Path:
        # A bare name is first looked up among this run's own checkpoints: that is what
        # `--opts TRAIN.RESUME checkpoint_epoch_100.pth` means to a user relaunching a run.
        own = self.directory / identifier
        if os.sep not in identifier and own.is_file():
            return own
        env = self.cfg.ENV.INPUT
        return resolve(identifier, cache_dir=os.path.expanduser(env.CACHE_DIR), bucket=env.BUCKET,
                       retries=env.DOWNLOAD_RETRIES, recursive_lookup=env.RECURSIVE_LOOKUP)

    def _fetch_from_bucket(self) -> Path | None:
        # Every process calls it: one per machine transfers, the others wait on its file lock.
        path = download_remote_latest(self.cfg.ENV.OUTPUT.BUCKET, self.cfg.EXPERIMENT.NAME, self.directory,
                                      retries=self.cfg.ENV.INPUT.DOWNLOAD_RETRIES)
        barrier()
        if path is None:
            logger.info("No checkpoint of %s in the output bucket either.", self.cfg.EXPERIMENT.NAME)
            return None
        return self.main.find_resumable()

    def attach(self, *, progress: Any, **objects: Any) -> None:
        """The live training objects that saves read from and a resume writes into."""
        self.progress = progress
        self.objects = {k: v for k, v in objects.items() if v is not None}

    def restore(self, path: Path) -> None:
        inside_run = path.parent.resolve() == self.directory.resolve()
        state = self.main.load(path, require_sidecar=inside_run)
        progress = self.main.restore(state, path=path, **self.objects)
        self.progress.load_state_dict(progress)
        meta = state.get("meta", {})
        if inside_run and meta.get("run_id"):
            self._set_run_id(str(meta["run_id"]))
        if self.weights is not None:
            self.weights.protect.add(path.name)
        self._last_saved_step = self.progress.step
        logger.info("Resumed from %s (epoch %d, step %d)", path, self.progress.epoch, self.progress.step)

    def last_metrics(self) -> dict[str, Any]:
        return dict(self.main.history[-1]) if self.main.history else {}

    # ------------------------------------------------------------------ saving
    def _save(self, manager: CheckpointManager, *, end_of_epoch: bool, metrics: dict[str, Any] | None) -> None:
        p = self.progress
        objects = dict(self.objects)
        if manager is self.weights and self.weights_use_ema and "ema" in objects:
            objects["model"] = objects["ema"].module if hasattr(objects["ema"], "module") else objects["ema"]
        manager.save(epoch=p.epoch, step=p.step, epoch_step=p.epoch_step, samples=p.samples,
                     end_of_epoch=end_of_epoch, metrics=_scalar_metrics(metrics), **objects)

    def maybe_save_step(self, progress: Any) -> None:
        """After an optimizer step: step-interval saves (never the epoch-interval ones)."""
        for manager in (self.main, self.weights):
            if manager is not None and manager.should_save(epoch=progress.epoch, step=progress.step,
                                                           end_of_epoch=False):
                self._save(manager, end_of_epoch=False, metrics=None)
                if manager is self.main:
                    self._last_saved_step = progress.step

    def maybe_save_epoch(self, progress: Any, metrics: dict[str, Any], *, is_last: bool) -> None:
        for manager in (self.main, self.weights):
            if manager is None:
                continue
            due = manager.should_save(epoch=progress.epoch, step=progress.step, end_of_epoch=True, is_last=is_last)
            if due and not (manager.policy.interval.by_steps and self._saved_at(manager, progress.step)):
                self._save(manager, end_of_epoch=True, metrics=metrics)
                if manager is self.main:
                    self._last_saved_step = progress.step

    def _saved_at(self, manager: CheckpointManager, step: int) -> bool:
        # A step-interval save that landed on the epoch's last step already holds this state.
        return manager is self.main and self._last_saved_step == step

    def save_preemption(self) -> None:
        if self._last_saved_step != self.progress.step:
            self._save(self.main, end_of_epoch=False, metrics=None)
            self._last_saved_step = self.progress.step
        self.close()

    # ------------------------------------------------------------------ coordination
    def preemption_requested(self, local_flag: bool) -> bool:
        """Ranks agree: any rank signalled → all stop after this step (a collective when enabled)."""
        if not self.cfg.CHECKPOINT.SAVE_ON_PREEMPT:
            return False
        return any_rank_true(local_flag)

    def poll(self) -> None:
        for manager in (self.main, self.weights):
            if manager is not None:
                manager.poll()
        if self.uploader is not None:
            self.uploader.poll()

    def close(self) -> None:
        """Finish saves in flight, then uploads; raises what failed (on every rank for saves)."""
        for manager in (self.main, self.weights):
            if manager is not None:
                manager.close()
        if self.uploader is not None:
            logger.info("Waiting for uploads to %s to finish ...", self.uploader.display)
            self.uploader.close()
            self.uploader = None


def _scalar_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    if not metrics:
        return {}
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step")}


__all__ = ["Checkpointer", "build_policy", "build_weights_policy"]
