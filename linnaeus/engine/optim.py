"""Optimizer, learning-rate schedule and weight EMA from the config, through timm's factories.

The schedule is set before every optimizer update, so warmup and cosine decay are smooth within an
epoch. Its position is a function of training progress, not of how training was split: whole
epochs plus the share of the current epoch's data behind it (:func:`schedule_position`), counted
in updates of the *current* configuration. A resume on the same configuration lands on exactly the
LR an uninterrupted run would have used; one on another world size, batch size or
``TRAIN.ACCUM_STEPS`` continues on the same curve (the step count, in the old configuration's
units, would not: 2 ranks -> 1 would jump back towards the peak and end far above ``MIN_LR``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.distributed.tensor import DTensor
from yacs.config import CfgNode

from linnaeus.config import ConfigError

logger = logging.getLogger(__name__)

# Names create_scheduler_v2 accepts with step_on_epochs=False ("plateau" needs per-epoch metrics).
SCHEDULER_NAMES = ("cosine", "tanh", "step", "multistep", "poly", "wsd", "rsqrt", "constant", "none")


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """``TRAIN.OPTIMIZER.*`` → a timm optimizer; norms, biases and ``no_weight_decay()`` params get no decay."""
    oc = cfg.TRAIN.OPTIMIZER
    name = oc.NAME.lower()
    if name not in list_optimizers():
        raise ConfigError(
            f"TRAIN.OPTIMIZER.NAME: unknown optimizer {oc.NAME!r}. Use a timm optimizer name, e.g. "
            f"'adamw', 'sgd', 'lamb' (all: timm.optim.list_optimizers())."
        )
    return create_optimizer_v2(
        model, opt=name, lr=oc.LR, weight_decay=oc.WEIGHT_DECAY, momentum=oc.MOMENTUM, filter_bias_and_bn=True
    )


class StepwiseScheduler:
    """A timm scheduler set before every optimizer update, whose shape always comes from the config.

    timm schedulers are pure functions of the update count: their ``state_dict`` holds nothing
    but constructor arguments (``t_initial``, ``warmup_t``, ``base_values``, ...). Loading it
    verbatim after rebuilding from the config would silently bring back the *old* schedule when
    a resumed run raises ``TRAIN.EPOCHS`` (or changes LR, warmup, batch size or world size), e.g.
    the LR would already sit at ``min_lr`` for the added epochs. So :meth:`load_state_dict`
    keeps the schedule rebuilt from the current config and logs every field that differs; the
    trainer's next :meth:`step_within_epoch` puts the LR where the current schedule has it at the
    restored progress. With an unchanged config the two are identical and a resume is exact.
    """

    def __init__(self, scheduler: Scheduler, name: str, updates_per_epoch: int) -> None:
        self.scheduler = scheduler
        self.name = name
        self.updates_per_epoch = updates_per_epoch
        # Multiplies the schedule's LR (the runner's self-healing lowers it after a rollback); not
        # state of its own: the owner of the decision saves it.
        self.lr_scale = 1.0

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.scheduler.optimizer

    def step_update(self, num_updates: float) -> None:
        """Set the LR for the update that follows ``num_updates`` updates of this configuration
        (fractional between two updates, see :func:`schedule_position`)."""
        self.scheduler.step_update(num_updates=num_updates)
        if self.lr_scale != 1.0:  # timm sets every group's LR afresh on each update: the scale never compounds
            for group in self.optimizer.param_groups:
                group[self.scheduler.param_group_field] *= self.lr_scale

    def step_within_epoch(self, epoch: int, done: float, remaining: int | None) -> None:
        """Set the LR for the next update of ``epoch``: ``done`` updates' worth of its data behind,
        ``remaining`` updates to its end (see :func:`schedule_position`)."""
        self.step_update(schedule_position(epoch, self.updates_per_epoch, done, remaining))

    def state_dict(self) -> dict[str, Any]:
        # Plain Python values only, so checkpoints load with torch.load(weights_only=True).
        return {"name": self.name, "updates_per_epoch": self.updates_per_epoch,
                "timm_state": self.scheduler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Compare with the saved schedule and keep the config's (see the class docstring)."""
        if not isinstance(state_dict, dict) or not {"name", "updates_per_epoch", "timm_state"} <= state_dict.keys():
            found = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(
                "scheduler state: expected a dict with keys 'name', 'updates_per_epoch', 'timm_state' "
                f"(written by linnaeus.engine.optim.StepwiseScheduler), found {found}."
            )
        changes = []
        if state_dict["name"] != self.name:
            changes.append(f"name {state_dict['name']!r} -> {self.name!r}")
        if state_dict["updates_per_epoch"] != self.updates_per_epoch:
            changes.append(f"updates_per_epoch {state_dict['updates_per_epoch']} -> {self.updates_per_epoch}")
        current = self.scheduler.state_dict()
        for key, old in state_dict["timm_state"].items():
            if key != "metric" and key in current and current[key] != old:
                changes.append(f"{key} {old} -> {current[key]}")
        if changes:
            logger.info("LR schedule differs from the checkpoint's (%s); following the config's schedule",
                        ", ".join(changes))


def schedule_position(epoch: int, updates_per_epoch: int, done: float, remaining: int | None) -> float:
    """Where the LR schedule stands, in updates of the current configuration: ``epoch`` whole epochs
    of ``updates_per_epoch`` updates plus the current epoch's share behind it.

    ``done``: the epoch's data consumed so far, counted in full updates of the current configuration
    (global samples / samples per update: fractional after a resume on another world size, batch
    size or accumulation); ``remaining``: updates left to the epoch's end (None: unknown). The
    share is ``done / (done + remaining)``: 0 at the epoch's start, 1 at its end, whichever
    configuration consumed which part of it, so each epoch starts at ``epoch * updates_per_epoch``
    and a resumed one ends where the schedule expects it to. When the whole epoch is
    ``updates_per_epoch`` updates of this configuration (an uninterrupted run, or a resume that
    changed none of it) ``done + remaining == updates_per_epoch`` and the position is exactly the
    step count those runs always used.
    """
    if remaining is None:
        within = min(done, updates_per_epoch)  # no end to aim at: count updates, never past the epoch's
    elif remaining <= 0:
        within = updates_per_epoch  # the epoch's end exactly (U * d / d can round off it)
    else:
        within = updates_per_epoch * done / (done + remaining)
    position = epoch * updates_per_epoch + within
    # An int where it is one: timm computes the same LR from 5 and 5.0, and the sequence of an
    # uninterrupted run stays the integer step count it has always been.
    return int(position) if float(position).is_integer() else float(position)


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer,
                    updates_per_epoch: int) -> StepwiseScheduler | None:
    """``TRAIN.SCHEDULER.*`` → a per-update timm schedule over ``TRAIN.EPOCHS``; None for "none" (constant LR).

    ``updates_per_epoch`` is optimizer steps per epoch (see ``engine.trainer.steps_per_epoch``): the
    unit the trainer counts the schedule's position in (:func:`schedule_position`).
    Building sets the optimizer's LR to the schedule's value at update 0 (``WARMUP_LR`` when
    warming up).
    """
    sc = cfg.TRAIN.SCHEDULER
    name = sc.NAME.lower()
    if name not in SCHEDULER_NAMES:
        raise ConfigError(
            f"TRAIN.SCHEDULER.NAME: unknown or unsupported scheduler {sc.NAME!r}; "
            f"expected one of {', '.join(SCHEDULER_NAMES)} (stepped per optimizer update)."
        )
    if updates_per_epoch < 1:
        raise ValueError(f"build_scheduler: updates_per_epoch must be >= 1, got {updates_per_epoch} "
                         "(is the training set smaller than one batch?).")
    if name == "none":
        return None
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=name,
        num_epochs=cfg.TRAIN.EPOCHS,
        warmup_epochs=sc.WARMUP_EPOCHS,
        warmup_lr=sc.WARMUP_LR,
        min_lr=sc.MIN_LR,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    return StepwiseScheduler(scheduler, name, updates_per_epoch)


class ShardableModelEma(ModelEmaV3):
    """timm's ``ModelEmaV3`` whose copy may be sharded like the model (``engine.parallel.wrap_model``
    under fsdp): its parameters are then DTensors beside plain-tensor buffers, and one foreach op
    refuses the mix, so the update runs one foreach op per kind. Without DTensors it is one call
    with the same lists: ``ModelEmaV3`` exactly."""

    def _foreach_lerp_(self, ema_values: list[torch.Tensor], model_values: list[torch.Tensor],
                       weight: float) -> None:
        for sharded in (True, False):
            pairs = [(e, m) for e, m in zip(ema_values, model_values) if isinstance(e, DTensor) == sharded]
            if pairs:
                super()._foreach_lerp_([e for e, _ in pairs], [m for _, m in pairs], weight)


def build_ema(cfg: CfgNode, model: nn.Module) -> ModelEmaV3 | None:
    """timm ``ModelEmaV3`` of ``model`` when ``TRAIN.EMA.ENABLED`` (updated with the step count), else None.

    It deep-copies ``model``, which an FSDP2-sharded module refuses: under fsdp build it before
    ``wrap_model(..., ema=...)``, which gives it rank 0's values and shards it like the model.
    Under ddp it may be built after DDP's constructor broadcast rank 0's values into ``model``.
    """
    if not cfg.TRAIN.EMA.ENABLED:
        return None
    return ShardableModelEma(model, decay=cfg.TRAIN.EMA.DECAY)
