"""Sharded (DCP directory) checkpoints in one process: layout and commit, verified loads and the
fallback past damaged directories, retention, cleanup, the CLI, and the config rules.
The multi-rank cases (FSDP2, resharding, every rank failing together) are in test_sharded_dist.py."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import xxhash
from torch import nn

from linnaeus.checkpoint import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointManager,
    CheckpointPolicy,
    list_checkpoints,
    read_latest,
    verify_checkpoint,
)
from linnaeus.checkpoint.disk import digests_of
from linnaeus.checkpoint.formats import MANIFEST, is_checkpoint_name, sharded_dirname
from linnaeus.checkpoint.formats import consolidate as consolidate_model
from linnaeus.checkpoint.store import cleanup_stale
from linnaeus.cli.ckpt import main as ckpt_main
from linnaeus.config import ConfigError, load_config
from tests.conftest import TINY_CFG, run_train
from tests.helpers.counter import Counter as Position


def _objects(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, Position]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2), Position()


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, position: Position) -> None:
    loss = model(torch.randn(4, 6)).square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    position.consumed += 4


def _saved_run(directory: Path, saves: int = 2, **policy: object) -> tuple[CheckpointManager, list[Path], nn.Module]:
    model, optimizer, position = _objects()
    manager = CheckpointManager(directory, CheckpointPolicy(**policy), sharded=True, config="a: 1\n")
    paths = []
    for epoch in range(1, saves + 1):
        _step(model, optimizer, position)
        paths.append(manager.save(epoch=epoch, step=epoch * 10, model=model, optimizer=optimizer, sampler=position,
                                  metrics={"val/acc": 0.1 * epoch}))
    return manager, paths, model


def test_layout_manifest_and_commit(tmp_path: Path) -> None:
    manager, paths, model = _saved_run(tmp_path / "ck")
    manager.close()
    final = paths[-1]
    assert final.name == "checkpoint_epoch_2" == sharded_dirname("checkpoint_epoch_2.pth") and final.is_dir()
    names = sorted(os.listdir(final))
    assert names == [".metadata", "__0_0.distcp", MANIFEST, "state.pt"], names
    manifest = json.loads((final / MANIFEST).read_text())
    assert sorted(manifest["files"]) == [".metadata", "__0_0.distcp", "state.pt"]
    for name, entry in manifest["files"].items():  # every file's bytes are recorded, by both digests
        data = (final / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
        assert digests_of(final / name) == {k: v for k, v in entry.items() if k != "rank"}
        assert entry["xxh3_128"] == xxhash.xxh3_128((final / name).read_bytes()).hexdigest()
    assert manifest["progress"] == {"epoch": 2, "step": 20, "epoch_step": 0, "samples": 0}
    assert manifest["meta"]["kind"] == "full" and manifest["meta"]["run_id"] == manager.run_id
    assert manifest["config"] == "a: 1\n"
    # Nothing but the final names, their parent's lock and `latest`: no temp directory is left behind.
    assert sorted(os.listdir(tmp_path / "ck")) == [".lock", "checkpoint_epoch_1", "checkpoint_epoch_2", "latest"]
    assert read_latest(tmp_path / "ck") == "checkpoint_epoch_2"
    infos = list_checkpoints(tmp_path / "ck")
    assert [(i.name, i.step, i.committed, i.readable) for i in infos] == [
        ("checkpoint_epoch_1", 10, True, True), ("checkpoint_epoch_2", 20, True, True)]
    # The state outside DCP loads with weights_only (no pickled code anywhere we read).
    state = torch.load(final / "state.pt", weights_only=True)
    assert state["sampler"] == {"consumed": 8} and state["progress"]["step"] == 20
    assert verify_checkpoint(final).ok


def test_resume_restores_model_optimizer_and_components_exactly(tmp_path: Path) -> None:
    manager, _, model = _saved_run(tmp_path / "ck")
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    manager.close()
    fresh, optimizer, position = _objects(seed=1)
    restarted = CheckpointManager(tmp_path / "ck", sharded=True)
    result = restarted.resume(model=fresh, optimizer=optimizer, sampler=position)
    assert result is not None and result.path.name == "checkpoint_epoch_2" and result.progress["step"] == 20
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved_model.items())
    assert position.consumed == 8 and optimizer.state_dict()["state"][0]["step"].item() == 2
    # Training continues identically from the restored state (optimizer moments included).
    original, orig_opt, orig_pos = _objects()
    for _ in range(2):
        _step(original, orig_opt, orig_pos)
    torch.manual_seed(5)
    _step(original, orig_opt, orig_pos)
    torch.manual_seed(5)
    _step(fresh, optimizer, position)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in original.state_dict().items())
    restarted.close()


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("damage,victim,expect", [
    ("flip", "__0_0.distcp", "__0_0.distcp: content does not match manifest.json"),
    ("truncate", "__0_0.distcp", "__0_0.distcp has"),
    ("delete", ".metadata", ".metadata is missing"),
    ("delete", MANIFEST, "manifest.json is missing"),
])
def test_damage_is_named_and_resume_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str,
                                               victim: str, expect: str) -> None:
    manager, paths, _ = _saved_run(tmp_path / "ck")
    manager.close()
    target = paths[-1] / victim
    {"flip": _flip_byte, "truncate": _truncate, "delete": os.unlink}[damage](target)
    result = verify_checkpoint(paths[-1])
    assert not result.ok and expect in result.reason, result.reason
    # Found by the check before the choice (a missing or short file, the manifest) or, for a shard's
    # content, by the rank reading it while restoring; named either way, and nothing restored.
    other = CheckpointManager(tmp_path / "other", sharded=True)
    model, optimizer, position = _objects(seed=2)
    with pytest.raises(CheckpointCorruptError, match=str(target).replace(".", r"\.")) as err:
        other.restore(other.load(paths[-1]), path=paths[-1], model=model, optimizer=optimizer, sampler=position)
    assert expect in str(err.value)
    assert position.consumed == 0, "a failed restore must not touch the components after the tensors"
    other.close()
    fresh, optimizer, position = _objects(seed=1)
    restarted = CheckpointManager(tmp_path / "ck", sharded=True)
    with caplog.at_level(logging.WARNING, logger="linnaeus.checkpoint"):
        result = restarted.resume(model=fresh, optimizer=optimizer, sampler=position)
    assert result is not None and result.path == paths[0], "resume must fall back to the older complete checkpoint"
    assert position.consumed == 4
    assert any("checkpoint_epoch_2" in r.getMessage() and expect in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
    # The damaged directory is never deleted by retention nor by cleanup: it is evidence, not a leftover.
    restarted.apply_retention()
    cleanup_stale(tmp_path / "ck")
    assert paths[-1].is_dir()
    restarted.close()


def test_damage_found_while_restoring_with_nothing_older_refuses_a_fresh_start(tmp_path: Path) -> None:
    """The live model holds part of the failed load: a silent fresh start would train from it."""
    manager, paths, _ = _saved_run(tmp_path / "ck", saves=1)
    manager.close()
    _flip_byte(paths[0] / "__0_0.distcp")
    model, optimizer, position = _objects(seed=1)
    restarted = CheckpointManager(tmp_path / "ck", sharded=True)
    with pytest.raises(CheckpointError, match="No older checkpoint is left to fall back to") as err:
        restarted.resume(model=model, optimizer=optimizer, sampler=position)
    assert "__0_0.distcp: content does not match manifest.json" in str(err.value)
    assert "does not start fresh" in str(err.value)
    restarted.close()


def test_a_relaunch_falls_back_past_a_shard_found_damaged_while_restoring(tmp_path: Path, toy_root: Path) -> None:
    """The runner: its choice no longer hashes every shard beforehand, so the damage surfaces at restore,
    and the relaunch resumes from the older checkpoint as it would from a damaged file."""
    run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "2", "CHECKPOINT.FORMAT", "sharded")
    newest = tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_2"
    _flip_byte(newest / "__0_0.distcp")
    proc = run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "3", "CHECKPOINT.FORMAT", "sharded")
    log = proc.stdout + proc.stderr
    assert f"Skipping checkpoint {newest}: __0_0.distcp: content does not match manifest.json" in log, log[-4000:]
    assert "Resumed from " in log and "checkpoint_epoch_1 (epoch 1," in log, log[-4000:]
    assert newest.is_dir(), "the damaged checkpoint is evidence: kept"


def _edit_manifest(directory: Path, edit) -> None:
    manifest = json.loads((directory / MANIFEST).read_text())
    for name, entry in manifest["files"].items():
        edit(name, entry)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def test_a_manifest_without_xxh3_is_checked_by_sha256(tmp_path: Path) -> None:
    """Loads check the fast digest when the manifest has it; a manifest written without it (before
    it existed) is still verified, by sha256, and damage is still named."""
    manager, paths, model = _saved_run(tmp_path / "ck")
    manager.close()
    _edit_manifest(paths[-1], lambda _, entry: entry.pop("xxh3_128"))
    fresh, optimizer, position = _objects(seed=1)
    loader = CheckpointManager(tmp_path / "other", sharded=True)
    loader.restore(loader.load(paths[-1]), path=paths[-1], model=fresh, optimizer=optimizer, sampler=position)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    _flip_byte(paths[-1] / "__0_0.distcp")
    with pytest.raises(CheckpointCorruptError, match="__0_0.distcp: content does not match") as err:
        loader.restore(loader.load(paths[-1]), path=paths[-1], model=fresh, optimizer=optimizer, sampler=position)
    assert err.value.expected_sha256 is not None and err.value.expected_sha256 != err.value.actual_sha256
    loader.close()


def test_verify_checks_sha256_as_well_as_the_fast_digest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A manifest whose sha256 disagrees with the bytes is reported by `linnaeus-ckpt verify` even
    though xxh3-128 matches: what sha256sum would show must be true too."""
    manager, paths, _ = _saved_run(tmp_path / "ck")
    manager.close()
    assert ckpt_main(["verify", str(paths[-1])]) == 0
    capsys.readouterr()
    _edit_manifest(paths[-1], lambda name, entry: entry.update(sha256="0" * 64) if name == "__0_0.distcp" else None)
    assert ckpt_main(["verify", str(paths[-1])]) == 1
    assert "__0_0.distcp: content does not match" in capsys.readouterr().out


class _RunsCode:
    """Unpickling this runs a shell command: what a crafted ``.metadata`` could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_metadata_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    """DCP's ``.metadata`` is a pickle, and a checkpoint from elsewhere brings its own manifest, so a
    matching sha256 proves nothing about its author: only DCP's metadata classes may be unpickled."""
    manager, paths, _ = _saved_run(tmp_path / "ck", saves=1)
    manager.close()
    marker = tmp_path / "code-ran"
    target = paths[0] / ".metadata"
    target.write_bytes(pickle.dumps(_RunsCode(marker)))
    manifest = json.loads((paths[0] / MANIFEST).read_text())
    manifest["files"][".metadata"].update(digests_of(target))  # a manifest that vouches for the crafted bytes
    (paths[0] / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    # As MODEL.PRETRAINED / export read it (consolidated in one process) ...
    with pytest.raises(CheckpointCorruptError, match="system") as err:
        consolidate_model(paths[0])
    assert not marker.exists(), "unpickling the checkpoint ran a command"
    assert ".metadata" in str(err.value)
    # ... and as a resume restores it.
    model, optimizer, position = _objects(seed=1)
    restarted = CheckpointManager(tmp_path / "ck", sharded=True)
    with pytest.raises(CheckpointCorruptError, match="system"):
        restarted.restore(restarted.load(paths[0]), path=paths[0], model=model, optimizer=optimizer,
                          sampler=position)
    restarted.close()
    assert not marker.exists(), "unpickling the checkpoint ran a command"


def test_retention_and_keep_best_delete_whole_directories(tmp_path: Path) -> None:
    manager, paths, _ = _saved_run(tmp_path / "ck", saves=4, keep_last_n=1, keep_best_n=1, monitor="val/acc",
                                   mode="min")
    manager.close()
    # keep-last 1 -> epoch 4 (also latest), keep-best (min val/acc) -> epoch 1.
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [".lock", "checkpoint_epoch_1",
                                                                    "checkpoint_epoch_4", "latest"]


def test_temp_names_never_match_and_dead_writers_temp_dirs_are_removed(tmp_path: Path) -> None:
    directory = tmp_path / "ck"
    manager, _, _ = _saved_run(directory, saves=1)
    manager.close()
    # An interrupted save of another process (cleanup holds the writer lock, so it is a dead writer's):
    # its temp directory holds shards but no manifest.
    leftover = directory / f".checkpoint_epoch_9.tmp-999999-{'0' * 12}-abcd"
    shutil.copytree(directory / "checkpoint_epoch_1", leftover)
    (leftover / MANIFEST).unlink()
    assert not is_checkpoint_name(leftover.name)
    assert [i.name for i in list_checkpoints(directory)] == ["checkpoint_epoch_1"]
    assert cleanup_stale(directory) == [leftover] and not leftover.exists()


def test_cli_ls_verify_inspect_and_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manager, paths, model = _saved_run(tmp_path / "ck")
    manager.close()
    assert ckpt_main(["ls", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "checkpoint_epoch_2" in out and "latest" in out and "ok" in out
    assert ckpt_main(["verify", str(tmp_path / "ck")]) == 0
    capsys.readouterr()
    assert ckpt_main(["inspect", str(paths[-1]), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["model"]["tensors"] == 4 and described["progress"]["step"] == 20
    assert described["shard_files"] == ["__0_0.distcp"]
    out_file = tmp_path / "weights.pth"
    assert ckpt_main(["export", str(paths[-1]), str(out_file)]) == 0
    exported = torch.load(out_file, weights_only=True)
    assert exported["meta"]["kind"] == "weights"
    assert all(torch.equal(exported["model"][k], v) for k, v in model.state_dict().items())
    _flip_byte(paths[-1] / "__0_0.distcp")
    assert ckpt_main(["verify", str(paths[-1])]) == 1
    assert "__0_0.distcp: content does not match" in capsys.readouterr().out
    assert ckpt_main(["export", str(paths[-1]), str(tmp_path / "bad.pth")]) == 2
    assert "__0_0.distcp" in capsys.readouterr().err and not (tmp_path / "bad.pth").exists()


@pytest.mark.parametrize("opts,key", [
    (["TRAIN.STRATEGY", "zero"], "TRAIN.STRATEGY"),
    (["CHECKPOINT.FORMAT", "tar"], "CHECKPOINT.FORMAT"),
    (["TRAIN.STRATEGY", "fsdp", "CHECKPOINT.FORMAT", "file"], "CHECKPOINT.FORMAT file"),
    (["CHECKPOINT.FORMAT", "sharded", "CHECKPOINT.WEIGHTS_ONLY", "True"], "CHECKPOINT.WEIGHTS_ONLY"),
])
def test_config_refuses_what_cannot_run_naming_the_key(opts: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(str(TINY_CFG), opts)


def test_config_accepts_fsdp_and_sharded_formats() -> None:
    assert load_config(str(TINY_CFG), ["TRAIN.STRATEGY", "fsdp"]).CHECKPOINT.FORMAT == "auto"
    load_config(str(TINY_CFG), ["CHECKPOINT.FORMAT", "sharded"])
    assert load_config(str(TINY_CFG), ["TRAIN.STRATEGY", "fsdp", "CHECKPOINT.ASYNC", "True"]).CHECKPOINT.ASYNC


@pytest.mark.parametrize("target", ["checkpoint_epoch_1", "ABSOLUTE", "step:10"])
def test_explicit_targets_name_a_directory_and_a_restart_sets_newer_ones_aside(tmp_path: Path, target: str) -> None:
    from linnaeus.checkpoint import find_resume_point, resolve
    from linnaeus.checkpoint.resume import start_timeline

    directory = tmp_path / "ck"
    manager, paths, _ = _saved_run(directory)
    manager.close()
    ident = str(paths[0]) if target == "ABSOLUTE" else target
    restarting = CheckpointManager(directory, sharded=True)
    point = find_resume_point(restarting, explicit=ident, auto=False,
                              resolve=lambda i: resolve(i, cache_dir=tmp_path / "cache"))
    assert point is not None and point.path == paths[0] and point.step == 10
    fresh, optimizer, position = _objects(seed=1)
    restarting.restore(point.state, path=point.path, model=fresh, optimizer=optimizer, sampler=position)
    start_timeline(restarting, point)  # a restart moves only once the point is restored
    assert position.consumed == 4
    # A deliberate restart from epoch 1: the newer directory moves, whole, into the abandoned folder.
    [folder] = [p for p in directory.iterdir() if p.name.startswith("abandoned-")]
    assert (folder / "checkpoint_epoch_2" / MANIFEST).is_file() and not paths[1].exists()
    restarting.close()


def test_latest_names_a_directory(tmp_path: Path) -> None:
    from linnaeus.checkpoint import find_resume_point

    manager, paths, _ = _saved_run(tmp_path / "ck")
    manager.close()
    again = CheckpointManager(tmp_path / "ck", sharded=True)
    point = find_resume_point(again, explicit="latest", auto=True)
    assert point is not None and point.path == paths[1] and point.step == 20
    again.close()


def test_pretrained_weights_from_a_sharded_directory(tmp_path: Path) -> None:
    from linnaeus.checkpoint.loading import read_weights

    manager, paths, model = _saved_run(tmp_path / "ck")
    manager.close()
    weights = read_weights(paths[-1])
    assert weights.container == "model" and weights.tensors.keys() == model.state_dict().keys()
    assert all(torch.equal(weights.tensors[k], v) for k, v in model.state_dict().items())
    _flip_byte(paths[-1] / "__0_0.distcp")
    with pytest.raises(CheckpointCorruptError, match="__0_0.distcp: content does not match"):
        read_weights(paths[-1])


def test_a_fixed_name_is_replaced_whole(tmp_path: Path) -> None:
    model, optimizer, position = _objects()
    manager = CheckpointManager(tmp_path / "ck", sharded=True)
    for step in (1, 2):
        _step(model, optimizer, position)
        path = manager.save(epoch=0, step=step, model=model, optimizer=optimizer, sampler=position, filename="last.pth")
    manager.close()
    assert path.name == "last" and sorted(os.listdir(tmp_path / "ck")) == [".lock", "last", "latest"]
    assert verify_checkpoint(path).ok
    assert torch.load(path / "state.pt", weights_only=True)["progress"]["step"] == 2
