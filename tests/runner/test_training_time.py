"""``CHECKPOINT.INTERVAL: 3s`` under torchrun with 2 workers whose clocks disagree: every rank saves
at the same steps (rank 0's clock decides), and the training time survives a preemption and relaunch.

Each rank's clock is a test instrument (tests/helpers/sharded_ids_train.py): rank 0's reads one second
per consumed batch, rank 1's fifty. Were a rank to decide by its own clock, rank 1 would save at every
step alone, and its save's collectives would meet rank 0's training step instead.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from linnaeus.cli.ckpt import main as ckpt_main
from tests.conftest import REPO, VENV_BIN, run_train, tiny_args

HELPER = REPO / "tests" / "helpers" / "sharded_ids_train.py"


def _launch(tmp: Path, toy_root: Path, launch: str, sigterm_at: int = 0) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LINNAEUS_TEST_IDS": str(tmp / "ids"),
           "LINNAEUS_TEST_SIGTERM_AT": str(sigterm_at), "LINNAEUS_TEST_CLOCK": "1,50",
           "LINNAEUS_TEST_SAVES": str(tmp / f"saves-{launch}")}
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(HELPER),
           *tiny_args(tmp / "run", toy_root, "TRAIN.EPOCHS", "1", "TRAIN.MAX_STEPS_PER_EPOCH", "8",
                      "CHECKPOINT.INTERVAL", "3s", "TRAIN.COLLECTIVE_TIMEOUT_S", "60")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def _saves(tmp: Path, launch: str) -> list[list[int]]:
    return [[int(x) for x in (tmp / f"saves-{launch}.rank{r}").read_text().split()] for r in (0, 1)]


def _clock(path: Path) -> dict:
    return torch.load(path, weights_only=True)["clock"]


def test_every_rank_saves_at_rank_0s_training_time_which_survives_a_relaunch(tmp_path: Path, toy_root: Path) -> None:
    ckpts = tmp_path / "run" / "tiny" / "checkpoints"
    out = _launch(tmp_path, toy_root, "a", sigterm_at=4)
    assert "Preempted at epoch 0 step 4" in out
    # Step 3 (3 s of training) by the interval, step 4 by the preemption: on both ranks.
    assert _saves(tmp_path, "a") == [[3, 4], [3, 4]]
    assert _clock(ckpts / "checkpoint_epoch_0_step_3.pth") == {"elapsed_ms": 3000}
    assert _clock(ckpts / "checkpoint_epoch_0_step_4.pth") == {"elapsed_ms": 4000}

    out = _launch(tmp_path, toy_root, "b")
    assert "Resumed from" in out and "checkpoint_epoch_0_step_4.pth (epoch 0, step 4)" in out, out[-3000:]
    # The relaunch goes on from 4 s: the next multiple of 3 s is step 6, not step 7 (4 + 3 from zero);
    # then the end of training.
    assert _saves(tmp_path, "b") == [[6, 8], [6, 8]]
    assert _clock(ckpts / "checkpoint_epoch_0_step_6.pth") == {"elapsed_ms": 6000}
    assert _clock(ckpts / "checkpoint_epoch_1.pth") == {"elapsed_ms": 8000}
    assert sorted(p.name for p in ckpts.glob("*.pth")) == [
        "checkpoint_epoch_0_step_3.pth", "checkpoint_epoch_0_step_4.pth", "checkpoint_epoch_0_step_6.pth",
        "checkpoint_epoch_1.pth"]


def test_a_checkpoint_without_training_time_resumes_and_counts_from_the_relaunch(tmp_path: Path,
                                                                                 toy_root: Path) -> None:
    """Checkpoints written before training time was stored resume as before; the count starts at the relaunch."""
    run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "1", "TRAIN.MAX_STEPS_PER_EPOCH", "2")
    ck = tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth"
    state = torch.load(ck, weights_only=True)
    assert set(state["clock"]) == {"elapsed_ms"}
    del state["clock"]  # as an older linnaeus wrote it
    torch.save(state, ck)
    ck.with_name(ck.name + ".sha256").unlink()
    assert ckpt_main(["adopt", str(ck.parent)]) == 0
    proc = run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "2", "TRAIN.MAX_STEPS_PER_EPOCH", "2")
    log = proc.stdout + proc.stderr
    assert "Resumed from" in log and "records no training time (saved by an older linnaeus)" in log, log[-3000:]
    assert torch.load(ck.with_name("checkpoint_epoch_2.pth"), weights_only=True)["clock"]["elapsed_ms"] > 0
