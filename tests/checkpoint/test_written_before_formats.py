"""Checkpoints written by the library before the format protocol (commit 966ac72, kept in
tests/fixtures/checkpoints_966ac72/, written by tests/fixtures/make_checkpoints_966ac72.py) still
verify, load, resume and give their weights, in both formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from linnaeus.checkpoint import CheckpointManager, verify_checkpoint
from linnaeus.checkpoint.loading import read_weights
from linnaeus.cli.ckpt import main as ckpt_main
from tests.fixtures.make_checkpoints_966ac72 import OUT, TAXONOMY, Position, training_objects

NAMES = {"file": "checkpoint_epoch_1.pth", "sharded": "checkpoint_epoch_2"}


def _copy(kind: str, directory: Path) -> Path:
    directory.mkdir()
    source = OUT / NAMES[kind]
    if source.is_dir():
        shutil.copytree(source, directory / source.name)
    else:
        shutil.copy2(source, directory / source.name)
        shutil.copy2(source.with_name(source.name + ".sha256"), directory / (source.name + ".sha256"))
    return directory / source.name


@pytest.mark.parametrize("kind", ["file", "sharded"])
def test_verifies_and_resumes_exactly(kind: str, tmp_path: Path) -> None:
    path = _copy(kind, tmp_path / "ck")
    assert verify_checkpoint(path).ok
    assert ckpt_main(["verify", str(path)]) == 0
    expected_model, expected_opt, expected_sched, _ = training_objects()

    torch.manual_seed(123)  # other initial values: everything below must come from the file
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    position = Position()
    manager = CheckpointManager(tmp_path / "ck")
    manager.taxonomy = TAXONOMY
    resumed = manager.resume(model=model, optimizer=optimizer, scheduler=scheduler, sampler=position)
    manager.close()

    assert resumed is not None and resumed.path == path
    step = 1 if kind == "file" else 2
    assert resumed.progress == {"epoch": step, "step": step, "epoch_step": 0, "samples": 4}
    for name, tensor in expected_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    got, want = optimizer.state_dict(), expected_opt.state_dict()
    assert got["param_groups"] == want["param_groups"]
    for index, entry in want["state"].items():
        for key, value in entry.items():
            assert torch.equal(got["state"][index][key], value), (index, key)
    assert scheduler.state_dict() == expected_sched.state_dict()
    assert position.consumed == 4
    assert manager.run_id == "fixture0001" and manager.run_timestamp == "20261206-000000"


@pytest.mark.parametrize("kind", ["file", "sharded"])
def test_gives_its_weights(kind: str, tmp_path: Path) -> None:
    weights = read_weights(_copy(kind, tmp_path / "ck"))
    expected = training_objects()[0].state_dict()
    assert list(weights.tensors) == list(expected)
    assert all(torch.equal(weights.tensors[k], v) for k, v in expected.items())
    assert weights.taxonomy == TAXONOMY
