"""Keep-best retention with EVAL.INTERVAL > 1: a save of an epoch without validation carries no
metrics, so it never competes with (and never displaces) the evaluated best."""

from __future__ import annotations

from pathlib import Path

import torch

from linnaeus.checkpoint import CheckpointInfo
from linnaeus.checkpoint.store import plan_retention
from tests.conftest import run_train


def test_keep_best_keeps_the_evaluated_best_when_validation_runs_every_other_epoch(
        tmp_path: Path, toy_root: Path) -> None:
    # Validation after epochs 2 and 4 only. MODE max on the loss makes the earlier validation the
    # best one (the loss falls), so epoch 3's save, which saw no validation, must not take its place.
    run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "4", "EVAL.INTERVAL", "2", "CHECKPOINT.KEEP_LAST_N", "1",
              "CHECKPOINT.KEEP_BEST_N", "1", "CHECKPOINT.MONITOR", "val/loss", "CHECKPOINT.MODE", "max",
              "TRAIN.MAX_STEPS_PER_EPOCH", "3")
    ckpts = tmp_path / "tiny" / "checkpoints"
    last = torch.load(ckpts / "checkpoint_epoch_4.pth", weights_only=True)
    history = last["metrics"]["history"]
    # A file's metrics are those measured at its own step: epochs 1 and 3 were not validated.
    assert [r["epoch"] for r in history] == [2, 4], history
    for name in sorted(p.name for p in ckpts.glob("*.pth")):
        meta = torch.load(ckpts / name, weights_only=True)["meta"]
        assert (meta["metrics"] != {}) == (meta["epoch"] in (2, 4)), (name, meta["metrics"])
    loss = {r["epoch"]: r["val/loss"] for r in history}
    best = 2 if loss[2] >= loss[4] else 4  # ties keep the older file
    expected = {"checkpoint_epoch_4.pth", f"checkpoint_epoch_{best}.pth"}
    assert {p.name for p in ckpts.glob("*.pth")} == expected
    assert last["metrics"]["best"]["epoch"] == best


def _info(name: str, step: int, value: float | None) -> CheckpointInfo:
    return CheckpointInfo(path=Path(name), size=1, committed=True, kind="full", saver="checkpoint", epoch=step,
                          step=step, metrics={} if value is None else {"m": value})


def test_keep_best_ties_keep_the_older_file() -> None:
    infos = [_info("a.pth", 1, 0.5), _info("b.pth", 2, 0.5), _info("c.pth", 3, None)]
    for mode in ("max", "min"):
        doomed = plan_retention(infos, keep_last_n=1, keep_best_n=1, monitor="m", mode=mode)
        assert [i.name for i in doomed] == ["b.pth"], mode
