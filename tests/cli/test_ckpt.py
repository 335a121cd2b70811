"""``linnaeus-ckpt`` ls / inspect / verify / prune / export, through main(argv) as the console script calls it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, read_latest, verify_checkpoint
from linnaeus.cli.ckpt import main
from tests.conftest import REPO


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run dir with four epochs of full checkpoints (with EMA) and metric history."""
    run = tmp_path / "run"
    model, ema = nn.Linear(4, 3), nn.Linear(4, 3)
    with torch.no_grad():
        ema.weight.fill_(7.0)
    manager = CheckpointManager(run / "checkpoints", CheckpointPolicy(monitor="val/acc1"), config="MODEL:\n  X: 1\n")
    for epoch, acc in [(1, 40.0), (2, 80.0), (3, 60.0), (4, 70.0)]:
        manager.save(epoch=epoch, step=epoch * 100, metrics={"val/acc1": acc}, model=model, ema=ema)
    return run


def _table(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line.startswith("checkpoint_")}


def test_ls_marks_latest_and_best_and_verifies(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["ls", str(run_dir)]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert "val/acc1" in out.splitlines()[1]
    assert set(rows) == {f"checkpoint_epoch_{e}.pth" for e in (1, 2, 3, 4)}
    assert rows["checkpoint_epoch_2.pth"].split()[1:5] == ["full", "2", "200", "80"]
    assert rows["checkpoint_epoch_2.pth"].endswith("best") and rows["checkpoint_epoch_4.pth"].endswith("latest")
    assert all(row.split()[7] == "ok" for row in rows.values())  # file kind epoch step metric size(2) verified

    assert "failed verification" not in out

    path = run_dir / "checkpoints" / "checkpoint_epoch_3.pth"
    path.write_bytes(path.read_bytes()[:-10])
    assert main(["ls", str(run_dir / "checkpoints")]) == 0
    out = capsys.readouterr().out
    assert "BAD" in _table(out)["checkpoint_epoch_3.pth"]
    # The CLI contract (docs/checkpoints.md) says nothing of ls' exit code, so it stays 0, with a footer that says so.
    assert out.splitlines()[-1].startswith(
        f"1 file(s) failed verification: run `linnaeus-ckpt verify {run_dir / 'checkpoints'}`")


def test_inspect_json(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = run_dir / "checkpoints" / "checkpoint_epoch_4.pth"
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["progress"]["step"] == 400 and info["meta"]["kind"] == "full"
    assert info["metrics"]["best"]["value"] == 80.0 and info["metrics"]["history_len"] == 4
    assert info["model"]["parameters"] == 15 and info["components"] == ["ema"]
    assert info["sidecar"] == "matches" and len(info["sha256"]) == 64


def test_verify_exit_codes(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    ckpts = run_dir / "checkpoints"
    assert main(["verify", str(ckpts)]) == 0
    assert "4 ok, 0 bad" in capsys.readouterr().out
    bad = ckpts / "checkpoint_epoch_2.pth"
    data = bytearray(bad.read_bytes())
    data[-2000] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert main(["verify", str(ckpts)]) == 1
    out = capsys.readouterr().out
    assert f"BAD  {bad}: content does not match checkpoint_epoch_2.pth.sha256 (expected sha256" in out
    assert "3 ok, 1 bad" in out
    assert main(["verify", str(ckpts / "checkpoint_epoch_1.pth")]) == 0


def test_verify_maps_a_run_dir_and_reports_leftovers(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    (run_dir / "config.yaml").write_text("MODEL:\n  X: 1\n")
    (run_dir / "log.txt").write_text("log\n")
    assert main(["verify", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "config.yaml" not in out and "log.txt" not in out and "4 ok, 0 bad" in out

    # Leftovers of interrupted saves are named as such, and do not fail verification.
    ckpts = run_dir / "checkpoints"
    temp = ckpts / ".checkpoint_epoch_5.pth.tmp-999999-abcd1234"
    orphan = ckpts / "checkpoint_epoch_9.pth.sha256"
    pending = ckpts / ".checkpoint_epoch_4.pth.sha256.pending-999999"
    for leftover in (temp, orphan, pending):
        leftover.write_text("0" * 64 + "  x\n")
    assert main(["verify", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"LEFTOVER  {temp}: temp file of an unfinished save" in out
    assert f"LEFTOVER  {orphan}: sidecar without its data file" in out
    assert f"LEFTOVER  {pending}: pending sidecar of an interrupted overwrite" in out
    assert "4 ok, 0 bad, 3 leftover(s) of interrupted saves" in out and "BAD" not in out

    bad = ckpts / "checkpoint_epoch_1.pth"
    bad.write_bytes(bad.read_bytes()[:-10])
    assert main(["verify", str(run_dir)]) == 1
    assert "3 ok, 1 bad" in capsys.readouterr().out


def test_prune_dry_run_then_for_real(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    ckpts = run_dir / "checkpoints"
    args = ["prune", str(ckpts), "--keep-last", "1", "--keep-best", "1", "--monitor", "val/acc1", "--mode", "max"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete 2 checkpoint(s)" in out and "checkpoint_epoch_1.pth" in out and "checkpoint_epoch_3.pth" in out
    assert len(list(ckpts.glob("*.pth"))) == 4
    assert main(args) == 0
    assert sorted(p.name for p in ckpts.glob("*.pth*")) == [
        "checkpoint_epoch_2.pth", "checkpoint_epoch_2.pth.sha256", "checkpoint_epoch_4.pth", "checkpoint_epoch_4.pth.sha256"]
    assert read_latest(ckpts) == "checkpoint_epoch_4.pth"
    assert main(["prune", str(ckpts), "--keep-last", "1", "--keep-best", "1"]) == 2
    assert "--keep-best needs --monitor" in capsys.readouterr().err


def test_export_weights_pth_ema_and_safetensors(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = run_dir / "checkpoints" / "checkpoint_epoch_4.pth"
    out = tmp_path / "export" / "model.pth"
    assert main(["export", str(src), str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    assert set(exported) == {"model", "config", "meta"} and exported["meta"]["kind"] == "weights"
    assert exported["config"] == "MODEL:\n  X: 1\n" and exported["meta"]["exported_from"] == src.name
    assert torch.equal(exported["model"]["weight"], torch.load(src, weights_only=True)["model"]["weight"])
    assert verify_checkpoint(out).ok

    from safetensors.torch import load_file

    st = tmp_path / "export" / "ema.safetensors"
    assert main(["export", str(src), str(st), "--ema", "--safetensors"]) == 0
    tensors = load_file(st)
    assert set(tensors) == {"weight", "bias"} and bool((tensors["weight"] == 7.0).all())
    assert (tmp_path / "export" / "ema.safetensors.sha256").exists()

    assert main(["export", str(out), str(tmp_path / "x.pth"), "--ema"]) == 2
    assert "has no 'ema' state" in capsys.readouterr().err


def test_console_entry_and_remote_commands(run_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "linnaeus.cli.ckpt", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("ls", "inspect", "verify", "prune", "export"):
        assert command in proc.stdout
    if importlib.util.find_spec("linnaeus.cli.remote_cmds") is not None:
        assert all(c in proc.stdout for c in ("resolve", "download", "upload"))


def test_ls_names_the_parent_of_a_sharded_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = nn.Linear(3, 2)
    with CheckpointManager(tmp_path / "ck", format="sharded") as manager:
        manager.save(epoch=1, step=1, model=model)
    with CheckpointManager(tmp_path / "ck", format="sharded") as manager:
        manager.resume(model=model)
        manager.save(epoch=2, step=2, model=model)
    assert main(["ls", str(tmp_path / "ck")]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    # file kind epoch step metric size(2 words) verified run parent marks
    assert rows["checkpoint_epoch_2"][9] == "checkpoint_epoch_1" and rows["checkpoint_epoch_1"][9] == "(fresh)", rows


# ----------------------------------------------------------------------------- export's destination
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_refuses_to_write_over_a_checkpoint_latest_a_sidecar_or_the_lock(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpts = run_dir / "checkpoints"
    newest = ckpts / "checkpoint_epoch_4.pth"
    before = {p.name: _digest(p) for p in ckpts.iterdir() if p.is_file()}
    for destination in (newest, ckpts / "latest", ckpts / "checkpoint_epoch_3.pth.sha256", ckpts / ".lock"):
        for force in ([], ["--force"]):  # --force replaces another file, never one of these
            assert main(["export", str(newest), str(destination), *force]) == 2, destination
            err = capsys.readouterr().err
            assert "refusing to export" in err and str(destination) in err, err
    assert {p.name: _digest(p) for p in ckpts.iterdir() if p.is_file()} == before  # nothing touched
    assert verify_checkpoint(newest).ok and read_latest(ckpts) == "checkpoint_epoch_4.pth"


def test_export_of_a_sharded_directory_onto_itself_or_into_it_is_refused(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    with CheckpointManager(tmp_path / "ck", format="sharded") as manager:
        path = manager.save(epoch=1, step=1, model=nn.Linear(3, 2))
    for destination in (path, path / "weights.pth"):
        assert main(["export", str(path), str(destination)]) == 2
        assert "refusing to export" in capsys.readouterr().err
    assert not (tmp_path / "ck" / "checkpoint_epoch_1.sha256").exists() and not (path / "weights.pth").exists()
    assert verify_checkpoint(path).ok


def test_export_replaces_another_file_only_with_force(run_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    src, out = run_dir / "checkpoints" / "checkpoint_epoch_4.pth", tmp_path / "mine.pth"
    out.write_text("someone's notes\n")
    assert main(["export", str(src), str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "someone's notes\n"
    assert main(["export", str(src), str(out), "--force"]) == 0
    assert verify_checkpoint(out).ok and torch.load(out, weights_only=True)["meta"]["kind"] == "weights"


def test_export_into_a_live_runs_checkpoint_directory_is_refused(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    ckpts = run_dir / "checkpoints"
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from linnaeus.checkpoint import CheckpointManager\n"
            "m = CheckpointManager(%r); print('holding', flush=True); time.sleep(60)\n") % (str(REPO), str(ckpts))
    live = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "holding"
        assert main(["export", str(ckpts / "checkpoint_epoch_4.pth"), str(ckpts / "weights_4.pth")]) == 2
        err = capsys.readouterr().err
        assert f"pid {live.pid}" in err and not (ckpts / "weights_4.pth").exists(), err
    finally:
        live.kill()
        live.wait()
    assert main(["export", str(ckpts / "checkpoint_epoch_4.pth"), str(ckpts / "weights_4.pth")]) == 0
