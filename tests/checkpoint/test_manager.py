"""CheckpointManager as a training loop uses it: exact resume, policy, retention, async, DDP."""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from linnaeus.checkpoint import (
    CheckpointError,
    CheckpointIncompatibleError,
    CheckpointManager,
    CheckpointPolicy,
    InvalidOperationError,
    list_checkpoints,
    parse_interval,
    read_latest,
    verify_checkpoint,
)
from linnaeus.checkpoint.disk import LOCK_NAME
from tests.conftest import REPO, poll_until_raises
from tests.helpers.counter import Counter as CountingSampler

TORCHRUN = Path(sys.executable).parent / "torchrun"


def _components(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = CosineLRScheduler(optimizer, t_initial=20, warmup_t=3, warmup_lr_init=1e-4, t_in_epochs=False)
    scaler = torch.amp.GradScaler("cpu")
    return model, optimizer, scheduler, scaler, CountingSampler()


def _train_step(step: int, model, optimizer, scheduler, scaler, sampler) -> None:
    # Data and dropout both draw from the global RNGs, so resume is exact only if RNG state is restored.
    x = torch.randn(4, 8) + float(np.random.rand()) + random.random()
    loss = model(x).pow(2).mean()
    optimizer.zero_grad()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step_update(step)
    sampler.consumed += 4


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_resume_continues_exactly(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(1)
    objs = _components()
    for step in range(1, 7):
        _train_step(step, *objs)
    uninterrupted = _params(objs[0])

    random.seed(1), np.random.seed(1)
    objs = _components()
    manager = CheckpointManager(tmp_path, CheckpointPolicy(interval=parse_interval("3st"), filename="s{step}.pth"),
                                config="MODEL:\n  TYPE: hybrid\n")
    for step in range(1, 4):
        _train_step(step, *objs)
        if manager.should_save(epoch=0, step=step, end_of_epoch=False):
            model, optimizer, scheduler, scaler, sampler = objs
            manager.save(epoch=0, step=step, epoch_step=step, samples=4 * step, end_of_epoch=False, model=model,
                         optimizer=optimizer, scheduler=scheduler, scaler=scaler, sampler=sampler)
    for _ in range(5):  # the "crashed" process wanders on; nothing of this may leak into the resume
        torch.randn(100), np.random.rand(), random.random()

    fresh = _components(seed=123)
    resumed = CheckpointManager(tmp_path, manager.policy).resume(
        model=fresh[0], optimizer=fresh[1], scheduler=fresh[2], scaler=fresh[3], sampler=fresh[4])
    assert resumed is not None and resumed.path == tmp_path / "s3.pth"
    assert resumed.progress == {"epoch": 0, "step": 3, "epoch_step": 3, "samples": 12}
    assert fresh[4].consumed == 12
    for step in range(4, 7):
        _train_step(step, *fresh)
    for a, b in zip(uninterrupted, _params(fresh[0])):
        assert torch.equal(a, b)


def test_anatomy_loads_with_weights_only(tmp_path: Path) -> None:
    model, optimizer, scheduler, scaler, sampler = _components()
    manager = CheckpointManager(tmp_path, CheckpointPolicy(monitor="val/acc1"), config="A: 1\n", run_id="run42")
    path = manager.save(epoch=2, step=50, epoch_step=25, samples=200, metrics={"val/acc1": torch.tensor(71.5)},
                        model=nn.parallel.DataParallel(model), optimizer=optimizer, scheduler=scheduler,
                        scaler=scaler, sampler=sampler)
    state = torch.load(path, weights_only=True)
    assert set(state) == {"model", "optimizer", "scheduler", "scaler", "sampler", "progress", "rng", "metrics",
                          "config", "meta"}
    assert not any(k.startswith("module.") for k in state["model"])
    assert state["progress"] == {"epoch": 2, "step": 50, "epoch_step": 25, "samples": 200}
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"} and len(state["rng"]) == 1
    assert state["metrics"]["history"] == [{"epoch": 2, "step": 50, "val/acc1": 71.5}]
    assert state["metrics"]["best"]["value"] == 71.5
    assert state["config"] == "A: 1\n"
    meta = state["meta"]
    for key in ("format_version", "linnaeus_version", "torch_version", "world_size", "created", "run_id"):
        assert key in meta
    assert meta["run_id"] == "run42" and meta["kind"] == "full" and meta["world_size"] == 1
    assert read_latest(tmp_path) == path.name
    assert (tmp_path / f"{path.name}.sha256").read_text().splitlines()[0].endswith(f"  {path.name}")


def test_policy_decisions_and_names(tmp_path: Path) -> None:
    m = CheckpointManager(tmp_path, CheckpointPolicy(interval=parse_interval("2ep")), experiment="exp")
    assert [e for e in range(1, 7) if m.should_save(epoch=e, step=e * 10, end_of_epoch=True)] == [2, 4, 6]
    assert not m.should_save(epoch=2, step=20, end_of_epoch=False)
    assert m.should_save(epoch=3, step=30, end_of_epoch=True, is_last=True)
    assert m.filename_for(epoch=3, step=30) == "checkpoint_epoch_3.pth"
    assert m.filename_for(epoch=3, step=37, end_of_epoch=False) == "checkpoint_epoch_3_step_37.pth"
    steps = CheckpointManager(tmp_path, CheckpointPolicy(interval=parse_interval("500st"),
                                                         filename="{experiment}_{step}_{val_acc:.1f}.pth"),
                              experiment="exp")
    assert steps.should_save(epoch=0, step=1000, end_of_epoch=False)
    assert steps.filename_for(epoch=0, step=1000, end_of_epoch=False, metrics={"val/acc": 0.25}) == "exp_1000_0.2.pth"
    last_only = CheckpointManager(tmp_path, CheckpointPolicy(save_last_only=True))
    assert not last_only.should_save(epoch=1, step=10, end_of_epoch=True)
    assert last_only.should_save(epoch=5, step=50, end_of_epoch=True, is_last=True)
    with pytest.raises(ValueError, match="step"):
        CheckpointPolicy(interval=parse_interval("500st"), filename="ckpt_{epoch}.pth")


def test_metric_field_missing_at_save_time_is_a_clear_error(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, CheckpointPolicy(filename="ckpt_{epoch}_{val_acc1_species:.3f}.pth"))
    with pytest.raises(InvalidOperationError) as err:
        manager.save(epoch=1, step=10, metrics={"val/loss": 0.5, "train/loss": 0.7}, model=nn.Linear(2, 2))
    text = str(err.value)
    assert "{val_acc1_species}" in text and "val/loss" in text and "train/loss" in text
    assert "epoch 1, step 10" in text and str(tmp_path) in text
    with pytest.raises(InvalidOperationError, match="has no metrics"):
        manager.save(epoch=1, step=10, model=nn.Linear(2, 2))
    assert os.listdir(tmp_path) == [LOCK_NAME]  # the writer lock, nothing of the saves
    # Nothing is left open: the next save with the metric works.
    path = manager.save(epoch=1, step=10, metrics={"val/acc1/species": 0.51234}, model=nn.Linear(2, 2))
    assert path.name == "ckpt_1_0.512.pth" and verify_checkpoint(path).ok


def test_meta_extra_may_not_replace_core_meta(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    with pytest.raises(InvalidOperationError, match=r"sets \['format_version'\].*my_format_version"):
        with manager.begin(epoch=1, step=10) as ckpt:
            ckpt["model"] = nn.Linear(2, 2)
            ckpt.meta_extra["format_version"] = 99
    assert os.listdir(tmp_path) == [LOCK_NAME]  # the writer lock, nothing of the save
    with manager.begin(epoch=1, step=10) as ckpt:
        ckpt["model"] = nn.Linear(2, 2)
        ckpt.meta_extra["dataset_hash"] = "abc"
    meta = torch.load(ckpt.path, weights_only=True)["meta"]
    assert meta["dataset_hash"] == "abc" and meta["format_version"] == 1


def _save(manager: CheckpointManager, epoch: int, acc: float | None = None, model: nn.Module | None = None) -> Path:
    model = model or nn.Linear(2, 2)
    return manager.save(epoch=epoch, step=epoch * 10, metrics={"acc": acc} if acc is not None else None, model=model)


def test_retention_survives_restarts_and_keeps_best_and_protected(tmp_path: Path) -> None:
    policy = CheckpointPolicy(keep_last_n=2, keep_best_n=1, monitor="acc", mode="max")
    first = CheckpointManager(tmp_path, policy)
    for epoch, acc in [(1, 50.0), (2, 90.0), (3, 60.0)]:
        _save(first, epoch, acc)
    names = lambda: sorted(p.name for p in tmp_path.glob("*.pth"))  # noqa: E731
    assert names() == ["checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth", "checkpoint_epoch_3.pth"][1:]

    # A new process (new manager) resumes from epoch 3: protected while a relaunch would resume it,
    # an older checkpoint like any other once a newer one has committed.
    second = CheckpointManager(tmp_path, CheckpointPolicy(keep_last_n=1))
    older = tmp_path / "checkpoint_epoch_2.pth"
    second.restore(second.load(older), path=older, model=nn.Linear(2, 2))
    second.apply_retention()
    assert names() == ["checkpoint_epoch_2.pth", "checkpoint_epoch_3.pth"]  # resumed from, and the newest
    second.close()
    second = CheckpointManager(tmp_path, policy)
    resumed = second.resume(model=nn.Linear(2, 2))
    assert resumed.path.name == "checkpoint_epoch_3.pth" and second.best["value"] == 90.0
    for epoch, acc in [(4, 10.0), (5, 20.0), (6, 30.0)]:
        _save(second, epoch, acc)
    assert names() == ["checkpoint_epoch_2.pth", "checkpoint_epoch_5.pth", "checkpoint_epoch_6.pth"]
    # Mode min keeps the lowest; files of the old run are judged from what is on disk.
    third = CheckpointManager(tmp_path, CheckpointPolicy(keep_last_n=1, keep_best_n=1, monitor="acc", mode="min"))
    _save(third, 7, 99.0)
    assert names() == ["checkpoint_epoch_5.pth", "checkpoint_epoch_7.pth"]
    assert not list(tmp_path.glob("checkpoint_epoch_6.pth.sha256"))


def test_deletion_hook_gates_and_commit_hook_sees_every_commit(tmp_path: Path) -> None:
    uploaded: set[str] = set()
    committed: list[str] = []
    manager = CheckpointManager(tmp_path, CheckpointPolicy(keep_last_n=1), can_delete=lambda p: p.name in uploaded,
                                on_commit=lambda p: committed.append(p.name))
    for epoch in (1, 2, 3):
        _save(manager, epoch)
    assert committed == ["checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth", "checkpoint_epoch_3.pth"]
    assert len(list(tmp_path.glob("*.pth"))) == 3  # nothing confirmed uploaded yet
    uploaded.update(committed)
    _save(manager, 4)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["checkpoint_epoch_4.pth"]


def test_two_savers_share_a_dir_without_touching_each_other(tmp_path: Path) -> None:
    full = CheckpointManager(tmp_path, CheckpointPolicy(keep_last_n=2))
    weights = CheckpointManager(tmp_path, CheckpointPolicy(filename="weights_epoch_{epoch}.pth", keep_last_n=1,
                                                           weights_only=True), name="weights")
    model = nn.Linear(3, 3)
    for epoch in range(1, 5):
        _save(full, epoch, model=model)
        _save(weights, epoch, model=model)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "checkpoint_epoch_3.pth", "checkpoint_epoch_4.pth", "weights_epoch_4.pth"]
    assert read_latest(tmp_path) == "checkpoint_epoch_4.pth"
    w = torch.load(tmp_path / "weights_epoch_4.pth", weights_only=True)
    assert set(w) == {"model", "config", "meta"} and w["meta"]["kind"] == "weights"
    assert full.find_resumable() == tmp_path / "checkpoint_epoch_4.pth"


def test_transaction_commits_or_discards(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager = CheckpointManager(tmp_path)
    with caplog.at_level(logging.INFO, logger="linnaeus.checkpoint"):
        with manager.begin(epoch=1, step=5, metrics={"loss": 0.5}) as ckpt:
            ckpt["model"] = nn.Linear(2, 2).state_dict()
            ckpt["extra_thing"] = torch.arange(3)
    assert ckpt.committed and verify_checkpoint(ckpt.path).ok
    assert f"Saved checkpoint {ckpt.path}" in caplog.messages
    assert torch.equal(torch.load(ckpt.path, weights_only=True)["extra_thing"], torch.arange(3))

    with pytest.raises(RuntimeError, match="boom"):
        with manager.begin(epoch=2, step=10) as ckpt:
            ckpt["model"] = nn.Linear(2, 2).state_dict()
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == [LOCK_NAME, "checkpoint_epoch_1.pth", "checkpoint_epoch_1.pth.sha256",
                                            "latest"]

    txn = manager.begin(epoch=3, step=15)
    with pytest.raises(InvalidOperationError, match="still open"):
        manager.begin(epoch=3, step=15)
    txn.abort()
    with pytest.raises(InvalidOperationError, match="no 'model'"):
        with manager.begin(epoch=3, step=15):
            pass
    manager.close()
    with pytest.raises(InvalidOperationError, match="closed"):
        _save(manager, 4)


def test_incompatible_model_lists_differences(tmp_path: Path) -> None:
    path = _save(CheckpointManager(tmp_path), 1, model=nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)))
    other = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 1))
    manager = CheckpointManager(tmp_path)
    with pytest.raises(CheckpointIncompatibleError) as err:
        manager.restore(manager.load(path), path=path, model=other)
    text = str(err.value)
    assert "1.weight: checkpoint (2, 8) vs model (5, 8)" in text and "3.weight" in text and str(path) in text
    with pytest.raises(CheckpointIncompatibleError, match="checkpoint_epoch_1.pth"):
        manager.restore(manager.load(path), model=other)
    with pytest.raises(CheckpointIncompatibleError, match="no 'optimizer' state"):
        manager.restore(manager.load(path), optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1))


def test_async_save_snapshots_state_and_commits_in_background(tmp_path: Path) -> None:
    model = nn.Linear(64, 64)
    with torch.no_grad():
        model.weight.fill_(1.0)
    manager = CheckpointManager(tmp_path, CheckpointPolicy(async_save=True, keep_last_n=1))
    path = manager.save(epoch=1, step=1, model=model)
    with torch.no_grad():
        model.weight.fill_(2.0)  # training goes on while the writer works
    manager.wait()
    assert verify_checkpoint(path).ok
    assert bool((torch.load(path, weights_only=True)["model"]["weight"] == 1.0).all())
    path2 = manager.save(epoch=2, step=2, model=model)
    manager.close()
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [path2.name]
    with pytest.raises(InvalidOperationError):
        manager.save(epoch=3, step=3, model=model)


def test_async_errors_surface_on_next_poll_and_close(tmp_path: Path) -> None:
    def hook(p: Path) -> None:
        raise OSError(f"upload queue refused {p.name}")

    manager = CheckpointManager(tmp_path / "a", CheckpointPolicy(async_save=True), on_commit=hook)
    _save(manager, 1)
    err = poll_until_raises(manager.poll, CheckpointError)
    assert "upload queue refused checkpoint_epoch_1.pth" in str(err)
    manager.poll()  # reported once

    # A real I/O failure: the target dir is replaced by a regular file.
    target = tmp_path / "b"
    manager = CheckpointManager(target, CheckpointPolicy(async_save=True))
    shutil.rmtree(target)  # its writer lock file included
    target.write_text("not a dir")
    _save(manager, 1)
    assert "checkpoint_epoch_1.pth" in str(poll_until_raises(manager.poll, CheckpointError))
    _save(manager, 2)
    with pytest.raises(CheckpointError, match="checkpoint_epoch_2.pth"):
        manager.close()


def test_async_save_in_flight_finishes_at_interpreter_exit(tmp_path: Path) -> None:
    code = (
        "import sys, torch; sys.path.insert(0, %r)\n"
        "from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy\n"
        "m = CheckpointManager(%r, CheckpointPolicy(async_save=True))\n"
        "m.save(epoch=1, step=1, model={'w': torch.zeros(4 << 20)})\n"  # no wait()/close(): exit right away
    ) % (str(REPO), str(tmp_path))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert verify_checkpoint(tmp_path / "checkpoint_epoch_1.pth").ok


def test_ddp_ranks_agree_on_saves_and_failures(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(REPO / "tests/helpers/ddp_ckpt.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    ckpt = tmp_path / "checkpoints" / "checkpoint_epoch_1.pth"
    for rank in (0, 1):
        assert f"rank {rank} saved {ckpt} exists=True" in out, out[-4000:]
        assert f"rank {rank} resumable {ckpt}" in out
        assert f"rank {rank} transaction aborted" in out and f"rank {rank} epoch2 exists=False" in out
        assert f"rank {rank} async raised=True" in out
        assert f"rank {rank} raised CheckpointError" in out and "FileExistsError" in out
        # Names with {rank}/{timestamp} are rendered on rank 0: every rank reports rank 0's file.
        assert f"rank {rank} ranked path r0_" in out and f"rank {rank} ranked path exists=True" in out
        assert f"rank {rank} naming raised InvalidOperationError" in out
    assert "rank 0 rng entries=2 differ=True" in out
    lineages = set(re.findall(r"^rank [01] lineage (\S+ \S+)$", out, flags=re.MULTILINE))
    assert len(lineages) == 1, out[-4000:]  # one run id and start on every rank: rank 0's
    ranked = set(re.findall(r"^rank [01] ranked path (r0_\S+\.pth)$", out, flags=re.MULTILINE))
    assert len(ranked) == 1, out[-4000:]
    assert "unexpectedly survived" not in out
    assert proc.returncode != 0


def test_the_checkpoint_resumed_from_is_kept_only_until_a_newer_one_commits(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    with CheckpointManager(tmp_path, CheckpointPolicy(keep_last_n=1)) as manager:
        manager.save(epoch=1, step=1, model=model)
    with CheckpointManager(tmp_path, CheckpointPolicy(keep_last_n=1)) as manager:
        assert manager.resume(model=model) is not None
        for epoch in (2, 3, 4):
            manager.save(epoch=epoch, step=epoch, model=model)
    assert [i.name for i in list_checkpoints(tmp_path)] == ["checkpoint_epoch_4.pth"]
