"""The runner end to end: real processes (python and torchrun), real files, real TensorBoard events."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import REPO, TINY_CFG, run_train


def _events(run: Path) -> list[Path]:
    return list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_torchrun_two_processes_trains_evaluates_and_writes_run_dir(tmp_path, toy_root):
    proc = run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "1", "CHECKPOINT.KEEP_LAST_N", "1", nproc=2)
    run = tmp_path / "tiny"
    assert (run / "config.yaml").is_file()
    log = (run / "log.txt").read_text()
    assert "world size 2" in log
    assert "node-local" not in log  # both ranks see one run dir: nothing to say
    assert "val/acc1/species" in log
    assert "starting fresh" in log
    assert _events(run), "no TensorBoard event file"
    ckpt = run / "checkpoints" / "checkpoint_epoch_1.pth"
    assert ckpt.is_file() and (run / "checkpoints" / "checkpoint_epoch_1.pth.sha256").is_file()
    assert (run / "checkpoints" / "latest").read_text().strip() == "checkpoint_epoch_1.pth"
    assert f"Saved checkpoint {ckpt}" in log
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert state["meta"]["world_size"] == 2
    assert len(state["rng"]) == 2  # every rank's RNG
    assert state["progress"]["epoch"] == 1
    assert "val top-1" in proc.stdout + proc.stderr
    # The end-of-run report's class lines add up both ranks' shares: the toy data has two families,
    # so the family line lists both, with every validation image between them.
    families = re.search(r"val family: worst classes (.*); most confused siblings", log).group(1)
    shown = re.findall(r"(\w+) (\d+)% of (\d+)", families)
    assert sorted(name for name, _, _ in shown) == ["angular", "round"]
    last = state["metrics"]["history"][-1]
    assert sum(int(n) for _, _, n in shown) == last["val/samples"]
    right = sum(int(p) / 100 * int(n) for _, p, n in shown)  # percentages rounded: within an image per class
    assert abs(right - last["val/acc1/family"] * last["val/samples"]) <= len(shown)


def test_rerun_of_a_finished_run_resumes_and_does_not_train_again(tmp_path, toy_root):
    run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "1", "TRAIN.MAX_STEPS_PER_EPOCH", "3")
    proc = run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "1", "TRAIN.MAX_STEPS_PER_EPOCH", "3")
    ckpt = tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth"
    assert f"Resumed from {ckpt} (epoch 1, step 3)" in proc.stderr + proc.stdout
    # Raising TRAIN.EPOCHS on a finished run trains further.
    proc = run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "2", "TRAIN.MAX_STEPS_PER_EPOCH", "3")
    state = torch.load(tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_2.pth", weights_only=True)
    assert state["progress"] == {"epoch": 2, "step": 6, "epoch_step": 0, "samples": 6 * 8}


def test_config_error_exits_nonzero_naming_the_key(tmp_path, toy_root):
    proc = run_train(tmp_path, toy_root, "TRAIN.EPOCH", "1", check=False)
    assert proc.returncode != 0
    assert "TRAIN.EPOCH" in proc.stderr and "TRAIN.EPOCHS" in proc.stderr


def test_failure_on_a_rank_exits_nonzero_with_the_error(tmp_path):
    bad = tmp_path / "data"
    (bad / "only_class").mkdir(parents=True)
    (bad / "taxonomy.json").write_text(json.dumps({"only_class": {"genus": "g", "family": "f"}}))
    proc = run_train(tmp_path, bad, "DATA.DATASET", "imagefolder", nproc=2, check=False)
    assert proc.returncode != 0
    assert "only_class" in proc.stderr  # the empty class folder is named


def test_train_py_runs_from_repo_root_with_the_documented_command(tmp_path, toy_root):
    cmd = [sys.executable, "tools/train.py", "--cfg", str(TINY_CFG), "--opts", "ENV.OUTPUT.BASE_DIR", str(tmp_path),
           "TRAIN.EPOCHS", "1", "TRAIN.MAX_STEPS_PER_EPOCH", "2", "DATA.ROOT", str(toy_root)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    assert (tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth").is_file()
