"""Where the LR schedule stands (#21): a function of training progress, not of how it was split.

An uninterrupted run, and one resumed on the same configuration, still use the LR of the integer
step count, bit for bit; a run resumed with another batch size or ``TRAIN.ACCUM_STEPS`` uses, at
every sample, the LR the uninterrupted run used at that sample. Another world size, through real
torchrun, is tests/runner/test_lr_schedule_resize.py.
"""

from __future__ import annotations

import pytest

from linnaeus.engine.optim import build_optimizer, build_scheduler, schedule_position
from linnaeus.engine.run_log import NullWriter
from linnaeus.engine.trainer import Progress
from tests.engine.test_engine import Setup, TinyNet, make_cfg


class LrRecorder(NullWriter):
    """A TensorBoard stand-in keeping ``train/lr`` (the LR each step used) by step."""

    def __init__(self) -> None:
        self.lr: dict[int, float] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if tag == "train/lr":
            self.lr[step] = value


def lr_by_sample(cfg, *, batch_size: int, n: int, state: dict | None = None, stop_at_step: int = 0
                 ) -> tuple[dict[int, float], Setup]:
    """Train ``cfg`` to the end (or to ``stop_at_step``), from ``state`` if given; returns
    ``{global samples seen before a step: the LR that step used}`` and the setup."""
    s = Setup(cfg, batch_size=batch_size, n=n)
    if state is not None:
        s.restore(state)
    tb = LrRecorder()
    trainer = s.trainer(tb_writer=tb)
    seen = {s.progress.step: s.progress.samples}  # samples seen after each step

    def on_step_end(p: Progress) -> bool:
        seen[p.step] = p.samples
        return p.step == stop_at_step

    while s.progress.epoch < cfg.TRAIN.EPOCHS:
        s.sampler.set_epoch(s.progress.epoch)
        if not trainer.train_epoch(s.progress, on_step_end)["completed"]:
            break
    return {seen[step - 1]: lr for step, lr in tb.lr.items()}, s


def schedule_cfg(*opts: str):
    return make_cfg("TRAIN.EPOCHS", "2", "TRAIN.SCHEDULER.WARMUP_EPOCHS", "0.5", "TRAIN.OPTIMIZER.LR", "0.1",
                    "TRAIN.LOG_INTERVAL", "1", *opts)


# ----------------------------------------------------------------------------- the position function
@pytest.mark.parametrize("upe", [1, 3, 7, 23])
def test_position_is_the_integer_step_count_when_the_epoch_is_all_this_configuration(upe):
    for epoch in range(3):
        for k in range(upe + 1):
            position = schedule_position(epoch, upe, float(k), upe - k)
            assert position == epoch * upe + k and type(position) is int


def test_position_after_a_resume_on_another_configuration_follows_the_share_of_samples():
    # 1 rank x 8 (U 18 of 144 images) stopped after 40 images, resumed on 2 ranks x 8 with 104
    # left: 6 full steps of 16 images (8 dropped): 2.5 updates' worth behind, 6 to the epoch's end.
    upe, c0, per_update, left = 9, 40, 16, 6
    done, ends_at = c0 / per_update, c0 + left * per_update
    for j in range(left + 1):
        position = schedule_position(3, upe, done + j, left - j)
        assert position == pytest.approx(3 * upe + upe * (c0 + j * per_update) / ends_at, rel=1e-15)
    assert schedule_position(3, upe, done + left, 0) == 4 * upe  # the epoch's end, exactly
    assert schedule_position(3, upe, 30.0, None) == 4 * upe  # unknown length: counted, capped at the end
    assert schedule_position(3, upe, 2.5, None) == 29.5


def test_step_within_epoch_sets_the_lr_of_the_position_between_two_steps():
    cfg = schedule_cfg()
    opt = build_optimizer(cfg, TinyNet())
    sched = build_scheduler(cfg, opt, 10)

    def lr_at(position: float) -> float:
        sched.step_update(position)
        return opt.param_groups[0]["lr"]

    sched.step_within_epoch(1, 2.5, 5)  # epoch 1, a third of its data behind: update 10 + 10 / 3
    lr = opt.param_groups[0]["lr"]
    assert lr == lr_at(10 + 10 * 2.5 / 7.5)
    assert lr_at(13) > lr > lr_at(14)  # cosine decay, between the two steps around it


# ----------------------------------------------------------------------------- the training loop
@pytest.mark.parametrize("opts, batch_size", [
    (("TRAIN.ACCUM_STEPS", "5"), 4),  # 12 micro-batches an epoch: steps of 5, 5 and a short 2
    (("TRAIN.MAX_STEPS_PER_EPOCH", "4"), 4),  # capped epochs
    ((), 3),  # 16 steps an epoch
], ids=["short-trailing-group", "capped", "plain"])
def test_an_uninterrupted_run_uses_the_lr_of_the_integer_step_count_bit_for_bit(opts, batch_size):
    cfg = schedule_cfg("TRAIN.EPOCHS", "3", *opts)
    got, s = lr_by_sample(cfg, batch_size=batch_size, n=48)
    opt = build_optimizer(cfg, TinyNet())
    timm = build_scheduler(cfg, opt, s.upe).scheduler  # the bare timm schedule, indexed by the step count
    want = []
    for step in range(s.progress.step):
        timm.step_update(step)
        want.append(opt.param_groups[0]["lr"])
    assert s.progress.step == 3 * s.upe
    assert list(got.values()) == want  # ==: the very floats the step-indexed schedule gives


def test_a_resume_on_the_same_configuration_uses_the_lr_of_the_integer_step_count_bit_for_bit():
    cfg = schedule_cfg("TRAIN.EPOCHS", "3", "TRAIN.ACCUM_STEPS", "5")
    want, _ = lr_by_sample(cfg, batch_size=4, n=48)
    first, stopped = lr_by_sample(cfg, batch_size=4, n=48, stop_at_step=4)  # epoch 1, 1 of its 3 steps
    rest, _ = lr_by_sample(cfg, batch_size=4, n=48, state=stopped.state())
    assert {**first, **rest} == want and len(rest) == 5


# 40 images; the reference takes steps of 2, so it has an LR at every even sample count.
N, REF_BATCH = 40, 2


@pytest.mark.parametrize("batch_size, accum", [
    (8, 1),  # 2 updates' worth behind, 3 steps left
    (4, 2),
    (6, 1),  # 16 / 6: 2.67 updates' worth behind, 4 steps of 6 left (the epoch's last 24 images)
    (2, 3),
], ids=["batch-8", "batch-4-accum-2", "batch-6", "batch-2-accum-3"])
def test_a_resume_with_another_batch_size_or_accum_steps_continues_on_the_same_lr_curve(batch_size, accum):
    cfg = schedule_cfg()
    want, _ = lr_by_sample(cfg, batch_size=REF_BATCH, n=N)
    _, stopped = lr_by_sample(cfg, batch_size=REF_BATCH, n=N, stop_at_step=28)  # epoch 1: 16 of 40 images
    assert stopped.progress == Progress(epoch=1, step=28, epoch_step=8, samples=56)

    resumed_cfg = schedule_cfg("TRAIN.ACCUM_STEPS", str(accum))
    got, resumed = lr_by_sample(resumed_cfg, batch_size=batch_size, n=N, state=stopped.state())
    assert resumed.progress.epoch == 2 and resumed.sampler.consumed == N  # the epoch's images, all of them
    assert sorted(got) == list(range(56, 80, batch_size * accum))
    for sample, lr in got.items():
        assert lr == pytest.approx(want[sample], rel=1e-12), f"at sample {sample}"
