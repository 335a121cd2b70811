"""The training loop: one epoch (or the rest of one) of accumulated, clipped, mixed-precision steps.

Resumability is the design constraint. The loop consumes no random numbers of its own (only
the model's dropout / drop-path draw from the RNG), reports every micro-batch to the sampler
(``advance``) so the sampler's state is the exact data position, and calls ``on_step_end``
after every optimizer step, where the runner saves checkpoints and checks for preemption.
A run stopped there and resumed from the saved state (model, optimizer, scheduler, scaler,
EMA, sampler, RNG, :class:`Progress`) produces bit-identical weights on CPU.

The hot loop holds no host syncs: losses accumulate as device tensors and are read
(``.tolist()``) only every ``log_interval`` steps and at the end of the epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from linnaeus.dist import get_rank
from linnaeus.engine.amp import autocast_factory
from linnaeus.engine.loss import MultiLevelLoss
from linnaeus.engine.metrics import RunningSums
from linnaeus.engine.parallel import gradient_sync, grad_norm_value
from linnaeus.engine.progress import Progress, steps_per_epoch
from linnaeus.engine.progress_bar import ProgressDisplay, epoch_progress
from linnaeus.engine.run_log import NullWriter

OnStepEnd = Callable[["Progress"], bool]


class Trainer:
    """Runs training epochs over ``train_loader`` for ``model``.

    Args:
        model: the bare module (EMA and clipping use its parameters).
        ddp_model: the module the forward goes through: ``DistributedDataParallel(model)`` or
            ``model`` itself in one process. Gradients sync only on the last micro-batch of
            each accumulation group (``no_sync`` on the others).
        optimizer, scheduler: ``engine.optim.StepwiseScheduler`` (or None), set before every update
            from the epoch's progress (``step_within_epoch``, see :meth:`_lr_clock`).
        loss_fn: ``MultiLevelLoss`` (or anything returning ``(total, {level: loss})``).
        train_loader: yields ``(images, labels[B, num_levels])``; already positioned by the
            caller through ``train_sampler`` (``set_epoch`` / ``load_state_dict``).
        train_sampler: told ``advance(batch_size)`` after every micro-batch; its ``consumed`` (global
            samples used in the epoch) places the LR schedule within the epoch.
        device: where batches go.
        accum_steps: micro-batches per optimizer step.
        clip_grad: max global gradient norm (0 = off).
        amp: autocast with ``engine.amp``'s dtype for ``device``; ignored when ``autocast`` is given.
        autocast: a factory returning an autocast context (``engine.amp.build_amp``).
        scaler: ``torch.amp.GradScaler`` for fp16 on CUDA, else None.
        ema: timm ``ModelEmaV3``, updated after every step with the step count.
        max_steps_per_epoch: cap on optimizer steps per epoch, counted by ``progress.epoch_step``
            so it holds across a mid-epoch resume (0 = off).
        log_interval: log to the logger/TensorBoard every N global steps.
        tb_writer: ``SummaryWriter`` (or ``NullWriter``).
        progress_bar: show the epoch's progress (only ever on rank 0): a tqdm bar on a terminal,
            plain lines otherwise (``engine.progress_bar``).
        world_size: number of ranks (for global sample counts and images/s).
        before_update: called before every optimizer step's first change to the weights (the runner
            waits there for a checkpoint still copying them, CHECKPOINT.ASYNC_OVERLAP).
        check_health: after every optimizer step, leave in :attr:`step_health` the step's mean loss and
            its gradient norm (0 where the GradScaler owns non-finite gradients), as a device tensor read
            by ``on_step_end`` (the runner's self-healing), and in :attr:`step_data` the global sample
            positions the step consumed, ``(epoch, start, end)``.
    """

    def __init__(
        self,
        model: nn.Module,
        ddp_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        loss_fn: MultiLevelLoss,
        train_loader: Iterable,
        train_sampler: Any,
        device: torch.device,
        *,
        accum_steps: int = 1,
        clip_grad: float = 0.0,
        amp: bool = False,
        autocast: Callable[[], ContextManager] | None = None,
        scaler: torch.amp.GradScaler | None = None,
        ema: nn.Module | None = None,
        max_steps_per_epoch: int = 0,
        log_interval: int = 10,
        tb_writer: Any = None,
        logger: logging.Logger | None = None,
        progress_bar: bool = True,
        world_size: int = 1,
        before_update: Callable[[], None] | None = None,
        check_health: bool = False,
    ) -> None:
        if accum_steps < 1:
            raise ValueError(f"Trainer: accum_steps must be >= 1 (TRAIN.ACCUM_STEPS), got {accum_steps}.")
        if log_interval < 1:
            raise ValueError(f"Trainer: log_interval must be >= 1 (TRAIN.LOG_INTERVAL), got {log_interval}.")
        self.model = model
        self.ddp_model = ddp_model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_fn = loss_fn
        self.train_loader = train_loader
        self.train_sampler = train_sampler
        self.device = torch.device(device)
        self.accum_steps = accum_steps
        self.clip_grad = clip_grad
        self.autocast = autocast if autocast is not None else autocast_factory(self.device, amp)
        self.scaler = scaler
        self.ema = ema
        self.max_steps_per_epoch = max_steps_per_epoch
        self.log_interval = log_interval
        self.tb = tb_writer if tb_writer is not None else NullWriter()
        self.logger = logger or logging.getLogger("linnaeus.engine")
        self.progress_bar = progress_bar and get_rank() == 0
        self.world_size = world_size
        self.before_update = before_update
        self.check_health = check_health
        self.step_health: torch.Tensor | None = None
        self.step_data: tuple[int, int, int] | None = None
        self.task_keys = list(getattr(loss_fn, "task_keys", []))
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._is_ddp = isinstance(ddp_model, DistributedDataParallel)
        self._meter_names = ["loss", *self.task_keys]
        self._zero = torch.zeros((), device=self.device)

    # ------------------------------------------------------------------ epoch
    def train_epoch(self, progress: Progress, on_step_end: OnStepEnd | None = None) -> dict[str, Any]:
        """Train over the loader's remaining batches of the current epoch, updating ``progress`` in place.

        Returns ``{"completed": bool, "train/loss": float, "train/loss/<level>": float,
        "train/images_per_sec": float}``; the losses are averages over the micro-batches this
        call ran (all ranks). ``completed`` is False when ``on_step_end`` returned True (the
        epoch stopped right after that step, ``progress.epoch`` unchanged); when True,
        ``progress.epoch`` was incremented and ``progress.epoch_step`` reset.
        """
        self.ddp_model.train()
        clock = self._lr_clock(progress)
        # Idempotent on an uninterrupted run; after a resume it applies the (possibly changed)
        # config's schedule at the restored progress.
        self._set_lr(progress, clock)
        self.optimizer.zero_grad(set_to_none=True)
        epoch_sums = RunningSums(self._meter_names, self.device)
        window = _Window(epoch_sums, progress)
        start, start_samples = time.perf_counter(), progress.samples
        # DataLoader.__iter__ draws its worker base seed from the global torch RNG; isolating it
        # keeps the training RNG stream a function of the model's own draws only, so a run
        # resumed mid-epoch (which re-creates the iterator) stays bit-identical. Datasets must
        # seed augmentation from (seed, epoch, index), as linnaeus.data does, not from workers.
        with torch.random.fork_rng(devices=[]):
            batches = iter(self.train_loader)
        with self._progress_display(progress) as bar:
            try:
                completed = self._run(batches, progress, on_step_end, window, bar, clock)
            finally:
                window.reset(progress)  # folds the unlogged tail into epoch_sums
        elapsed = time.perf_counter() - start
        epoch_sums.all_reduce()
        result: dict[str, Any] = {"completed": completed}
        averages = epoch_sums.averages()
        result["train/loss"] = averages["loss"]
        result.update({f"train/loss/{k}": averages[k] for k in self.task_keys})
        result["train/images_per_sec"] = (progress.samples - start_samples) / max(elapsed, 1e-9)
        if completed:
            progress.epoch += 1
            progress.epoch_step = 0
        return result

    def _run(self, batches: Any, progress: Progress, on_step_end: OnStepEnd | None,
             window: "_Window", bar: ProgressDisplay | None, clock: "_LrClock") -> bool:
        """The micro-batch loop; returns False if ``on_step_end`` asked to stop."""
        # One batch of lookahead tells whether a micro-batch ends the epoch (and so its
        # accumulation group) without relying on len(loader).
        upcoming = next(batches, None)
        in_group, group_samples, group_start = 0, 0, 0
        step_loss = torch.zeros((), device=self.device)
        while upcoming is not None:
            if in_group == 0 and 0 < self.max_steps_per_epoch <= progress.epoch_step:
                break
            if in_group == 0:
                group_start = getattr(self.train_sampler, "consumed", 0)
            images, labels = upcoming
            upcoming = next(batches, None)
            in_group += 1
            ends_group = in_group == self.accum_steps or upcoming is None
            n, loss = self._forward_backward(images, labels, sync=ends_group, window=window)
            group_samples += n
            if self.check_health:
                step_loss = loss if in_group == 1 else step_loss + loss
            if not ends_group:
                continue
            lr, grad_norm = self._optimizer_step(in_group, window)
            if self.check_health:
                self.step_health = torch.stack([step_loss / in_group, grad_norm.to(step_loss.dtype)])
                self.step_data = (getattr(self.train_sampler, "epoch", progress.epoch), group_start,
                                  getattr(self.train_sampler, "consumed", 0))
            progress.step += 1
            progress.epoch_step += 1
            progress.samples += group_samples * self.world_size
            if self.ema is not None:
                self.ema.update(self.model, step=progress.step)
            clock.tick()
            self._set_lr(progress, clock)
            in_group, group_samples = 0, 0
            if progress.step % self.log_interval == 0:
                self._log(progress, window, lr, bar)
            if bar is not None:
                bar.update(1)
            if on_step_end is not None and on_step_end(progress):
                return False
        return True

    # ------------------------------------------------------------------ step
    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor, *, sync: bool,
                          window: "_Window") -> tuple[int, torch.Tensor]:
        """One micro-batch; returns its size and its loss (detached, on the device)."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        no_sync = gradient_sync(self.ddp_model, sync)  # DDP no_sync / FSDP2 set_requires_gradient_sync
        with no_sync:
            with self.autocast():
                outputs = self.ddp_model(images)
                loss, per_level = self.loss_fn(outputs, labels)
            # Skipping the division when it is by 1 saves an op and an autograd node per step.
            scaled = loss / self.accum_steps if self.accum_steps > 1 else loss
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        n = labels.shape[0]
        self.train_sampler.advance(n)
        window.sums.add_means(torch.stack([loss.detach(), *(per_level[k].detach() for k in self.task_keys)]), n)
        return n, loss.detach().float()

    def _optimizer_step(self, group_size: int, window: "_Window") -> tuple[float, torch.Tensor]:
        """Clip, step, zero; returns the (mean over param groups) LR the step used and, with
        ``check_health``, the gradient norm before clipping (else a 0 that nothing reads)."""
        if self.before_update is not None:
            self.before_update()  # e.g. a background save still copying the weights and the EMA
        if group_size < self.accum_steps:
            # A short trailing group: its losses were divided by accum_steps, not group_size.
            grads = [p.grad for p in self._params if p.grad is not None]
            torch._foreach_mul_(grads, self.accum_steps / group_size)
        if self.clip_grad > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            # Under fsdp the parameters are DTensor shards: the norm is over all shards (one reduction).
            window.grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(self._params, self.clip_grad))
        grad_norm = self._zero
        if self.check_health and self.scaler is None:  # with a GradScaler, inf gradients skip the step by design
            grad_norm = window.grad_norm if self.clip_grad > 0 else grad_norm_value(
                torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None]))
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sum(lrs) / len(lrs), grad_norm

    # ------------------------------------------------------------------ schedule
    def _updates_left(self, progress: Progress) -> int | None:
        """Optimizer steps this call makes unless stopped; None for a loader without a length."""
        try:
            left = steps_per_epoch(len(self.train_loader), self.accum_steps)  # type: ignore[arg-type]
        except TypeError:
            return None
        if self.max_steps_per_epoch > 0:
            left = min(left, max(self.max_steps_per_epoch - progress.epoch_step, 0))
        return left

    def _lr_clock(self, progress: Progress) -> "_LrClock":
        """Where the current epoch stands, in optimizer updates of *this* run's configuration.

        Read from the sampler's position (global samples consumed in the epoch), the one measure
        that does not depend on how the epoch was split: ``progress.epoch_step`` and
        ``progress.step`` count updates of whichever world size, batch size and ACCUM_STEPS made
        them, so after a resume on other ones they would misplace the schedule.
        """
        consumed = getattr(self.train_sampler, "consumed", None)
        batch = getattr(self.train_loader, "batch_size", None)
        if isinstance(consumed, int) and batch:
            replicas = getattr(self.train_sampler, "num_replicas", self.world_size)
            done = consumed / (batch * self.accum_steps * replicas)
        else:  # no data position to read: count steps (exact while the configuration is unchanged)
            done = float(progress.epoch_step)
        return _LrClock(done, self._updates_left(progress))

    def _set_lr(self, progress: Progress, clock: "_LrClock") -> None:
        if self.scheduler is not None:
            self.scheduler.step_within_epoch(progress.epoch, clock.done, clock.remaining)

    # ------------------------------------------------------------------ reporting
    def _progress_display(self, progress: Progress) -> ContextManager[ProgressDisplay | None]:
        if not self.progress_bar:
            return contextlib.nullcontext()
        left = self._updates_left(progress)  # None: an iterable loader without a length, no total
        total = None if left is None else progress.epoch_step + left
        return epoch_progress(total, progress.epoch_step, f"epoch {progress.epoch}")

    def _log(self, progress: Progress, window: "_Window", lr: float, bar: ProgressDisplay | None) -> None:
        """One host sync: window averages → logger, TensorBoard, progress bar."""
        averages = window.sums.averages()
        elapsed = time.perf_counter() - window.start
        images_per_sec = (progress.samples - window.start_samples) / max(elapsed, 1e-9)
        step = progress.step
        self.tb.add_scalar("train/loss", averages["loss"], step)
        for k in self.task_keys:
            self.tb.add_scalar(f"train/loss/{k}", averages[k], step)
        self.tb.add_scalar("train/lr", lr, step)
        self.tb.add_scalar("train/images_per_sec", images_per_sec, step)
        grad_norm = ""
        if window.grad_norm is not None:
            norm = float(window.grad_norm)
            self.tb.add_scalar("train/grad_norm", norm, step)
            grad_norm = f" grad_norm {norm:.3f}"
        levels = " ".join(f"{k} {averages[k]:.4f}" for k in self.task_keys)
        self.logger.info("epoch %d step %d (epoch step %d) loss %.4f (%s) lr %.3e %.1f img/s%s",
                         progress.epoch, step, progress.epoch_step, averages["loss"], levels, lr,
                         images_per_sec, grad_norm)
        if not math.isfinite(averages["loss"]) and not self.check_health:  # else the runner's healing acts on it
            # Checked here rather than every step: it costs no extra host sync.
            self.logger.warning("non-finite training loss (%s) in steps %d..%d: training has diverged; "
                                "lower TRAIN.OPTIMIZER.LR or set TRAIN.CLIP_GRAD", averages["loss"],
                                step - self.log_interval + 1, step)
        if bar is not None:
            bar.set_postfix(loss=f"{averages['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
        window.reset(progress)


@dataclass
class _LrClock:
    """The current epoch in updates of this configuration: ``done`` updates' worth of its data
    behind (fractional after a resume on another one), ``remaining`` to its end (None: unknown)."""

    done: float
    remaining: int | None

    def tick(self) -> None:
        self.done += 1
        if self.remaining is not None:
            self.remaining = max(self.remaining - 1, 0)


class _Window:
    """Loss sums and timing since the last log line; folded into the epoch's sums on reset."""

    def __init__(self, epoch_sums: RunningSums, progress: Progress) -> None:
        self.epoch_sums = epoch_sums
        self.sums = RunningSums(epoch_sums.names, epoch_sums.device)
        self.reset(progress)

    def reset(self, progress: Progress) -> None:
        if self.sums.count:
            self.epoch_sums.update(self.sums.sums, self.sums.count)
        self.sums.reset()
        self.grad_norm: torch.Tensor | None = None
        self.start = time.perf_counter()
        self.start_samples = progress.samples
