"""``tools/train.py --print-config`` (the resolved config, credentials redacted, nothing created) and
``--eval-only`` (the resume point evaluated as linnaeus-eval does, nothing trained)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from linnaeus.config import config_yaml, load_config
from tests.conftest import REPO, TINY_CFG, run_train, tiny_args


def test_print_config_prints_the_resolved_yaml_redacted_and_creates_nothing(tmp_path: Path) -> None:
    opts = ["ENV.OUTPUT.BASE_DIR", str(tmp_path / "out"), "TRAIN.EPOCHS", "7",
            "ENV.INPUT.BUCKET.REMOTE", ":s3,access_key_id=AKIAEXAMPLE,secret_access_key=SECRETEXAMPLE:"]
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--cfg", str(TINY_CFG), "--print-config",
                           "--opts", *opts], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["TRAIN"]["EPOCHS"] == 7 and printed["EXPERIMENT"]["SEED"] == 7  # the override, the file's value
    assert "SECRETEXAMPLE" not in proc.stdout and "AKIAEXAMPLE" not in proc.stdout
    assert proc.stdout == config_yaml(load_config(str(TINY_CFG), opts))
    assert not (tmp_path / "out").exists()  # no run dir, no log, no lock


def test_eval_only_evaluates_the_runs_latest_checkpoint_and_trains_nothing(tmp_path: Path, toy_root: Path) -> None:
    run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "1")
    checkpoints = sorted(p.name for p in (tmp_path / "tiny" / "checkpoints").iterdir())
    args = tiny_args(tmp_path, toy_root, "TRAIN.EPOCHS", "3")  # more epochs asked: still nothing trained
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *args[:2], "--eval-only", *args[2:]],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "tiny" / "eval" / "checkpoint_epoch_1" / "metrics.json").read_text())
    stored = torch.load(tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth", weights_only=True)
    assert record["metrics"] == {k: v for k, v in stored["metrics"]["history"][-1].items() if k not in ("epoch", "step")}
    assert sorted(p.name for p in (tmp_path / "tiny" / "checkpoints").iterdir()) == checkpoints
