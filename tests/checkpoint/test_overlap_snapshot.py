"""Overlapped snapshots (``CheckpointPolicy(async_save=True, overlap_snapshot=True)``): ``save()``
returns before the parameters, the optimizer state and the EMA are copied; the training loop runs
its next forward and backward meanwhile, and the optimizer's step waits for the copy. Every committed
checkpoint must still be the state at the save call: model (with BatchNorm buffers, which the forward
right after the call changes), optimizer, EMA, GradScaler and RNG."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from timm.utils import ModelEmaV3
from torch import nn

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, load_verified, parse_interval
from linnaeus.checkpoint.errors import InvalidPolicyError
from linnaeus.checkpoint.testing import set_test_phase_hook


def _assert_same(saved: Any, expected: Any, where: str) -> None:
    if isinstance(expected, torch.Tensor):
        assert torch.equal(saved, expected), where
    elif isinstance(expected, dict):
        assert set(saved) == set(expected), where
        for k in expected:
            _assert_same(saved[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, (list, tuple)):
        assert len(saved) == len(expected), where
        for i, (a, b) in enumerate(zip(saved, expected)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        assert saved == expected, where


class _Loop:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=0.05)
        self.ema = ModelEmaV3(self.model, decay=0.5)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=256.0, growth_interval=1)

    def step(self) -> None:
        x = torch.randn(16, 8)  # draws from the RNG the checkpoint records
        loss = self.model(x).square().mean()  # train mode: BatchNorm's running stats change here
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)  # the overlapped copy is waited for here
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.model)

    def state(self) -> dict[str, Any]:
        return copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                              "ema": self.ema.state_dict(), "scaler": self.scaler.state_dict(),
                              "rng": torch.get_rng_state()})


def test_overlapped_saves_commit_the_state_at_the_call_while_the_loop_steps_right_after(tmp_path: Path) -> None:
    events: dict[int, tuple[threading.Event, threading.Event]] = {}  # per save: (entered, release)
    timeouts: list[bool] = []

    def hold_the_deferred_copy(phase: str, _: int) -> None:
        if phase == "snapshot-deferred":
            entered, release = events[max(events)]
            entered.set()
            timeouts.append(not release.wait(timeout=60))

    loop = _Loop()
    policy = CheckpointPolicy(interval=parse_interval("1st"), filename="ck_{step}.pth", async_save=True,
                              overlap_snapshot=True)
    expected = {}
    set_test_phase_hook(hold_the_deferred_copy)
    try:
        with CheckpointManager(tmp_path, policy) as manager:
            for step in (1, 2, 3):
                loop.step()
                expected[step] = loop.state()
                entered, release = events.setdefault(step, (threading.Event(), threading.Event()))
                manager.save(epoch=0, step=step, end_of_epoch=False, model=loop.model, optimizer=loop.opt,
                             ema=loop.ema, scaler=loop.scaler)
                # save() has returned while the writer holds before the deferred copy: it did not wait for it.
                assert entered.wait(timeout=60) and not release.is_set()
                threading.Timer(0.3, release.set).start()
                loop.step()  # forward and backward run now; the optimizer step waits for the copy
            assert manager.wait_snapshot() is None
    finally:
        set_test_phase_hook(None)
    assert timeouts == [False, False, False]
    for step, state in expected.items():
        saved = load_verified(tmp_path / f"ck_{step}.pth")
        for key in ("model", "optimizer", "ema", "scaler"):
            _assert_same(saved[key], state[key], f"step {step}: {key}")
        assert torch.equal(saved["rng"][0]["torch"], state["rng"]), f"step {step}: rng"


def test_overlap_without_async_is_refused_naming_both_fields() -> None:
    with pytest.raises(InvalidPolicyError) as e:
        CheckpointPolicy(overlap_snapshot=True)
    assert e.value.field == "overlap_snapshot" and "async_save" in str(e.value)
