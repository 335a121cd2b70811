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

from linnaeus.checkpoint.errors import CheckpointError, CheckpointIncompatibleError, CheckpointNotFoundError
from linnaeus.checkpoint.manager import CheckpointManager
from linnaeus.checkpoint.policy import CheckpointPolicy, parse_interval
from linnaeus.checkpoint.remote import download_remote_latest, run_folder
from linnaeus.checkpoint.resolve import resolve
from linnaeus.checkpoint.sources import DownloadOptions, RcloneSource, download, is_uri
from linnaeus.checkpoint.state import KIND_FULL, KIND_WEIGHTS
from linnaeus.checkpoint.store import read_info, read_latest
from linnaeus.checkpoint.upload import BackgroundUploader, UploadError
from linnaeus.config import config_yaml
from linnaeus.dist import all_gather_object, any_rank_true, barrier, broadcast_object, is_main_process

logger = logging.getLogger("linnaeus")

# While rank 0 waits for its uploads at the end of a run, the other ranks wait for its verdict in
# collectives of at most this long, so that no single collective can outlast the process group's
# timeout however long a large upload takes.
_UPLOAD_WAIT_SLICE_S = 30.0

# A checkpoint as the resume decision hands it over: loaded (and hashed) once, restored later.
Loaded = tuple[Path, dict[str, Any]]


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
        common = dict(config=config_yaml(cfg), experiment=cfg.EXPERIMENT.NAME, model_name=_model_name(cfg))
        self.main = CheckpointManager(self.directory, build_policy(cfg), name="checkpoint",
                                      **common, **self._upload_hooks(full=not cfg.CHECKPOINT.WEIGHTS_ONLY))
        self.weights = None
        if cfg.CHECKPOINT.WEIGHTS_SAVER.ENABLED:
            self.weights = CheckpointManager(self.directory, build_weights_policy(cfg), name="weights",
                                             update_latest=False, **common, **self._upload_hooks(full=False))
        self.weights_use_ema = cfg.CHECKPOINT.WEIGHTS_SAVER.USE_EMA
        self.objects: dict[str, Any] = {}
        self.progress: Any = None
        # Runs of the same experiment share one run id across relaunches (taken from the checkpoint).
        self.run_id = broadcast_object(self.main.run_id)
        self._set_run_id(self.run_id)
        # Per saver (by name): the step of its last save, so that no saver saves twice at one step.
        self._saved_step: dict[str, int] = {}
        self._loaded: Loaded | None = None
        self._closed = False
        if cfg.CHECKPOINT.WEIGHTS_ONLY and is_main_process():
            logger.warning(
                "CHECKPOINT.WEIGHTS_ONLY is True: the main saver writes model weights only, without the "
                "optimizer, scheduler, sampler and RNG state, so this run cannot be resumed exactly: a relaunch "
                "with TRAIN.AUTO_RESUME stops with an error instead of continuing. For weights-only copies next to "
                "resumable full checkpoints, use CHECKPOINT.WEIGHTS_SAVER.ENABLED True with "
                "CHECKPOINT.WEIGHTS_ONLY False."
            )

    def _upload_hooks(self, *, full: bool) -> dict[str, Any]:
        if self.uploader is None:
            return {}
        uploader = self.uploader

        def on_commit(path: Path) -> None:
            uploader.on_commit(path, full=full)

        # Retention may only delete a local copy once its upload is confirmed.
        return {"on_commit": on_commit, "can_delete": uploader.can_delete}

    def _savers(self) -> list[CheckpointManager]:
        return [m for m in (self.main, self.weights) if m is not None]

    def _set_run_id(self, run_id: str) -> None:
        self.run_id = run_id
        for m in (self.main, self.weights):
            if m is not None:
                m.run_id = run_id

    # ------------------------------------------------------------------ resume
    def find_resume_point(self) -> Path | None:
        """Where this run continues from (None: a fresh start); every rank gets the same answer.

        TRAIN.RESUME (unless this run, locally or in its output bucket, has already gone past it:
        see ``_newer_own_checkpoint``) >
        newest verified local checkpoint > newest one in the output bucket. The chosen file is
        read and hashed once, here; :meth:`restore` applies that state. Then (rank 0) the
        checkpoints already on disk are handed to the uploader.
        """
        self._loaded = self._choose_resume_point()
        self._enqueue_earlier_commits()
        return self._loaded[0] if self._loaded is not None else None

    def _choose_resume_point(self) -> Loaded | None:
        cfg = self.cfg
        if cfg.TRAIN.RESUME:
            target = self._resolve_resume(cfg.TRAIN.RESUME)
            # TRAIN.AUTO_RESUME False is the documented way to not continue this run's own checkpoints.
            newer = self._newer_own_checkpoint(target) if cfg.TRAIN.AUTO_RESUME else None
            return newer if newer is not None else (target, self._load(target))
        if not cfg.TRAIN.AUTO_RESUME:
            return None
        found = self.main.load_resumable()  # verify and load in one read of the file
        if found is None and cfg.ENV.OUTPUT.BUCKET.ENABLED:
            found = self._fetch_from_bucket()
        if found is None:
            self._refuse_weights_only_restart()
        return found

    def _resolve_resume(self, identifier: str) -> Path:
        """TRAIN.RESUME → local file; raises on every rank if it fails on any."""
        path, error = None, None
        try:
            path = self._locate(identifier)
        except (CheckpointError, ValueError, OSError) as e:
            error = e
        _raise_on_all_ranks(error, f"resolving TRAIN.RESUME {identifier!r}")
        assert path is not None
        return path

    def _locate(self, identifier: str) -> Path:
        # A bare name is first looked up among this run's own checkpoints, locally and then in the
        # run's folder of the output bucket: that is what `--opts TRAIN.RESUME checkpoint_epoch_100.pth`
        # means to a user relaunching a run, also on a fresh machine.
        looked: list[str] = []
        if _is_bare_name(identifier):
            own = self.directory / identifier
            if own.is_file():
                return own
            looked.append(f"{own} (this run's checkpoints)")
            if self.cfg.ENV.OUTPUT.BUCKET.ENABLED:
                fetched, place = self._fetch_named_from_bucket(identifier)
                if fetched is not None:
                    return fetched
                looked.append(place)
            else:
                looked.append("this run's folder in ENV.OUTPUT.BUCKET: not searched "
                              "(ENV.OUTPUT.BUCKET.ENABLED is False)")
        env = self.cfg.ENV.INPUT
        try:
            return resolve(identifier, cache_dir=os.path.expanduser(env.CACHE_DIR), bucket=env.BUCKET,
                           retries=env.DOWNLOAD_RETRIES, recursive_lookup=env.RECURSIVE_LOOKUP)
        except CheckpointNotFoundError as e:
            if not looked:
                raise
            places = "\n".join(f"  - {p}" for p in looked)
            raise CheckpointNotFoundError(
                f"TRAIN.RESUME {identifier!r} not found. Looked first in this run's own places:\n{places}\n"
                f"then resolved it as an identifier: {e}"
            ) from None

    def _fetch_named_from_bucket(self, name: str) -> tuple[Path | None, str]:
        """Download ``name`` from the run's folder in ENV.OUTPUT.BUCKET into the checkpoints dir
        (verified against its remote .sha256; one transfer per machine). (None, place) if absent."""
        source = RcloneSource(run_folder(self.cfg.ENV.OUTPUT.BUCKET, self.cfg.EXPERIMENT.NAME) + name)
        try:
            path = download(source, self.directory / name, DownloadOptions(retries=self.cfg.ENV.INPUT.DOWNLOAD_RETRIES))
        except CheckpointNotFoundError:
            return None, f"{source.display} (this run's folder in ENV.OUTPUT.BUCKET)"
        logger.info("Fetched %s from this run's folder in the output bucket -> %s", source.display, path)
        return path, ""

    def _newer_own_checkpoint(self, target: Path) -> Loaded | None:
        """The relaunch contract: once this run has saved past its TRAIN.RESUME target, a relaunch
        with the same command continues from the run's newest checkpoint instead of repeating work.

        "This run's checkpoints" are the local ones and, with ENV.OUTPUT.BUCKET, those in its bucket
        folder: a relaunch on a fresh machine has only the latter.
        """
        target_step = None
        if is_main_process():
            # Metadata only (no tensor data is read). A target that cannot be read here is not
            # compared: _load then fails on it with the full reason, on every rank.
            try:
                info = read_info(target)
            except OSError:
                info = None
            if info is not None and info.readable:
                target_step = info.step
        target_step = broadcast_object(target_step)
        if target_step is None:
            return None
        newer_exists = self._own_checkpoint_after(target_step)
        if not newer_exists and self.cfg.ENV.OUTPUT.BUCKET.ENABLED:
            self._download_bucket_latest()
            newer_exists = self._own_checkpoint_after(target_step)
        if not newer_exists:
            return None
        found = self.main.load_resumable()
        if found is None or int(found[1]["progress"]["step"]) <= target_step:
            return None  # the newer ones failed verification (each was logged): TRAIN.RESUME it is
        path, step = found[0], int(found[1]["progress"]["step"])
        identifier = self.cfg.TRAIN.RESUME
        logger.warning(
            "TRAIN.RESUME %s (step %d) is older than this run's newest checkpoint %s (step %d): continuing from %s "
            "(relaunch). To restart from %s, set TRAIN.AUTO_RESUME False, use a new EXPERIMENT.NAME or remove the "
            "newer checkpoints.", identifier, target_step, path, step, path, identifier)
        return found

    def _own_checkpoint_after(self, step: int) -> bool:
        """Whether this run's checkpoint dir holds a full checkpoint past ``step`` (same answer on every rank)."""
        newer = is_main_process() and any(i.kind == KIND_FULL and i.step > step for i in self.main.checkpoints())
        return bool(broadcast_object(newer))

    def _load(self, path: Path) -> dict[str, Any]:
        """Verify and load ``path`` (one read); raises on every rank if it fails on any."""
        inside_run = path.parent.resolve() == self.directory.resolve()
        state, error = None, None
        try:
            state = self.main.load(path, require_sidecar=inside_run)
        except (CheckpointError, OSError) as e:
            error = e
        _raise_on_all_ranks(error, f"loading {path}")
        assert state is not None
        return state

    def _fetch_from_bucket(self) -> Loaded | None:
        if not self._download_bucket_latest():
            logger.info("No checkpoint of %s in the output bucket either.", self.cfg.EXPERIMENT.NAME)
            return None
        return self.main.load_resumable()

    def _download_bucket_latest(self) -> bool:
        """Download the run's newest committed checkpoint in ENV.OUTPUT.BUCKET into the checkpoints dir;
        False if the bucket has none. Every process calls it: one per machine transfers, the others
        wait on its file lock."""
        path, error = None, None
        try:
            path = download_remote_latest(self.cfg.ENV.OUTPUT.BUCKET, self.cfg.EXPERIMENT.NAME, self.directory,
                                          retries=self.cfg.ENV.INPUT.DOWNLOAD_RETRIES)
        except (CheckpointError, ValueError, OSError) as e:
            error = e
        _raise_on_all_ranks(error, "fetching this run's newest checkpoint from ENV.OUTPUT.BUCKET")
        barrier()
        return bool(broadcast_object(path is not None))

    def _refuse_weights_only_restart(self) -> None:
        """No full checkpoint to resume from, but weights-only ones of this run: starting fresh would
        silently repeat the work and then overwrite or retain them away, so stop and say why."""
        found: list[tuple[str, int]] = []
        if is_main_process():
            found = [(i.name, i.step) for i in self.main.checkpoints() if i.kind == KIND_WEIGHTS]
        found = broadcast_object(found)
        if not found:
            return
        newest, step = found[-1]
        shown = ", ".join(n for n, _ in found[-5:]) + (f" and {len(found) - 5} older" if len(found) > 5 else "")
        raise CheckpointIncompatibleError(
            f"cannot resume this run: {self.directory} holds {len(found)} weights-only checkpoint(s) of its main "
            f"saver ({shown}; newest {newest} at step {step}) but no full checkpoint. Weights-only files (written with "
            "CHECKPOINT.WEIGHTS_ONLY True) lack the optimizer, scheduler, sampler and RNG state needed to continue, "
            "and starting fresh would overwrite them. Choose one:\n"
            "  - start over from scratch: set TRAIN.AUTO_RESUME False (new saves overwrite files of the same name);\n"
            f"  - start from these weights: MODEL.PRETRAINED {self.directory / newest} with a new EXPERIMENT.NAME;\n"
            "  - make runs resumable: CHECKPOINT.WEIGHTS_ONLY False, and CHECKPOINT.WEIGHTS_SAVER.ENABLED True "
            "for weights-only copies next to the full checkpoints."
        )

    def _enqueue_earlier_commits(self) -> None:
        """Rank 0, after a relaunch: queue every committed checkpoint already on disk, oldest first.

        A checkpoint whose upload had not finished when the last launch died gets uploaded; one
        already remote is only confirmed (not re-sent). Confirmation lives in the uploader's memory,
        so without this, retention could never delete files of earlier launches.
        """
        if self.uploader is None:
            return
        latest = read_latest(self.directory)
        infos = [i for m in self._savers() for i in m.checkpoints()]
        # The remote ``latest`` follows the local one once its file is confirmed; queue that file last.
        infos.sort(key=lambda i: (i.order_key, i.kind == KIND_FULL, i.name == latest))
        for info in infos:
            self.uploader.on_commit(info.path, full=info.kind == KIND_FULL)
        if infos:
            logger.info("Queued %d checkpoint(s) already in %s for upload to %s (those already there are only "
                        "confirmed)", len(infos), self.directory, self.uploader.display)

    def attach(self, *, progress: Any, **objects: Any) -> None:
        """The live training objects that saves read from and a resume writes into."""
        self.progress = progress
        self.objects = {k: v for k, v in objects.items() if v is not None}

    def restore(self, path: Path) -> None:
        """Load the checkpoint at ``path`` into the attached objects (the state find_resume_point read)."""
        loaded, self._loaded = self._loaded, None  # needed once; don't keep a second copy of the model alive
        state = loaded[1] if loaded is not None and loaded[0] == path else self._load(path)
        inside_run = path.parent.resolve() == self.directory.resolve()
        progress = self.main.restore(state, path=path, **self.objects)
        self.progress.load_state_dict(progress)
        meta = state.get("meta", {})
        if inside_run and meta.get("run_id"):
            self._set_run_id(str(meta["run_id"]))
        if self.weights is not None:
            self.weights.protect.add(path.name)
        self._saved_step[self.main.name] = self.progress.step
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
        self._saved_step[manager.name] = p.step

    def maybe_save_step(self, progress: Any) -> None:
        """After an optimizer step: step-interval saves (never the epoch-interval ones)."""
        for manager in self._savers():
            if manager.should_save(epoch=progress.epoch, step=progress.step, end_of_epoch=False):
                self._save(manager, end_of_epoch=False, metrics=None)

    def maybe_save_epoch(self, progress: Any, metrics: dict[str, Any], *, is_last: bool) -> None:
        for manager in self._savers():
            due = manager.should_save(epoch=progress.epoch, step=progress.step, end_of_epoch=True, is_last=is_last)
            if due and not (manager.policy.interval.by_steps and self._saved_at(manager, progress.step)):
                self._save(manager, end_of_epoch=True, metrics=metrics)

    def _saved_at(self, manager: CheckpointManager, step: int) -> bool:
        # A step-interval save of this saver that landed on the epoch's last step already holds this
        # state under the same file name: saving again would only rewrite it.
        return self._saved_step.get(manager.name) == step

    def save_preemption(self) -> None:
        if not self._saved_at(self.main, self.progress.step):
            self._save(self.main, end_of_epoch=False, metrics=None)
        self.close()

    # ------------------------------------------------------------------ coordination
    def preemption_requested(self, local_flag: bool) -> bool:
        """Ranks agree: any rank signalled → all stop after this step (a collective when enabled)."""
        if not self.cfg.CHECKPOINT.SAVE_ON_PREEMPT:
            return False
        return any_rank_true(local_flag)

    def poll(self) -> None:
        """Raise a failed background save or upload on every rank (collectives: call on all ranks)."""
        for manager in self._savers():
            manager.poll()
        if self.cfg.ENV.OUTPUT.BUCKET.ENABLED:  # the same on every rank, so all of them join the collective
            error = None
            if self.uploader is not None:
                try:
                    self.uploader.poll()
                except UploadError as e:
                    error = e
            # Only rank 0 uploads: raising there alone would leave the other ranks waiting in the
            # next step's collective until the process group times out.
            _raise_on_all_ranks(error, "checkpoint upload", UploadError)

    def close(self) -> None:
        """Finish saves in flight, then uploads; raises what failed on every rank. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for manager in self._savers():
            manager.close()
        if self.cfg.ENV.OUTPUT.BUCKET.ENABLED:
            self._finish_uploads()

    def _finish_uploads(self) -> None:
        uploader, self.uploader = self.uploader, None
        if uploader is not None:
            logger.info("Waiting for uploads to %s to finish ...", uploader.display)
        # Rank 0 waits in slices, meeting the other ranks in between (see _UPLOAD_WAIT_SLICE_S).
        while any_rank_true(uploader is not None and not uploader.wait(timeout=_UPLOAD_WAIT_SLICE_S)):
            pass
        error = None
        if uploader is not None:
            try:
                uploader.close()
                # Files that retention kept only because their upload was not confirmed yet (this
                # launch's last ones, earlier launches' ones) may go now, not at the next launch.
                for manager in self._savers():
                    manager.apply_retention()
            except (CheckpointError, OSError) as e:
                error = e
        _raise_on_all_ranks(error, "checkpoint upload", UploadError)


def _is_bare_name(identifier: str) -> bool:
    """A plain file name (no directory, not a URI or rclone path, not ``~``-relative)."""
    return (bool(identifier) and "/" not in identifier and os.sep not in identifier and not is_uri(identifier)
            and identifier not in (".", "..") and not identifier.startswith("~"))


def _raise_on_all_ranks(error: BaseException | None, what: str,
                        error_type: type[CheckpointError] = CheckpointError) -> None:
    """Raise on every rank when ``error`` is set on any (collectives: call on all ranks).

    A rank that raised alone would leave the others waiting in their next collective until the
    process group times out; here the others raise ``error_type`` carrying the failed ranks' messages.
    """
    if not any_rank_true(error is not None):
        return
    messages = all_gather_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    detail = "\n".join(f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None)
    raise error_type(f"{what} failed on another rank:\n{detail}")


def _scalar_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    if not metrics:
        return {}
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step")}


__all__ = ["Checkpointer", "build_policy", "build_weights_policy"]
