"""The transaction API (fairseq2-style begin/commit) writes what ``save()`` writes on the same
manager, whatever its format: a sharded manager's transaction commits a sharded directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, verify_checkpoint
from tests.helpers.counter import Counter


def _objects(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 5)).sum().backward()
    optimizer.step()
    return model, optimizer


@pytest.mark.parametrize("live", [False, True], ids=["state-dicts", "live-objects"])
def test_begin_on_a_sharded_manager_writes_a_sharded_directory(tmp_path: Path, live: bool) -> None:
    model, optimizer = _objects(0)
    position = Counter()
    position.consumed = 12
    manager = CheckpointManager(tmp_path / "ck", CheckpointPolicy(), sharded=True)
    with manager.begin(epoch=1, step=3, samples=12) as ckpt:
        ckpt["model"] = model if live else model.state_dict()
        ckpt["optimizer"] = optimizer if live else optimizer.state_dict()
        ckpt["sampler"] = position if live else position.state_dict()
    saved = manager.save(epoch=2, step=6, model=model, optimizer=optimizer, sampler=position)
    manager.close()

    # The transaction names and writes what save() does: a directory, no single file.
    assert ckpt.path == tmp_path / "ck" / "checkpoint_epoch_1" and ckpt.path.is_dir()
    assert saved == tmp_path / "ck" / "checkpoint_epoch_2" and saved.is_dir()
    assert not (tmp_path / "ck" / "checkpoint_epoch_1.pth").exists()
    assert sorted(p.name for p in ckpt.path.iterdir()) == sorted(p.name for p in saved.iterdir())
    assert verify_checkpoint(ckpt.path).ok

    restored_model, restored_opt = _objects(1)
    restored_position = Counter()
    (tmp_path / "ck" / "checkpoint_epoch_2").rename(tmp_path / "elsewhere")  # resume the transaction's
    with CheckpointManager(tmp_path / "ck", sharded=True) as again:
        resumed = again.resume(model=restored_model, optimizer=restored_opt, sampler=restored_position)
    assert resumed is not None and resumed.path == ckpt.path
    assert resumed.progress == {"epoch": 1, "step": 3, "epoch_step": 0, "samples": 12}
    assert restored_position.consumed == 12
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored_model.state_dict()[name], tensor), name
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            assert torch.equal(restored_opt.state_dict()["state"][index][key], value), (index, key)
