"""TensorBoard across resumes, read back with TensorBoard's own ``EventAccumulator``: a run
killed right after an epoch end, preempted mid-epoch and preempted before its last validation,
then relaunched once finished, shows the same scalars at the same steps as an uninterrupted run,
each step once; and the writer is flushed before every checkpoint save."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from linnaeus.engine.run_log import RunEventWriter, build_tb_writer
from tests.conftest import REPO, run_train, tiny_args

# 3 epochs of 4 optimizer steps (steps 1..12, validation and an epoch checkpoint at 4, 8, 12) and
# every step's scalars.
OPTS = ("TRAIN.EPOCHS", "3", "TRAIN.MAX_STEPS_PER_EPOCH", "4", "TRAIN.LOG_INTERVAL", "1")
HELPER = REPO / "tests" / "helpers" / "tb_launch.py"
TIMING_TAGS = {"train/images_per_sec"}  # wall-clock measurements: steps compared, values not


def _scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0}).Reload()  # 0: keep every point
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _event_files(run: Path) -> set[Path]:
    return set((run / "tensorboard").glob("events.out.tfevents.*"))


def _launch_with(out: Path, toy_root: Path, action: str, step: int, returncode: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(HELPER), action, str(step), *tiny_args(out, toy_root, *OPTS)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == returncode, f"{action} at step {step}: rc {proc.returncode}\n{proc.stdout[-3000:]}" \
                                          f"{proc.stderr[-3000:]}"
    return proc.stdout


def _assert_same_curves(got: dict[str, list[tuple[int, float]]], want: dict[str, list[tuple[int, float]]]) -> None:
    assert sorted(got) == sorted(want)
    for tag in want:
        steps = [s for s, _ in got[tag]]
        assert len(steps) == len(set(steps)), f"{tag}: a step appears twice: {steps}"
        assert steps == [s for s, _ in want[tag]], f"{tag}: steps {steps}, uninterrupted {[s for s, _ in want[tag]]}"
        if tag not in TIMING_TAGS:  # resumes are bit-exact, so are the logged values
            assert got[tag] == want[tag], f"{tag}: values differ from the uninterrupted run"


def test_interrupted_and_resumed_run_logs_the_same_scalars_as_an_uninterrupted_one(tmp_path, toy_root):
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_train(ref, toy_root, *OPTS)
    want = _scalars(ref / "tiny" / "tensorboard")
    assert [s for s, _ in want["train/loss"]] == list(range(1, 13))
    assert [s for s, _ in want["val/acc1/species"]] == [4, 8, 12]

    # kill -9 at step 6 with steps 5 and 6 on disk: the relaunch resumes from the epoch checkpoint
    # at step 4, keeps what was logged at 4 (the last train scalars, the validation) and purges 5, 6.
    _launch_with(run, toy_root, "kill", 6, -signal.SIGKILL)
    assert [s for s, _ in _scalars(run / "tiny" / "tensorboard")["train/loss"]] == list(range(1, 7))
    # Preempted mid-epoch (SIGTERM at step 7): the relaunch resumes at 7 and keeps 7's scalars.
    _launch_with(run, toy_root, "term", 7, 0)
    # Preempted on the last step (SIGTERM at step 12), so the checkpoint precedes that epoch's
    # validation: the relaunch resumes at 12 and validates there, next to 12's train scalars.
    order = _launch_with(run, toy_root, "term", 12, 0).splitlines()
    # Every save found the events it keeps on disk: the writer was flushed right before it.
    saves = [i for i, line in enumerate(order) if line.startswith("save step")]
    assert [order[i] for i in saves] == ["save step 8", "save step 12"]
    assert all(i > 0 and order[i - 1] == "tb flush" for i in saves), order
    before_last_validation = _scalars(run / "tiny" / "tensorboard")
    assert [s for s, _ in before_last_validation["val/acc1/species"]] == [4, 8]
    assert [s for s, _ in before_last_validation["train/loss"]] == list(range(1, 13))
    run_train(run, toy_root, *OPTS)
    got = _scalars(run / "tiny" / "tensorboard")
    _assert_same_curves(got, want)

    # A relaunch of the finished run writes no event file and changes nothing.
    files = _event_files(run / "tiny")
    relaunch = run_train(run, toy_root, *OPTS)
    assert "Resumed from" in relaunch.stdout + relaunch.stderr
    assert _event_files(run / "tiny") == files
    assert _scalars(run / "tiny" / "tensorboard") == got


def _launch(tb_dir: Path, resumed_step: int, points: list[tuple[str, float, int]]) -> RunEventWriter:
    writer = RunEventWriter(tb_dir, resumed_step)
    for tag, value, step in points:
        writer.add_scalar(tag, value, step)
    return writer


def test_a_validation_at_the_checkpoint_step_that_differs_replaces_the_old_one_and_keeps_the_rest(tmp_path):
    # Launch 1 logs train/loss at 1..3 and val at 3 after a checkpoint at step 3 (taken before
    # validation), then step 4, and dies. Launch 2 resumes at 3 and validates again with another
    # value (a resume on other hardware): the new val at 3 replaces the old, train/loss at 3 stays.
    tb = tmp_path / "tensorboard"
    first = _launch(tb, 0, [("train/loss", 1.0, 1), ("train/loss", 0.9, 2), ("train/loss", 0.8, 3),
                            ("val/acc", 0.25, 3), ("train/loss", 0.7, 4)])
    first.close()
    second = _launch(tb, 3, [("val/acc", 0.5, 3), ("train/loss", 0.6, 4)])
    second.close()
    assert _scalars(tb) == {"train/loss": [(1, 1.0), (2, pytest.approx(0.9)), (3, pytest.approx(0.8)),
                                           (4, pytest.approx(0.6))],
                            "val/acc": [(3, 0.5)]}


def test_held_back_scalars_are_written_by_flush_and_a_launch_that_logs_nothing_writes_no_file(tmp_path):
    tb = tmp_path / "tensorboard"
    _launch(tb, 0, [("train/loss", 1.0, 1), ("val/acc", 0.25, 1)]).close()
    files = set(tb.iterdir())
    _launch(tb, 1, []).close()  # a finished run's relaunch that logs nothing
    _launch(tb, 1, [("val/acc", 0.25, 1)]).close()  # ... or validates again with the same value
    assert set(tb.iterdir()) == files
    # Held back at the resumed step, a new value reaches the disk at flush (the save that follows).
    writer = _launch(tb, 1, [("val/acc", 0.5, 1)])
    writer.flush()
    assert _scalars(tb)["val/acc"] == [(1, 0.5)] and _scalars(tb)["train/loss"] == [(1, 1.0)]
    writer.close()


def test_a_nan_logged_again_at_the_resumed_step_is_the_same_point(tmp_path):
    tb = tmp_path / "tensorboard"
    _launch(tb, 0, [("train/loss", float("nan"), 1)]).close()
    files = set(tb.iterdir())
    _launch(tb, 1, [("train/loss", float("nan"), 1)]).close()
    assert set(tb.iterdir()) == files
    [(step, value)] = _scalars(tb)["train/loss"]
    assert step == 1 and math.isnan(value)


def test_other_ranks_get_a_writer_that_writes_nothing(tmp_path):
    writer = build_tb_writer(tmp_path, rank=1, resumed_step=5)
    writer.add_scalar("train/loss", 1.0, 6)
    writer.flush()
    writer.close()
    assert not (tmp_path / "tensorboard").exists()
