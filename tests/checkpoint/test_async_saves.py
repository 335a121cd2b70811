"""Asynchronous saves: a save that has begun commits whatever the main thread does, and its
snapshot holds exactly what a synchronous save of the same state writes (issue 10, items 1-2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from collections import OrderedDict
from typing import Any, Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from timm.utils import ModelEmaV3
from torch import nn

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, verify_checkpoint
from linnaeus.checkpoint.disk import AsyncWriter, ProcessWriter
from linnaeus.checkpoint.formats import commit_file
from tests.conftest import REPO, tiny_args
from tests.helpers.tied_model import TiedLM

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------- item 1: saves in flight at exit
def test_async_save_over_32mib_in_flight_finishes_at_interpreter_exit(tmp_path: Path) -> None:
    # 48 MiB: past the background flush's first kick (every 32 MiB), which runs while the
    # interpreter is already refusing new work to concurrent.futures executors.
    code = (
        "import sys, torch; sys.path.insert(0, %r)\n"
        "from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy\n"
        "m = CheckpointManager(%r, CheckpointPolicy(async_save=True))\n"
        "m.save(epoch=1, step=1, model={'w': torch.arange(12 << 20, dtype=torch.float32)})\n"  # exit right away
    ) % (str(REPO), str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "checkpoint_epoch_1.pth"
    assert verify_checkpoint(path).ok, proc.stderr
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.arange(12 << 20, dtype=torch.float32))


def test_runner_exception_during_async_epoch_save_commits_it_and_exits_nonzero(tmp_path: Path, toy_root: Path) -> None:
    # VIT_DIM 384 makes model + AdamW moments + EMA > 32 MiB; the helper slows the write so the
    # next epoch's training raises while the epoch-1 save is still being written.
    args = tiny_args(tmp_path, toy_root, "CHECKPOINT.ASYNC", "True", "TRAIN.EMA.ENABLED", "True",
                     "MODEL.HYBRID.VIT_DIM", "384", "MODEL.HYBRID.VIT_DEPTH", "2", "TRAIN.MAX_STEPS_PER_EPOCH", "2",
                     "TRAIN.EPOCHS", "3")
    proc = subprocess.run([sys.executable, str(REPO / "tests/helpers/fail_after_async_save.py"), *args], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert "save in flight at failure: True" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "committed when run() raised: True" in proc.stdout
    assert proc.returncode != 0
    assert "RuntimeError: injected training failure after an epoch-end save began" in proc.stderr
    path = tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth"
    assert path.exists(), proc.stderr[-4000:]
    assert path.stat().st_size > 32 << 20
    assert verify_checkpoint(path).ok
    assert torch.load(path, weights_only=True)["meta"]["epoch"] == 1


# ---------------------------------------------------------------- item 2: snapshots equal sync saves
def test_tied_weights_with_ema_async_saves_hold_the_models_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedLM()
    ema = ModelEmaV3(model, decay=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    manager = CheckpointManager(tmp_path, CheckpointPolicy(async_save=True))
    expected = []
    for step in range(1, 4):
        loss = model.head(model.body(model.embed(torch.arange(10)))).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        ema.update(model, step=step)
        expected.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        manager.save(epoch=step, step=step, model=model, optimizer=opt, ema=ema)
    manager.close()
    for step, want in enumerate(expected, start=1):
        got = torch.load(tmp_path / f"checkpoint_epoch_{step}.pth", weights_only=True)
        for k, v in want.items():
            assert torch.equal(got["model"][k], v), f"save {step}: model {k} differs from the model's at that step"
        assert got["model"]["head.weight"].untyped_storage().data_ptr() == \
            got["model"]["embed.weight"].untyped_storage().data_ptr()


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8,
          torch.bool]
# How an entry derives from an earlier base tensor: the same object, another object on the
# same storage (tied parameters in a state_dict), a parameter on it, a slice, a transpose,
# an empty view, a strided view.
DERIVED = ["same", "alias", "param", "slice", "transpose", "empty", "strided"]

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)
base_spec = st.tuples(st.just("base"), st.sampled_from(DTYPES), shapes)
derived_spec = st.tuples(st.sampled_from(DERIVED), st.integers(0, 1000))
states = st.tuples(
    st.lists(base_spec, min_size=1, max_size=5),
    st.lists(derived_spec, max_size=6),
    st.lists(st.booleans(), min_size=3, max_size=3),  # per save: new tensor objects (same shapes) or the old ones
    st.integers(0, 2**16),
)


def _fill(t: torch.Tensor, g: torch.Generator) -> None:
    if t.dtype == torch.bool:
        t.copy_(torch.randint(0, 2, t.shape, generator=g).bool())
    elif t.dtype.is_floating_point:
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype))
    else:
        t.copy_(torch.randint(0, 100, t.shape, generator=g).to(t.dtype))


def _derive(kind: str, base: torch.Tensor, pick: int) -> torch.Tensor:
    if kind == "same":
        return base
    if kind == "alias":
        return base.detach()
    if kind == "param":
        return nn.Parameter(base, requires_grad=base.dtype.is_floating_point)
    if kind == "empty":
        return base.reshape(-1)[:0]
    if base.dim() == 0:
        return base.detach()
    if kind == "slice":
        return base.narrow(0, pick % max(1, base.shape[0]), min(1, base.shape[0]))
    if kind == "transpose":
        return base.transpose(0, -1)
    return base[::2]


def _build(bases_spec: list, derived_spec: list, g: torch.Generator,
           device: str = "cpu") -> tuple[dict[str, Any], list[torch.Tensor]]:
    bases = []
    for _, dtype, shape in bases_spec:
        t = torch.empty(shape, dtype=dtype, device=device)
        _fill(t, g)
        bases.append(t)
    derived = [_derive(kind, bases[pick % len(bases)], pick) for kind, pick in derived_spec]
    tensors = bases + derived
    half = (len(tensors) + 1) // 2
    # A module's state_dict: an OrderedDict whose _metadata torch.save pickles with it.
    model = OrderedDict((f"layer{i}.weight", t) for i, t in enumerate(tensors[:half]))
    model._metadata = OrderedDict([("", {"version": 1}), ("layer0", {"version": 2})])  # type: ignore[attr-defined]
    state = {
        "model": model,
        "ema": {"module": {f"layer{i}.weight": t for i, t in enumerate(tensors)}, "step": 3},
        "optimizer": {"state": {i: {"exp_avg": t, "step": torch.tensor(float(i))} for i, t in enumerate(tensors[half:])},
                      "param_groups": [{"lr": 0.1, "params": list(range(len(tensors) - half))}]},
        "extra": [tensors[-1], (tensors[0], "x")],
    }
    return state, bases


def _tensor_leaves(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in _tensor_leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in _tensor_leaves(v)]
    return []


def _assert_same_tree(a: Any, b: Any, where: str = "") -> None:
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}/{i}")
        assert getattr(a, "__dict__", None) == getattr(b, "__dict__", None), f"{where}: attributes (_metadata)"
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.stride(), a.storage_offset()) == (b.dtype, b.shape, b.stride(), b.storage_offset()), where
        assert bytes(a.untyped_storage()) == bytes(b.untyped_storage()), where
    else:
        assert a == b, where


def _sharing(tree: Any) -> list[tuple[int, int]]:
    """Which leaves share a storage, and which are the same object: as indices of first occurrence."""
    storages: dict[int, int] = {}
    objects: dict[int, int] = {}
    leaves = _tensor_leaves(tree)
    return [(storages.setdefault(t.untyped_storage().data_ptr() or -1 - i, i), objects.setdefault(id(t), i))
            for i, t in enumerate(leaves)]


@pytest.fixture(scope="module")
def process_writer() -> Iterator[ProcessWriter]:
    # One writer process for every example: later examples reuse (and drop) the slabs of earlier ones.
    writer = ProcessWriter("prop")
    writer.start()
    assert writer.wait_ready(60)
    yield writer
    writer.release_buffers()


@pytest.mark.parametrize("kind", ["thread", "process"])
@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(states)
def test_async_snapshot_writes_what_a_sync_save_writes(tmp_path_factory: pytest.TempPathFactory,
                                                      process_writer: ProcessWriter, kind: str, spec: tuple) -> None:
    bases_spec, derived_spec, renew, seed = spec
    g = torch.Generator().manual_seed(seed)
    sync_dir, async_dir = tmp_path_factory.mktemp("sync"), tmp_path_factory.mktemp("async")
    writer = AsyncWriter("prop") if kind == "thread" else process_writer
    state, bases = _build(bases_spec, derived_spec, g)
    for i, new_objects in enumerate(renew):
        if new_objects:
            state, bases = _build(bases_spec, derived_spec, g)
        frozen = writer.snapshot(state)
        writer.submit(lambda f=frozen, n=f"{i}.pth": commit_file(async_dir, n, f, update_latest=False,
                                                                 write=writer.write_file), "save")
        commit_file(sync_dir, f"{i}.pth", state, update_latest=False)
        for t in bases:  # training goes on while the async write may still be running
            _fill(t, g)
    writer.wait_idle()
    assert writer.take_error() is None
    for i in range(len(renew)):
        want = torch.load(sync_dir / f"{i}.pth", weights_only=True)
        got = torch.load(async_dir / f"{i}.pth", weights_only=True)
        _assert_same_tree(want, got, f"save {i}")
        assert _sharing(want) == _sharing(got), f"save {i}: tied entries differ"
        assert (sync_dir / f"{i}.pth").read_bytes() == (async_dir / f"{i}.pth").read_bytes(), f"save {i}"
