"""Pretrained components through the real runner: resolved by bare name, loaded before the DDP
wrap and identical on every rank, reported in load_report.json, skipped on resume, strict fails."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch

from tests.conftest import run_train

# LR 0 end to end (warmup, peak, floor): the saved weights are exactly what was loaded.
FROZEN = ("TRAIN.OPTIMIZER.LR", "0.0", "TRAIN.SCHEDULER.WARMUP_LR", "0.0", "TRAIN.SCHEDULER.MIN_LR", "0.0")


def _save_convnext(cache: Path, name: str, variant: str = "convnext_atto") -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    state = timm.create_model(variant, num_classes=1000).state_dict()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(state, cache / name)
    return state


def test_component_loads_on_all_ranks_and_resume_skips_it(tmp_path, toy_root):
    src = _save_convnext(tmp_path / "cache", "convnext_atto_in1k.pth")
    opts = ("MODEL.PRETRAINED_CONVNEXT", "convnext_atto_in1k.pth", "TRAIN.EPOCHS", "1",
            "TRAIN.MAX_STEPS_PER_EPOCH", "2", *FROZEN)
    proc = run_train(tmp_path, toy_root, *opts, nproc=2)
    run = tmp_path / "tiny"
    [report] = json.loads((run / "load_report.json").read_text())
    assert report["component"] == "convnext" and report["ok"]
    assert report["counts"]["missing"] == 0 and report["counts"]["unexpected_issues"] == 0
    assert report["loaded_by_prefix"] == {"stem.0": 2, "stem.1": 2, "stages.0": 18}
    assert "[convnext]" in proc.stdout + proc.stderr

    # Rank 0 saved the DDP model after two (frozen) steps: the loaded tensors, bit for bit.
    # DDP keeps ranks identical, so rank 1 trained from the same weights.
    state = torch.load(run / "checkpoints" / "checkpoint_epoch_1.pth", weights_only=True)
    for k in ("stem.0.weight", "stages.0.blocks.1.conv_dw.weight", "stages.0.blocks.1.gamma"):
        assert torch.equal(state["model"][k], src[k]), k

    # The relaunch resumes from its own checkpoint: the pretrained file is not even looked up.
    (tmp_path / "cache" / "convnext_atto_in1k.pth").unlink()
    proc = run_train(tmp_path, toy_root, *opts[:3], "2", *opts[4:], nproc=2)
    out = proc.stdout + proc.stderr
    assert "Resumed from " in out and "[convnext]" not in out


def test_strict_component_mismatch_fails_before_training(tmp_path, toy_root):
    _save_convnext(tmp_path / "cache", "pico.pth", variant="convnext_pico")  # wider than atto
    proc = run_train(tmp_path, toy_root, "MODEL.PRETRAINED_CONVNEXT", "pico.pth",
                     "MODEL.PRETRAINED_STRATEGY", "strict", check=False)
    assert proc.returncode != 0
    assert "CheckpointIncompatibleError" in proc.stderr and "pico.pth" in proc.stderr
    assert "stem.0.weight" in proc.stderr  # the report names the offending tensors
    assert not (tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth").exists()
