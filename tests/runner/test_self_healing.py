"""Self-healing, end to end: a poisoned batch (NaN pixels in a few training images) makes a step's loss
non-finite on every rank at once; the run rolls back to its newest checkpoint, skips that step's samples
for the rest of the run, records the skip, finishes with finite weights, and a relaunch from one of its
later checkpoints ends bit-identical. With no rollback left, it stops with an error naming the samples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from linnaeus.config import load_config
from linnaeus.data.build import build_data
from tests.checkpoint.formats.sharded.test_resharding import _all_tensors
from tests.conftest import REPO, TINY_CFG, VENV_BIN, tiny_args

HELPER = REPO / "tests" / "helpers" / "poisoned_train.py"
BATCH = 8  # tests/configs/tiny.yaml
STEP_OPTS = ("CHECKPOINT.INTERVAL", "5st", "CHECKPOINT.FILENAME", "checkpoint_step_{step}.pth")


def _train(out: Path, toy_root: Path, poison: list[int], *opts: str, nproc: int = 1,
           name: str = "tiny") -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(HELPER)] if nproc == 1 else \
        [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", str(HELPER)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "LINNAEUS_TEST_POISON": ",".join(map(str, poison))}
    return subprocess.run(cmd + tiny_args(out, toy_root, *opts, name=name), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _samples_of_step(toy_root: Path, tmp_path: Path, step: int,
                     world_size: int) -> tuple[list[int], list[str], int]:
    """The training-set indices (and files) that optimizer step ``step`` of epoch 0 consumes, and the
    training set's size."""
    cfg = load_config(str(TINY_CFG), ["DATA.ROOT", str(toy_root), "ENV.OUTPUT.BASE_DIR", str(tmp_path)])
    data = build_data(cfg, 0, world_size)
    per_step = BATCH * world_size
    order = data.train_sampler.global_order(0)
    indices = order[(step - 1) * per_step: step * per_step]
    return indices, [data.train_dataset.path(i) for i in indices], len(data.train_dataset)


def _final(run: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the newest checkpoint's non-tensor state, its tensors by dotted name), single file or sharded."""
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    if latest.is_dir():
        return torch.load(latest / "state.pt", weights_only=True), _all_tensors(latest)
    state = torch.load(latest, weights_only=True, map_location="cpu")
    tensors = {f"model.{k}": v for k, v in state["model"].items()}
    for i, per_param in state["optimizer"]["state"].items():
        tensors.update({f"optimizer.state.{i}.{k}": torch.as_tensor(v) for k, v in per_param.items()})
    return state, tensors


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=pytest.mark.skipif(
    not os.environ.get("LINNAEUS_SLOW_TESTS"), reason="two more torchrun launches of FSDP2 (~30 s on 2 busy cores): "
                                                       "set LINNAEUS_SLOW_TESTS=1"))])
def test_a_poisoned_batch_is_rolled_back_skipped_and_recorded_and_a_relaunch_is_bit_identical(tmp_path, toy_root,
                                                                                               strategy):
    step_indices, _, size = _samples_of_step(toy_root, tmp_path, 7, world_size=2)
    # Both on rank 0 (rank r takes global positions r, r + 2, ...): rank 1's own loss at step 7 is finite,
    # and it must roll back at the same step all the same.
    poison = [step_indices[0], step_indices[2]]
    opts = (*STEP_OPTS, "TRAIN.STRATEGY", strategy)
    a = _train(tmp_path, toy_root, poison, *opts, nproc=2, name="a")
    assert a.returncode == 0, a.stdout[-4000:] + a.stderr[-4000:]
    log = (tmp_path / "a" / "log.txt").read_text()
    assert "Step 7 (epoch 0): non-finite loss (nan). Rolling back to the newest checkpoint (rollback 1 of " \
           "TRAIN.SPIKE.MAX_ROLLBACKS 3)" in log
    assert "Rolled back to" in log and "checkpoint_step_5" in log and "(epoch 0, step 5)" in log
    assert "Skipping the 16 sample(s) of step 7 (epoch 0) for the rest of the run" in log
    final, tensors = _final(tmp_path / "a")
    model = {k: v for k, v in tensors.items() if k.startswith("model.")}
    assert model and all(torch.isfinite(t).all() for t in model.values())
    skipped = {index: first for index, first in final["sampler"]["skip"]}
    assert skipped == {i: 0 for i in step_indices}  # the whole bad step, from epoch 0 on
    (event,) = final["healing"]["events"]
    assert (event["step"], event["epoch"], event["to_step"]) == (7, 0, 5)
    assert event["samples"] == sorted(step_indices) and event["reason"].startswith("non-finite loss")
    # Both epochs lack the 16 skipped images (16 per step).
    assert final["progress"]["step"] == 2 * ((size - 16) // 16)

    # A relaunch of the recovered run from a checkpoint after its rollback, as a new run, poisoned alike.
    ckpts = tmp_path / "a" / "checkpoints"
    mid = ckpts / ("checkpoint_step_10" if strategy == "fsdp" else "checkpoint_step_10.pth")  # sharded: a directory
    assert mid.is_dir() == (strategy == "fsdp")
    b = _train(tmp_path, toy_root, poison, *opts, "TRAIN.RESUME", str(mid), "TRAIN.AUTO_RESUME", "False",
               nproc=2, name="b")
    assert b.returncode == 0, b.stdout[-4000:] + b.stderr[-4000:]
    resumed, resumed_tensors = _final(tmp_path / "b")
    assert resumed["progress"] == final["progress"]
    assert resumed["healing"] == final["healing"] and resumed["sampler"]["skip"] == final["sampler"]["skip"]
    assert resumed_tensors.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(tensors[k], resumed_tensors[k]), f"{k} differs"


@pytest.mark.parametrize("case", ["no rollbacks left", "no checkpoint yet"])
def test_a_bad_step_that_cannot_be_healed_stops_the_run_naming_its_samples(tmp_path, toy_root, case):
    step_indices, files, _ = _samples_of_step(toy_root, tmp_path, 3, world_size=1)
    opts = ("CHECKPOINT.INTERVAL", "2st", "CHECKPOINT.FILENAME", "checkpoint_step_{step}.pth",
            "TRAIN.SPIKE.MAX_ROLLBACKS", "0") if case == "no rollbacks left" \
        else ("TRAIN.SPIKE.MAX_ROLLBACKS", "2")
    run = _train(tmp_path, toy_root, [step_indices[0]], *opts)
    assert run.returncode != 0
    assert "Training diverged at step 3 (epoch 0): non-finite loss" in run.stderr
    assert ("TRAIN.SPIKE.MAX_ROLLBACKS is 0 and the run has rolled back 0 time(s)" if case == "no rollbacks left"
            else "no committed checkpoint to roll back to yet") in run.stderr
    assert f"{step_indices[0]} ({files[0]})" in run.stderr  # the sample, by index and file
    assert "Training diverged at step 3" in (tmp_path / "tiny" / "log.txt").read_text()
    # Nothing of the bad step was saved: the newest checkpoint (if any) is the one before it.
    saved = sorted((tmp_path / "tiny" / "checkpoints").glob("*.pth"))
    assert [p.name for p in saved] == (["checkpoint_step_2.pth"] if case == "no rollbacks left" else [])
