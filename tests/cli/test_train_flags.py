"""``tools/train.py --print-config`` (the resolved config, credentials redacted, nothing created),
``--eval-only`` (the resume point evaluated as linnaeus-eval does, nothing trained) and ``--dry-run``
(what the launch would do, tried in a temporary directory, nothing written to the run dir)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from linnaeus.config import config_yaml, load_config
from tests.conftest import REPO, TINY_CFG, TRAINED_NAME, trained_args


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


def test_eval_only_evaluates_the_runs_latest_checkpoint_and_trains_nothing(trained_demo: Path, toy_root: Path) -> None:
    run = trained_demo / TRAINED_NAME
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    args = trained_args(trained_demo, toy_root, "TRAIN.EPOCHS", "4")  # more epochs: still none trained
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *args[:2], "--eval-only", *args[2:]],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run / "eval" / "checkpoint_epoch_2" / "metrics.json").read_text())
    stored = torch.load(run / "checkpoints" / "checkpoint_epoch_2.pth", weights_only=True)
    assert record["metrics"] == {k: v for k, v in stored["metrics"]["history"][-1].items() if k not in ("epoch", "step")}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == checkpoints


def test_dry_run_says_what_the_launch_would_do_tries_it_and_writes_nothing(trained_demo: Path, toy_root: Path) -> None:
    run = trained_demo / TRAINED_NAME
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    stored = torch.load(run / "checkpoints" / "checkpoint_epoch_2.pth", weights_only=True)["progress"]
    args = trained_args(trained_demo, toy_root, "TRAIN.EPOCHS", "3")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *args[:2], "--dry-run", *args[2:]],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"Run dir: {run} (exists)" in out and "World size: 1; strategy ddp" in out
    assert f"-> {stored['step'] // 2} optimizer steps per epoch, 3 epochs" in out  # two epochs trained
    assert (f"Start: resume from {run / 'checkpoints' / 'checkpoint_epoch_2.pth'} (epoch 2, step {stored['step']}); "
            "1 epoch(s) left") in out
    assert "Checkpoints: every 1ep as checkpoint_epoch_{epoch}.pth" in out
    assert "Dry run: 2 steps trained, validated and saved in" in out
    scratch = re.search(r"saved in (\S+) \(removed\)", out).group(1)
    assert not Path(scratch).exists()
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # not a byte written, added or removed in the run dir
