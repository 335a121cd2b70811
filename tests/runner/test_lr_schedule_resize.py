"""The LR schedule follows training progress, not how it is split (#21): a run resumed mid-epoch on
another number of ranks (2 -> 1, 1 -> 2, real torchrun) uses, at every sample, the learning rate an
uninterrupted run uses at that sample, and ends where it ends.

The curves are read from TensorBoard (``train/lr`` at every step, the LR the step used). 144
training images (``DATA.VAL_FRACTION 0.4``) make an epoch the same samples at either world size:
18 steps of 8 images on 1 rank, 9 steps of 2 x 8 on 2 ranks, so "the LR at sample x" is one
well-defined curve that both uninterrupted runs must also agree on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from tests.conftest import run_train

EPOCHS, TRAIN_IMAGES, BATCH = 3, 144, 8
OPTS = ("TRAIN.EPOCHS", str(EPOCHS), "DATA.VAL_FRACTION", "0.4", "CHECKPOINT.INTERVAL", "4st",
        "CHECKPOINT.FILENAME", "checkpoint_step_{step}.pth")
# TensorBoard stores float32: 1e-6 is a few of its ulps, far below a one-step change of the LR.
RTOL = 1e-6


def _lr_by_step(run: Path) -> dict[int, float]:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={SCALARS: 0}).Reload()  # 0: every point
    return {e.step: e.value for e in acc.Scalars("train/lr")}


def _lr_by_sample(run: Path, nproc: int, from_step: int = 0, from_samples: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(samples seen before each step, the LR that step used)`` for the steps after ``from_step``,
    all of them full steps of ``nproc`` x BATCH images."""
    lrs = _lr_by_step(run)
    steps = sorted(s for s in lrs if s > from_step)
    assert steps == list(range(from_step + 1, from_step + len(steps) + 1)), f"steps missing: {steps}"
    samples = np.array([from_samples + (s - from_step - 1) * nproc * BATCH for s in steps], dtype=np.float64)
    return samples, np.array([lrs[s] for s in steps], dtype=np.float64)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> Callable[[int], Path]:
    """``uninterrupted(nproc)``: the run dir of an uninterrupted run on ``nproc`` processes (once per module)."""
    runs: dict[int, Path] = {}

    def get(nproc: int) -> Path:
        if nproc not in runs:
            out = tmp_path_factory.mktemp(f"lr_ref{nproc}")
            run_train(out, toy_root, *OPTS, nproc=nproc)
            runs[nproc] = out / "tiny"
        return runs[nproc]

    return get


def _assert_on_curve(samples: np.ndarray, lrs: np.ndarray, ref_samples: np.ndarray, ref_lrs: np.ndarray,
                     what: str) -> None:
    expected = np.interp(samples, ref_samples, ref_lrs)
    rel = np.abs(lrs - expected) / expected
    worst = int(np.argmax(rel))
    assert rel[worst] < RTOL, (f"{what}: at sample {int(samples[worst])} the LR is {lrs[worst]:.6e}, the "
                               f"uninterrupted run's is {expected[worst]:.6e} (relative error {rel[worst]:.2e})")


def test_uninterrupted_runs_on_1_and_2_ranks_share_one_lr_curve_per_sample(uninterrupted):
    one = _lr_by_sample(uninterrupted(1), 1)
    two = _lr_by_sample(uninterrupted(2), 2)
    assert len(one[0]) == EPOCHS * TRAIN_IMAGES // BATCH and len(two[0]) == EPOCHS * TRAIN_IMAGES // (2 * BATCH)
    _assert_on_curve(*two, *one, "uninterrupted 2 ranks")
    assert one[1][-1] < 2e-5  # cosine to MIN_LR 1e-5 (the last step starts 1/54 of the run before its end)


@pytest.mark.parametrize("before, after, resume_step", [
    (2, 1, 16),  # 2 ranks: epoch 1, 7 of its 9 steps done (112 of 144 images); 4 steps left on 1 rank
    (1, 2, 20),  # 1 rank: epoch 1, 2 of its 18 steps done (16 images); 8 steps left on 2 ranks
], ids=["2->1", "1->2"])
def test_resume_on_another_world_size_continues_on_the_uninterrupted_lr_curve(tmp_path, toy_root, uninterrupted,
                                                                              before, after, resume_step):
    checkpoint = uninterrupted(before) / "checkpoints" / f"checkpoint_step_{resume_step}.pth"
    progress = torch.load(checkpoint, weights_only=True, map_location="cpu")["progress"]
    assert progress["epoch"] == 1 and 0 < progress["epoch_step"], progress  # mid-epoch, as the ids say
    # A new run dir continuing from that checkpoint (TRAIN.RESUME): its TensorBoard holds only the resumed steps.
    run_train(tmp_path, toy_root, *OPTS, "TRAIN.RESUME", str(checkpoint), nproc=after, name="resumed")

    samples, lrs = _lr_by_sample(tmp_path / "resumed", after, progress["step"], progress["samples"])
    assert samples[-1] + after * BATCH == EPOCHS * TRAIN_IMAGES  # it trained to the end of the run
    # One LR per 8 samples on 1 rank: every sample count the resumed run starts a step at is one of its points.
    _assert_on_curve(samples, lrs, *_lr_by_sample(uninterrupted(1), 1), f"resumed {before} -> {after} ranks")
