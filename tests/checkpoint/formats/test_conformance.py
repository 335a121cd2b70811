"""What every checkpoint format must do, run over each registered format: save, list, verify,
load, restore, read its weights, retention, the lineage digest, transactions, upload and fetch in
commit order (marker last), a killed save's leftovers and their cleanup, a damaged copy, delete,
move, adopt. A new format is added by registering it and giving it a case in ``CASES``: this
suite is what it must pass (``test_every_registered_format_has_a_case`` fails until it has one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, verify_checkpoint
from linnaeus.checkpoint.errors import CheckpointCorruptError
from linnaeus.checkpoint.formats import (
    CheckpointFormat,
    format_named,
    format_of,
    format_of_state,
    formats,
    is_checkpoint_name,
)
from linnaeus.checkpoint.remote import RemoteRun
from linnaeus.checkpoint.sources import copyto
from linnaeus.checkpoint.store import leftovers, list_checkpoints
from tests.conftest import REPO
from tests.helpers.counter import Counter

# format name -> the phase (linnaeus.checkpoint.testing) at which a save has written its payload
# under a temp name and committed nothing: where a kill leaves leftovers.
CASES = {"file": "written", "sharded": "sharded-written"}


def test_every_registered_format_has_a_case() -> None:
    assert sorted(f.name for f in formats()) == sorted(CASES)


@pytest.fixture(params=sorted(CASES))
def fmt(request: pytest.FixtureRequest) -> CheckpointFormat:
    return format_named(request.param)


def _objects(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, Counter]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2), Counter()


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, position: Counter) -> None:
    model(torch.randn(4, 6)).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    position.consumed += 4


def _run(directory: Path, fmt: CheckpointFormat, epochs: int = 2, **policy: object) -> tuple[list[Path], nn.Module]:
    model, optimizer, position = _objects()
    paths = []
    with CheckpointManager(directory, CheckpointPolicy(**policy), format=fmt.name, config="a: 1\n") as manager:
        for epoch in range(1, epochs + 1):
            _train(model, optimizer, position)
            paths.append(manager.save(epoch=epoch, step=10 * epoch, samples=4 * epoch, model=model,
                                      optimizer=optimizer, sampler=position, metrics={"val/acc": 0.1 * epoch}))
    return paths, model


def _same_weights(a: nn.Module | dict, b: nn.Module) -> bool:
    left = a.state_dict() if isinstance(a, nn.Module) else a
    return list(left) == list(b.state_dict()) and all(torch.equal(left[k], v) for k, v in b.state_dict().items())


def test_save_list_verify_load_restore_and_weights(fmt: CheckpointFormat, tmp_path: Path) -> None:
    paths, model = _run(tmp_path / "ck", fmt)
    assert [p.name for p in paths] == [fmt.entry_name(f"checkpoint_epoch_{e}.pth") for e in (1, 2)]
    assert all(format_of(p) is fmt and fmt.claims(p) for p in paths)
    infos = list_checkpoints(tmp_path / "ck")
    assert [(i.name, i.step, i.epoch, i.committed, i.readable, i.kind, i.saver) for i in infos] == [
        (paths[0].name, 10, 1, True, True, "full", "checkpoint"), (paths[1].name, 20, 2, True, True, "full", "checkpoint")]
    assert infos[1].metric("val/acc") == pytest.approx(0.2) and fmt.read_info(paths[1]).step == 20

    assert fmt.verify(paths[1]).ok and verify_checkpoint(paths[1]).ok
    state, digest = fmt.load(paths[1])
    assert fmt.owns_state(state) and format_of_state(state) is fmt
    assert digest == fmt.identity(paths[1]) == fmt.commit_files(paths[1]).identity

    restored, optimizer, position = _objects(seed=1)
    with CheckpointManager(tmp_path / "ck", format=fmt.name) as manager:
        progress = manager.restore(state, path=paths[1], model=restored, optimizer=optimizer, sampler=position)
    assert progress == {"epoch": 2, "step": 20, "epoch_step": 0, "samples": 8}
    assert _same_weights(restored, model) and position.consumed == 8
    assert _same_weights(fmt.read_weights(paths[1], use_ema=False)["model"], model)
    described = fmt.describe(paths[1])
    assert described["model"]["tensors"] == len(model.state_dict()) and described["progress"]["step"] == 20


def test_retention_and_the_lineage_digest(fmt: CheckpointFormat, tmp_path: Path) -> None:
    paths, _ = _run(tmp_path / "ck", fmt, epochs=3, keep_last_n=1)
    assert [i.name for i in list_checkpoints(tmp_path / "ck")] == [paths[-1].name]
    assert leftovers(tmp_path / "ck") == [] and all(format_of(p) is None for p in paths[:-1])

    model, optimizer, position = _objects(seed=1)
    with CheckpointManager(tmp_path / "ck", format=fmt.name) as manager:
        resumed = manager.resume(model=model, optimizer=optimizer, sampler=position)
        assert resumed is not None and resumed.path == paths[-1]
        child = manager.save(epoch=4, step=40, model=model, optimizer=optimizer, sampler=position)
    assert fmt.read_info(child).parent_sha256 == fmt.identity(paths[-1])


def test_a_transaction_writes_what_save_writes(fmt: CheckpointFormat, tmp_path: Path) -> None:
    model, optimizer, position = _objects()
    with CheckpointManager(tmp_path / "ck", format=fmt.name) as manager:
        with manager.begin(epoch=1, step=5) as ckpt:
            ckpt.update({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "sampler": position.state_dict()})
        saved = manager.save(epoch=2, step=10, model=model, optimizer=optimizer, sampler=position)
    assert format_of(ckpt.path) is fmt is format_of(saved) and ckpt.path.name == fmt.entry_name("checkpoint_epoch_1.pth")
    assert fmt.verify(ckpt.path).ok


def test_upload_and_fetch_in_commit_order(fmt: CheckpointFormat, tmp_path: Path) -> None:
    paths, model = _run(tmp_path / "ck", fmt)
    files = fmt.commit_files(paths[1])
    assert files.in_order[-1] == files.marker and files.marker not in files.parts
    assert fmt.marker_identity(files.entry, files.marker.local.read_bytes()) == files.identity
    remote = RemoteRun(f":local:{tmp_path / 'bucket'}/")
    for part in files.parts:  # the payload without its marker: not committed remotely
        copyto(part.local, remote.folder + part.remote)
    assert remote.list() == []
    assert remote.upload(paths[1]) is True and remote.list() == [paths[1].name]
    assert remote.upload(paths[1]) is False  # the same checkpoint is there already
    fetched = remote.fetch(paths[1].name, tmp_path / "elsewhere")
    assert format_of(fetched) is fmt and fmt.verify(fetched).ok and fmt.identity(fetched) == files.identity
    newest = remote.fetch_newest(tmp_path / "fresh")
    assert newest is not None and _same_weights(fmt.read_weights(newest, use_ema=False)["model"], model)


def test_a_killed_save_leaves_only_leftovers_that_cleanup_removes(fmt: CheckpointFormat, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "helpers" / "killed_save.py"), fmt.name,
                           str(tmp_path / "ck"), CASES[fmt.name]], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 9, proc.stdout + proc.stderr
    first = tmp_path / "ck" / fmt.entry_name("checkpoint_epoch_1.pth")
    assert [i.path for i in list_checkpoints(tmp_path / "ck")] == [first]  # nothing of the second save counts
    found = leftovers(tmp_path / "ck")
    assert found and not any(is_checkpoint_name(left.path.name) for left in found), found  # hidden, never listed
    with CheckpointManager(tmp_path / "ck", format=fmt.name) as manager:  # its cleanup removes a dead writer's
        assert leftovers(tmp_path / "ck") == []
        resumed = manager.resume(model=nn.Linear(4, 3))
    assert resumed is not None and resumed.path == first and fmt.verify(first).ok


def test_a_damaged_copy_is_refused_and_resume_falls_back(fmt: CheckpointFormat, tmp_path: Path) -> None:
    paths, _ = _run(tmp_path / "ck", fmt)
    damaged = fmt.commit_files(paths[1]).parts[0].local
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    result = fmt.verify(paths[1])
    assert not result.ok and (damaged.name in result.reason or result.expected_sha256 != result.actual_sha256)
    with pytest.raises(CheckpointCorruptError, match=damaged.name):  # a verified load, whatever it defers
        fmt.load(paths[1])
    model, optimizer, position = _objects(seed=1)
    with CheckpointManager(tmp_path / "ck", format=fmt.name) as manager:
        resumed = manager.resume(model=model, optimizer=optimizer, sampler=position)
    assert resumed is not None and resumed.path == paths[0]


def test_delete_move_and_adopt(fmt: CheckpointFormat, tmp_path: Path) -> None:
    paths, _ = _run(tmp_path / "ck", fmt)
    fmt.delete(paths[0])
    assert format_of(paths[0]) is None and leftovers(tmp_path / "ck") == []
    (tmp_path / "aside").mkdir()
    fmt.move(paths[1], tmp_path / "aside")
    moved = tmp_path / "aside" / paths[1].name
    assert format_of(paths[1]) is None and fmt.verify(moved).ok

    fmt.commit_files(moved).marker.local.unlink()  # a copy that came without its marker
    assert not fmt.verify(moved).ok
    refused = fmt.adopt(moved)
    assert fmt.verify(moved).ok == (refused == ""), refused
