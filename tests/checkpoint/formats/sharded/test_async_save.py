"""Asynchronous sharded saves (CHECKPOINT.ASYNC with a sharded format) across two real torchrun
processes (gloo on CPU): the committed checkpoint holds the state at the save call although the
training overwrites it right after; a save that fails in the background raises on every rank at
the next poll and commits nothing. Host memory over 50 saves: ``benchmarks/sharded_io.py --async-saves``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from linnaeus.checkpoint.formats.sharded.load import verify_directory
from tests.checkpoint.formats.sharded.test_resharding import _all_tensors
from tests.conftest import REPO, VENV_BIN

HELPERS = REPO / "tests" / "helpers"


def _assert_saved_as_expected(path: Path, expected: Path) -> dict:
    """The committed checkpoint ``path`` verifies and holds the model and optimizer state in ``expected``
    (the gathered state a helper wrote at the save call); returns the expected model state."""
    assert verify_directory(path).ok, verify_directory(path)
    saved = _all_tensors(path)
    msd, osd = torch.load(expected, weights_only=True)
    for k, v in msd.items():
        assert torch.equal(saved[f"model.{k}"], v), (path.name, k)
    for name, per_param in osd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(saved[f"optim.state.{name}.{key}"], value), (path.name, name, key)
    return msd


def test_async_sharded_saves_commit_the_state_at_save_time_and_failures_raise_on_every_rank(tmp_path: Path) -> None:
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2",
                           str(HELPERS / "sharded_async_two_ranks.py"), str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    ck = tmp_path / "ck"
    for n in (1, 2, 3):
        # Every weight was set to 1000 + n right after the save call: the old values must be on disk.
        _assert_saved_as_expected(ck / f"checkpoint_epoch_{n}", tmp_path / f"expected_{n}.pt")
    assert (ck / "latest").read_text().strip() == "checkpoint_epoch_3"
    # The failed fourth save: nothing under its final name, no temp directory left, raised on both ranks.
    assert sorted(p.name for p in ck.iterdir()) == [".lock", "checkpoint_epoch_1", "checkpoint_epoch_2",
                                                     "checkpoint_epoch_3", "latest"]
    for rank in (0, 1):
        report = (tmp_path / f"rank{rank}.txt").read_text()
        # The background saves' group gives up on a lost peer as soon as the training's (TRAIN.COLLECTIVE_TIMEOUT_S).
        assert report.startswith("group timeout: 37\n"), report
        report = report.split("\n", 1)[1]
        assert report.startswith("poll: CheckpointError") and report.endswith("done\n"), report
        assert "checkpoint_epoch_4" in report and "nothing was committed" in report and "rank 1: " in report, report
    # No FSDP2 module (which holds the process group) outlived the group: freed during interpreter
    # teardown, gloo's destructor aborted a rank now and then (exit -6) after a test that passed.
    assert [(tmp_path / f"alive.rank{r}").read_text() for r in (0, 1)] == ["0\n", "0\n"]


def test_overlapped_sharded_saves_commit_the_state_at_the_call_while_the_optimizer_steps_at_once(tmp_path: Path) -> None:
    """overlap_snapshot=True: DCP stages the parameters and optimizer state after save() returns; the
    optimizer step right after the call waits for it, and a buffer changed by the next forward was
    copied at the call. Every committed checkpoint equals the state at its save call."""
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2",
                           str(HELPERS / "sharded_overlap_two_ranks.py"), str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    for n in (1, 2, 3):
        msd = _assert_saved_as_expected(tmp_path / "ck" / f"checkpoint_epoch_{n}", tmp_path / f"expected_{n}.pt")
        assert any(k.endswith("calls") for k in msd)
    # No FSDP2 module (it holds the process group) outlived the group (tests/helpers/group_session.py).
    assert [(tmp_path / f"alive.rank{r}").read_text() for r in (0, 1)] == ["0\n", "0\n"]
