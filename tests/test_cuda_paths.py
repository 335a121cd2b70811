"""The CUDA paths of the checkpoint library: async snapshots of GPU tensors, the CUDA RNG stream,
and the fp16 GradScaler state. Skipped without a GPU (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda_paths.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch import nn

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, collect_rng_state, restore_rng_state
from linnaeus.checkpoint.disk import AsyncWriter
from linnaeus.checkpoint.formats import commit_file
from tests.checkpoint.test_async_saves import _assert_same_tree, _build, _fill, _sharing, states

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(states)
def test_async_snapshot_of_gpu_tensors_holds_what_a_sync_save_holds(tmp_path_factory: pytest.TempPathFactory,
                                                                    spec: tuple) -> None:
    bases_spec, derived_spec, renew, seed = spec
    g = torch.Generator().manual_seed(seed)
    sync_dir, async_dir = tmp_path_factory.mktemp("sync"), tmp_path_factory.mktemp("async")
    writer = AsyncWriter("cuda-prop")
    state, bases = _build(bases_spec, derived_spec, g, device="cuda")
    for i, new_objects in enumerate(renew):
        if new_objects:
            state, bases = _build(bases_spec, derived_spec, g, device="cuda")
        frozen = writer.snapshot(state)
        writer.submit(lambda f=frozen, n=f"{i}.pth": commit_file(async_dir, n, f, update_latest=False), "save")
        commit_file(sync_dir, f"{i}.pth", state, update_latest=False)
        for t in bases:  # training goes on (on the GPU) while the async write may still be running
            _fill(t, g)
    writer.wait_idle()
    assert writer.take_error() is None
    for i in range(len(renew)):
        # A sync save of GPU tensors records their device; the snapshot is in host memory. Loaded
        # onto the CPU, both must be the same tensors with the same sharing.
        want = torch.load(sync_dir / f"{i}.pth", weights_only=True, map_location="cpu")
        got = torch.load(async_dir / f"{i}.pth", weights_only=True, map_location="cpu")
        _assert_same_tree(want, got, f"save {i}")
        assert _sharing(want) == _sharing(got), f"save {i}: tied entries differ"


def test_cuda_rng_stream_continues_after_restore() -> None:
    torch.cuda.manual_seed(123)
    torch.randn(7, device="cuda")
    saved = collect_rng_state()
    assert saved["cuda"], "the CUDA RNG state was not collected"
    expected = torch.randn(1000, device="cuda")
    torch.cuda.manual_seed(999)
    restore_rng_state(saved)
    assert torch.equal(torch.randn(1000, device="cuda"), expected)


def test_fp16_grad_scaler_state_survives_a_save_and_resume(tmp_path: Path) -> None:
    model = nn.Linear(16, 4).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 16, growth_interval=100)
    for step in range(5):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(torch.randn(8, 16, device="cuda")).float().pow(2).mean()
        if step == 1:
            loss = loss * float("inf")  # one overflow: the scale backs off, the step is skipped
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    before = scaler.state_dict()
    manager = CheckpointManager(tmp_path, CheckpointPolicy(async_save=True))
    manager.save(epoch=1, step=5, model=model, optimizer=optimizer, scaler=scaler)
    manager.close()

    model2 = nn.Linear(16, 4).cuda()
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    scaler2 = torch.amp.GradScaler("cuda")
    resumed = CheckpointManager(tmp_path, CheckpointPolicy()).resume(model=model2, optimizer=optimizer2,
                                                                     scaler=scaler2)
    assert resumed is not None and resumed.progress["step"] == 5
    assert scaler2.state_dict() == before and before["scale"] != 2.0 ** 16
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_overlapped_save_of_a_gpu_model_commits_the_state_at_the_call(tmp_path: Path) -> None:
    """CHECKPOINT.ASYNC_OVERLAP on a GPU: the deferred copy (held back here) reads the weights after the
    call returned; the step right after the call waits for it, so each file holds the state at the call."""
    import copy
    import time

    from linnaeus.checkpoint import load_verified, parse_interval
    from linnaeus.checkpoint.testing import set_test_phase_hook

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 8)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)

    def step() -> None:
        model(torch.randn(32, 64, device="cuda")).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    policy = CheckpointPolicy(interval=parse_interval("1st"), filename="ck_{step}.pth", async_save=True,
                              overlap_snapshot=True)
    expected = {}
    set_test_phase_hook(lambda phase, _: time.sleep(0.3) if phase == "snapshot-deferred" else None)
    try:
        with CheckpointManager(tmp_path, policy) as manager:
            for n in (1, 2, 3):
                step()
                expected[n] = copy.deepcopy({"model": {k: v.cpu() for k, v in model.state_dict().items()},
                                             "optimizer": opt.state_dict()})
                manager.save(epoch=0, step=n, end_of_epoch=False, model=model, optimizer=opt)
                step()  # its forward changes BatchNorm's buffers; its optimizer step waits for the copy
    finally:
        set_test_phase_hook(None)
    for n, state in expected.items():
        saved = load_verified(tmp_path / f"ck_{n}.pth")
        for k, v in state["model"].items():
            assert torch.equal(saved["model"][k].cpu(), v), (n, k)
        for i, per_param in state["optimizer"]["state"].items():
            for key, value in per_param.items():
                assert torch.equal(saved["optimizer"]["state"][i][key].cpu(), value.cpu()), (n, i, key)
