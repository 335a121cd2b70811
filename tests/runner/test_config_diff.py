"""On every resume the checkpoint's config is diffed against the current one: optimizer
hyperparameters are re-applied after the optimizer's saved state is loaded (not silently
replaced by the saved ones), architecture changes refuse, and every changed key is logged."""

from __future__ import annotations

from pathlib import Path

import torch

from linnaeus.runner.config_diff import DATA_ORDER, HONOURED, REAPPLIED, REFUSED, config_changes
from tests.conftest import run_train

SHORT = ("TRAIN.MAX_STEPS_PER_EPOCH", "2")


def _decays(path: Path) -> set[float]:
    groups = torch.load(path, weights_only=True)["optimizer"]["param_groups"]
    return {g["weight_decay"] for g in groups}


def test_changed_weight_decay_is_reapplied_and_a_model_change_refuses(tmp_path: Path, toy_root: Path) -> None:
    run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "1", *SHORT)
    ckpts = tmp_path / "tiny" / "checkpoints"
    assert _decays(ckpts / "checkpoint_epoch_1.pth") == {0.0, 0.05}  # no decay for norms and biases

    proc = run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "2", "TRAIN.OPTIMIZER.WEIGHT_DECAY", "0.5", *SHORT)
    assert "Resumed from" in proc.stdout
    # The optimizer trained epoch 2 with the new value (the saved param groups carry what it used).
    assert _decays(ckpts / "checkpoint_epoch_2.pth") == {0.0, 0.5}
    log = (tmp_path / "tiny" / "log.txt").read_text()
    assert "TRAIN.OPTIMIZER.WEIGHT_DECAY: 0.05 (checkpoint) -> 0.5: re-applied" in log
    assert "TRAIN.EPOCHS: 1 (checkpoint) -> 2: re-applied" in log

    proc = run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "3", "TRAIN.OPTIMIZER.WEIGHT_DECAY", "0.5",
                     "MODEL.HYBRID.VIT_HEADS", "4", *SHORT, check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode != 0
    assert "CheckpointIncompatibleError" in err and "MODEL.HYBRID.VIT_HEADS: 2 (checkpoint) -> 4: refused" in err, \
        err[-3000:]
    assert not (ckpts / "checkpoint_epoch_3.pth").exists()


def test_each_kind_of_change_is_classified() -> None:
    old = "MODEL:\n  DROP_RATE: 0.1\n  TYPE: hybrid\nDATA:\n  BATCH_SIZE: 8\n  TASK_KEYS: [a, b]\n" \
          "TRAIN:\n  OPTIMIZER:\n    LR: 0.1\n    NAME: adamw\n  SCHEDULER:\n    MIN_LR: 0.0\n  LOG_INTERVAL: 1\n"
    new = "MODEL:\n  DROP_RATE: 0.2\n  TYPE: timm\nDATA:\n  BATCH_SIZE: 16\n  TASK_KEYS: [a]\n" \
          "TRAIN:\n  OPTIMIZER:\n    LR: 0.2\n    NAME: sgd\n  SCHEDULER:\n    MIN_LR: 0.1\n  LOG_INTERVAL: 5\n"
    got = {c.key: c.action for c in config_changes(old, new, saved_world_size=2, world_size=1)}
    assert got == {"MODEL.DROP_RATE": HONOURED, "MODEL.TYPE": REFUSED, "DATA.BATCH_SIZE": DATA_ORDER,
                   "DATA.TASK_KEYS": REFUSED, "TRAIN.OPTIMIZER.LR": REAPPLIED, "TRAIN.OPTIMIZER.NAME": REFUSED,
                   "TRAIN.SCHEDULER.MIN_LR": REAPPLIED, "TRAIN.LOG_INTERVAL": HONOURED, "world size": DATA_ORDER}
