"""SelfHealing's decisions, without a training run: which steps are bad, what a rollback skips and
records, and that the state a checkpoint holds reproduces the decisions after a relaunch."""

from __future__ import annotations

import io
import math

import pytest
import torch

from linnaeus.config import load_config
from linnaeus.data.sampler import ResumableDistributedSampler
from linnaeus.engine.optim import build_scheduler
from linnaeus.runner.healing import SelfHealing, TrainingDivergedError
from tests.conftest import TINY_CFG


def _healing(sampler=None, **kw) -> SelfHealing:
    args = dict(factor=3.0, window=4, max_rollbacks=2, lr_scale=1.0, skip_steps=2)
    args.update(kw)
    return SelfHealing(sampler=sampler or ResumableDistributedSampler(100, seed=0), **args)


def _steps(h: SelfHealing, losses, start_step=1, batch=4):
    """Judge steps of 'batch' samples with these losses; returns the first bad step (or None)."""
    for k, loss in enumerate(losses):
        step = start_step + k
        if h.judge(step, [loss, 1.0], (0, (step - 1) * batch, step * batch)):
            return step
    return None


def test_non_finite_values_are_bad_at_once_and_spikes_only_once_the_window_is_full():
    assert _steps(_healing(), [1.0, float("nan")]) == 2
    assert _healing().judge(1, [1.0, math.inf], (0, 0, 4)) and "non-finite gradient norm" in _healing_reason(math.inf)
    # 100 x the median on the first step: no window yet, not a spike
    assert _steps(_healing(), [100.0, 1.0, 1.0, 1.0]) is None
    h = _healing()
    # step 5: 3.0 < 3 x 1.05 (the median of the 4 before); step 6: 3.5 > 3 x 1.15, the median of 1.2 .. 3.0
    assert _steps(h, [1.0, 1.2, 0.9, 1.1, 3.0, 3.5]) == 6
    assert "loss spike: 3.5 > TRAIN.SPIKE.FACTOR 3 x 1.15, the median of the last 4 steps" in h.pending.reason
    assert list(h.losses) == [1.2, 0.9, 1.1, 3.0]  # a bad step's loss never enters the window
    assert _steps(_healing(factor=0.0), [1.0, 1.0, 1.0, 1.0, 1e9]) is None  # spikes off: only non-finite


def _healing_reason(grad: float) -> str:
    h = _healing()
    h.judge(1, [1.0, grad], (0, 0, 4))
    return h.pending.reason


def test_a_rollback_skips_the_bad_steps_after_the_checkpoint_and_restores_reproducibly():
    sampler = ResumableDistributedSampler(100, seed=0)
    order = sampler.global_order(0)
    h = _healing(sampler)
    assert _steps(h, [1.0, 1.0, 1.0, float("nan")]) == 4
    saved_before = _roundtrip(h.state_dict())  # what a checkpoint at step 3 holds (events, losses)
    h.begin_rollback()
    h.load_state_dict(saved_before)  # the restore of the checkpoint at step 3
    h.rolled_back(to_step=3)
    # skip_steps=2 names steps 3 and 4, but step 3 is the checkpoint's: only step 4's samples go
    (event,) = h.events
    assert event["samples"] == sorted(order[12:16]) and event["to_step"] == 3
    assert sampler.global_order(0) == order[:12] + order[16:]
    assert set(sampler.skipped) == set(event["samples"])
    # A relaunch from a later checkpoint gets the same sampler order and the same judge.
    state = _roundtrip(h.state_dict())
    fresh_sampler = ResumableDistributedSampler(100, seed=0)
    again = _healing(fresh_sampler)
    again.load_state_dict(state)
    assert fresh_sampler.global_order(0) == sampler.global_order(0) and list(again.losses) == list(h.losses)


def test_the_rollbacks_run_out_with_an_error_naming_steps_and_samples():
    h = _healing(max_rollbacks=1)
    for bad in (2, 4):
        assert _steps(h, [1.0, float("nan")], start_step=bad - 1) == bad
        if bad == 2:
            h.begin_rollback()
            h.rolled_back(to_step=0)
    with pytest.raises(TrainingDivergedError, match=r"Training diverged at step 4 \(epoch 0\): non-finite loss") as e:
        h.begin_rollback()
    assert "MAX_ROLLBACKS is 1 and the run has rolled back 1 time(s)" in str(e.value)
    assert "Earlier rollbacks: step 2: non-finite loss (nan) (skipped 8 sample(s)" in str(e.value)


def test_lr_scale_multiplies_the_schedule_after_each_rollback_without_compounding():
    cfg = load_config(str(TINY_CFG), ["TRAIN.SPIKE.LR_SCALE", "0.5"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.TRAIN.OPTIMIZER.LR)
    scheduler = build_scheduler(cfg, opt, updates_per_epoch=10)
    scheduler.step_within_epoch(1, 3, 7)
    unscaled = opt.param_groups[0]["lr"]
    h = _healing(lr_scale=0.5, scheduler=scheduler)
    for _ in range(2):
        _steps(h, [float("nan")])
        h.begin_rollback()
        h.rolled_back(to_step=0)
    for _ in range(3):  # set again and again at the same position: the same LR
        scheduler.step_within_epoch(1, 3, 7)
        assert opt.param_groups[0]["lr"] == pytest.approx(unscaled * 0.25)


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)
