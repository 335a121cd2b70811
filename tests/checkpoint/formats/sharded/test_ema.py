"""The EMA (``TRAIN.EMA``) in sharded checkpoints and under ``TRAIN.STRATEGY fsdp``: its tensors go
through DCP under ``ema`` (sharded like the model under fsdp, never in ``state.pt``), reshard on
load and cross strategies both ways; a checkpoint without EMA state is treated as a single file is;
``linnaeus-ckpt export --ema`` and ``read_weights(use_ema=True)`` consolidate it. One torchrun
launch (2 ranks, gloo) for the multi-rank cases."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from linnaeus.checkpoint import CheckpointIncompatibleError, CheckpointManager, CheckpointPolicy
from linnaeus.checkpoint.formats import VerifyingReader, read_checked_metadata, read_manifest
from linnaeus.checkpoint.loading import read_weights
from linnaeus.cli.ckpt import main as ckpt_main
from linnaeus.config import load_config
from tests.conftest import REPO, TINY_CFG, VENV_BIN
from tests.helpers.sharded_ema_ranks import objects, same, train


def _saved(directory: Path, *, sharded: bool, ema: bool, seed: int = 11, steps: int = 2) -> tuple[Path, dict]:
    """A checkpoint of a plain model (and EMA) after ``steps``; returns its path and the saved state dicts."""
    model, optimizer, average = objects(seed, shard=False)
    train(model, optimizer, average, steps)
    manager = CheckpointManager(directory, sharded=sharded)
    path = manager.save(epoch=1, step=steps, model=model, optimizer=optimizer, **({"ema": average} if ema else {}))
    manager.close()
    return path, {"model": get_model_state_dict(model), "ema": get_model_state_dict(average)}


def _resume(directory: Path, *, sharded: bool, ema: bool) -> tuple[dict, dict]:
    model, optimizer, average = objects(5, shard=False)
    manager = CheckpointManager(directory, sharded=sharded)
    try:
        manager.resume(model=model, optimizer=optimizer, **({"ema": average} if ema else {}))
    finally:
        manager.close()
    return get_model_state_dict(model), get_model_state_dict(average)


def test_config_accepts_ema_under_fsdp() -> None:
    cfg = load_config(str(TINY_CFG), ["TRAIN.STRATEGY", "fsdp", "TRAIN.EMA.ENABLED", "True"])
    assert cfg.TRAIN.EMA.ENABLED and cfg.CHECKPOINT.FORMAT == "auto"


def test_ema_tensors_go_through_dcp_resume_export_and_pretrained(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, saved = _saved(tmp_path / "ck", sharded=True, ema=True)
    metadata = read_checked_metadata(VerifyingReader(path, read_manifest(path)[0])).state_dict_metadata
    assert {k[len("ema."):] for k in metadata if k.startswith("ema.")} == set(saved["ema"])
    assert "ema" not in torch.load(path / "state.pt", weights_only=True)  # DCP carries it, not state.pt
    model, ema = _resume(tmp_path / "ck", sharded=True, ema=True)
    assert same(model, saved["model"]) and same(ema, saved["ema"])
    assert ckpt_main(["inspect", str(path), "--json"]) == 0
    assert "ema" in json.loads(capsys.readouterr().out)["components"]
    for flag, expected in (([], saved["model"]), (["--ema"], saved["ema"])):
        assert ckpt_main(["export", str(path), str(tmp_path / f"w{len(flag)}.pth"), *flag]) == 0
        exported = torch.load(tmp_path / f"w{len(flag)}.pth", weights_only=True)
        assert same(exported["model"], {k.removeprefix("module."): v for k, v in expected.items()})
        assert exported["meta"]["exported_ema"] is bool(flag)
    weights = read_weights(path, use_ema=True)  # MODEL.PRETRAINED's reader
    assert weights.container == "ema" and weights.stripped_prefix == "module."
    assert same(dict(weights.tensors), {k.removeprefix("module."): v for k, v in saved["ema"].items()})


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP's note on a one-process async save
def test_an_async_sharded_save_holds_the_ema_of_the_call(tmp_path: Path) -> None:
    model, optimizer, average = objects(11, shard=False)
    train(model, optimizer, average, 2)
    at_call = {k: v.clone() for k, v in get_model_state_dict(average).items()}
    manager = CheckpointManager(tmp_path / "ck", CheckpointPolicy(async_save=True), sharded=True)
    manager.save(epoch=1, step=2, model=model, optimizer=optimizer, ema=average)
    with torch.no_grad():  # the next steps change the EMA while the save is written
        for p in average.parameters():
            p.add_(1.0)
    manager.close()
    _, ema = _resume(tmp_path / "ck", sharded=True, ema=True)
    assert same(ema, at_call)


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "sharded"])
def test_missing_or_unused_ema_is_treated_as_for_a_single_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               sharded: bool) -> None:
    # No EMA state, EMA asked for: refused, naming the missing component (what a single file always did).
    path, _ = _saved(tmp_path / "no-ema", sharded=sharded, ema=False)
    with pytest.raises(CheckpointIncompatibleError, match=r"has no 'ema' state \(checkpoint kind 'full'"):
        _resume(tmp_path / "no-ema", sharded=sharded, ema=True)
    assert ckpt_main(["export", str(path), str(tmp_path / "w.pth"), "--ema"]) == 2
    assert "has no 'ema' state" in capsys.readouterr().err and not (tmp_path / "w.pth").exists()
    # EMA state, no EMA asked for: the rest resumes and the EMA is not used.
    _, saved = _saved(tmp_path / "ema", sharded=sharded, ema=True)
    model, _ = _resume(tmp_path / "ema", sharded=sharded, ema=False)
    assert same(model, saved["model"])


def test_two_rank_fsdp_ema_is_sharded_reshards_and_crosses_strategies(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    _, one = _saved(root / "one", sharded=True, ema=True)  # one process (a ddp run's layout): resumed at 2 fsdp ranks
    torch.save(one, root / "one.pt")
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "helpers" / "sharded_ema_ranks.py"), str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    lines = proc.stdout.splitlines()
    for rank in (0, 1):
        [update] = [ln for ln in lines if ln.startswith(f"rank{rank} ema-update:")]
        shard, whole = (int(x) for x in update.split("shard ")[1].split(" of "))
        assert update.startswith(f"rank{rank} ema-update: equal") and 0 < shard < whole, update
        for outcome in ("ema-init: equal", "reshard 1->2: equal", "file->fsdp ema: equal"):
            assert f"rank{rank} {outcome}" in lines, out[-3000:]
        [refused] = [ln for ln in lines if ln.startswith(f"rank{rank} file-no-ema:")]
        assert "CheckpointIncompatibleError" in refused and "has no 'ema' state" in refused, refused
    # No FSDP2 module (it holds the process group) outlived the group (tests/helpers/group_session.py).
    assert [(root / f"alive.rank{r}").read_text() for r in (0, 1)] == ["0\n", "0\n"]
    # The 2-rank fsdp checkpoint in one process, into a plain model and EMA (a ddp run): exactly the saved EMA.
    saved = torch.load(root / "full.pt", weights_only=True)
    model, ema = _resume(root / "ck", sharded=True, ema=True)
    assert same(model, saved["model"]) and same(ema, saved["ema"])
    assert ckpt_main(["export", str(root / "ck" / "checkpoint_epoch_1"), str(tmp_path / "ema.pth"), "--ema"]) == 0
    exported = torch.load(tmp_path / "ema.pth", weights_only=True)["model"]
    assert same(exported, {k.removeprefix("module."): v for k, v in saved["ema"].items()})
