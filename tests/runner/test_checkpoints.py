"""The runner's RunCheckpoints: uploads across relaunches, upload failures under DDP, TRAIN.RESUME
lookup and the relaunch contract, weights-only runs, per-saver save bookkeeping, one read per
resume. Real training processes, real files and a real ``rclone serve s3`` on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from linnaeus.checkpoint import CheckpointNotFoundError
from tests.conftest import REPO, TINY_CFG, run_train, train_cmd
from tests.fixtures_rclone import (  # noqa: F401  (fixtures)
    BUCKET,
    REMOTE,
    RcloneServer,
    configure_remote,
    free_port,
    rclone_isolated,
    s3_server,
    settle,
)

SHORT = ("TRAIN.MAX_STEPS_PER_EPOCH", "2")
OUT_BUCKET = ("ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE,
              "ENV.OUTPUT.BUCKET.NAME", BUCKET, "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/")


def _output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- uploads after a relaunch
def test_relaunch_uploads_what_the_last_launch_did_not_and_retention_deletes_earlier_files(
        tmp_path: Path, toy_root: Path, s3_server: RcloneServer) -> None:
    ckpts = tmp_path / "tiny" / "checkpoints"
    remote = s3_server.root / BUCKET / "runs" / "tiny"
    run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "CHECKPOINT.KEEP_LAST_N", "2", "TRAIN.EPOCHS", "2")
    assert (remote / "checkpoint_epoch_2.pth").is_file() and (remote / "latest").read_text().strip() == \
        "checkpoint_epoch_2.pth"
    # The launch died after committing epoch 2 but before uploading it.
    (remote / "checkpoint_epoch_2.pth").unlink()
    (remote / "checkpoint_epoch_2.pth.sha256").unlink()
    (remote / "latest").write_text("checkpoint_epoch_1.pth\n")
    settle()

    proc = run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "CHECKPOINT.KEEP_LAST_N", "2", "TRAIN.EPOCHS", "3")
    out = _output(proc)
    assert f"Resumed from {ckpts / 'checkpoint_epoch_2.pth'} (epoch 2, step 4)" in out
    assert f"Already remote: checkpoint {ckpts / 'checkpoint_epoch_1.pth'}" in out  # confirmed, not re-sent
    for e in (2, 3):  # the missing upload happened, and the new checkpoint's too
        local, name = ckpts / f"checkpoint_epoch_{e}.pth", f"checkpoint_epoch_{e}.pth"
        assert (remote / name).read_bytes() == local.read_bytes()
        assert (remote / (name + ".sha256")).read_text() == (ckpts / (name + ".sha256")).read_text()
    assert (remote / "latest").read_text().strip() == "checkpoint_epoch_3.pth"
    # Epoch 1 came from the previous launch: confirmed remote now, so KEEP_LAST_N 2 may delete it.
    assert f"Deleted checkpoint {ckpts / 'checkpoint_epoch_1.pth'} (retention)" in out
    assert sorted(p.name for p in ckpts.glob("*.pth")) == ["checkpoint_epoch_2.pth", "checkpoint_epoch_3.pth"]
    assert (remote / "checkpoint_epoch_1.pth").is_file()  # nothing is ever deleted remotely


# ----------------------------------------------------------------------------- upload failure under DDP
DDP_UPLOAD_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import torch
from linnaeus.config import load_config
from linnaeus.dist import get_rank, init_distributed
from linnaeus.engine.trainer import Progress
from linnaeus.runner.checkpoints import RunCheckpoints
from linnaeus.checkpoint.remote import UploadError

def checkpointer(name):
    # No auto-resume: it would look in the (dead) bucket first and fail there.
    cfg = load_config({cfg!r}, ["ENV.OUTPUT.BASE_DIR", {out!r}, "EXPERIMENT.NAME", name, "TRAIN.AUTO_RESUME", "False",
                                *{bucket!r}])
    ck = RunCheckpoints(cfg, Path({out!r}) / name)
    if ck.uploader is not None:  # rank 0: fail after one attempt instead of 5 with backoff
        ck.uploader.retries, ck.uploader.backoff_s = 1, 0.01
    progress = Progress()
    ck.attach(progress=progress, model=torch.nn.Linear(2, 2))
    ck.find_resume_point()
    progress.epoch, progress.step = 1, 1
    ck.maybe_save_epoch(progress, {{}}, is_last=False)  # committed on rank 0, upload queued
    return ck

init_distributed()
rank = get_rank()
ck = checkpointer("polled")
for i in range(3000):  # like the training loop: every rank polls after every step
    try:
        ck.poll()
    except UploadError as e:
        print(f"rank {{rank}} poll raised UploadError: {{e}}".replace("\\n", " | "), flush=True)
        break
    time.sleep(0.01)
else:
    print(f"rank {{rank}} poll never raised", flush=True)
ck = checkpointer("closed")
try:
    ck.close()  # the end of a run: waits for rank 0's uploads
except UploadError as e:
    print(f"rank {{rank}} close raised UploadError: {{e}}".replace("\\n", " | "), flush=True)
    raise
print(f"rank {{rank}} close returned", flush=True)
"""


def test_failed_upload_raises_on_every_rank_and_the_job_exits_nonzero(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rclone_isolated: None) -> None:
    class Dead:  # a remote whose server is not running
        url = f"http://127.0.0.1:{free_port()}"

    configure_remote(monkeypatch, Dead)  # type: ignore[arg-type]
    script = tmp_path / "ddp_upload.py"
    script.write_text(DDP_UPLOAD_SCRIPT.format(repo=str(REPO), cfg=str(TINY_CFG), out=str(tmp_path),
                                               bucket=list(OUT_BUCKET)))
    proc = subprocess.run(train_cmd(2)[:-1] + [str(script)], cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    out = _output(proc)
    assert proc.returncode != 0, out
    for rank in (0, 1):
        for when, name in (("poll", "polled"), ("close", "closed")):
            line = re.search(rf"rank {rank} {when} raised UploadError: (.*)", out)
            assert line, f"rank {rank} did not raise at {when}:\n{out[-4000:]}"
            # Every rank's error names the file that failed to upload.
            assert f"{name}/checkpoints/checkpoint_epoch_1.pth" in line.group(1), line.group(1)
    assert "close returned" not in out


def test_a_failing_run_exits_after_the_uploads_of_its_committed_checkpoints(
        tmp_path: Path, toy_root: Path, s3_server: RcloneServer) -> None:
    """Epoch 1's checkpoint is committed and its upload is slow (rclone's --bwlimit, through its
    environment variable); then epoch 2's validation raises. The run must still exit non-zero with
    its own error, but only once the committed checkpoint is in the bucket, with its sidecar:
    the machine may be gone before the next launch could upload it."""
    from tests.conftest import tiny_args

    proc = subprocess.run([sys.executable, str(REPO / "tests" / "helpers" / "fails_in_second_eval.py"),
                           *tiny_args(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "2")],
                          cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RCLONE_BWLIMIT": "300k"})
    out = _output(proc)
    assert proc.returncode != 0 and "injected failure in the second validation" in out, out[-4000:]
    local = tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth"
    remote = s3_server.root / BUCKET / "runs" / "tiny"
    assert (remote / "checkpoint_epoch_1.pth").is_file() and (remote / "checkpoint_epoch_1.pth.sha256").is_file(), \
        f"the committed checkpoint is not in the bucket:\n{out[-4000:]}"
    assert _sha(remote / "checkpoint_epoch_1.pth") == _sha(local)
    assert "The run failed; finishing the uploads of its committed checkpoints" in out


# ----------------------------------------------------------------------------- TRAIN.RESUME lookup
def test_resume_bare_name_from_the_runs_output_bucket_on_a_fresh_machine(
        tmp_path: Path, toy_root: Path, s3_server: RcloneServer) -> None:
    run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "1")
    shutil.rmtree(tmp_path / "tiny")  # a fresh machine: only the bucket holds the run
    ckpt = tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth"
    proc = run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "2",
                     "TRAIN.RESUME", "checkpoint_epoch_1.pth")
    assert f"Resumed from {ckpt} (epoch 1, step 2)" in _output(proc)
    remote = s3_server.root / BUCKET / "runs" / "tiny"
    sidecar = ckpt.parent / "checkpoint_epoch_1.pth.sha256"  # written by the verified download
    assert _sha(remote / "checkpoint_epoch_1.pth") == sidecar.read_text().split()[0] == _sha(ckpt)
    assert (remote / "latest").read_text().strip() == "checkpoint_epoch_2.pth"

    ck, _, _ = _checkpointer(tmp_path, *OUT_BUCKET, "TRAIN.RESUME", "checkpoint_epoch_9.pth")
    with pytest.raises(CheckpointNotFoundError) as info:
        ck.find_resume_point()
    err = str(info.value)
    for place in (str(ckpt.parent / "checkpoint_epoch_9.pth"), f"{REMOTE}:{BUCKET}/runs/tiny/checkpoint_epoch_9.pth",
                  str(tmp_path / "cache" / "checkpoint_epoch_9.pth"), "ENV.INPUT.BUCKET.ENABLED is False"):
        assert place in err, f"{place} not listed in:\n{err[-3000:]}"


def test_resume_bare_name_not_found_lists_every_place_without_output_bucket(tmp_path: Path) -> None:
    from linnaeus.config import load_config
    from linnaeus.runner.checkpoints import RunCheckpoints

    cfg = load_config(str(TINY_CFG), ["ENV.OUTPUT.BASE_DIR", str(tmp_path), "ENV.INPUT.CACHE_DIR",
                                      str(tmp_path / "cache"), "TRAIN.RESUME", "checkpoint_epoch_100.pth"])
    with pytest.raises(CheckpointNotFoundError) as info:
        RunCheckpoints(cfg, tmp_path / "tiny").find_resume_point()
    msg = str(info.value)
    assert str(tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_100.pth") in msg
    assert "ENV.OUTPUT.BUCKET.ENABLED is False" in msg
    assert str(tmp_path / "cache" / "checkpoint_epoch_100.pth") in msg


# ----------------------------------------------------------------------------- TRAIN.RESUME vs relaunch
def test_relaunch_with_train_resume_continues_from_the_runs_newest_checkpoint(tmp_path: Path, toy_root: Path) -> None:
    ckpts = tmp_path / "tiny" / "checkpoints"
    run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "2")  # launched with TRAIN.RESUME, got this far, died
    final = _sha(ckpts / "checkpoint_epoch_2.pth")
    proc = run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "2", "TRAIN.RESUME", "checkpoint_epoch_1.pth")
    out = _output(proc)
    newest = ckpts / "checkpoint_epoch_2.pth"
    assert (f"TRAIN.RESUME checkpoint_epoch_1.pth (step 2) is older than this run's newest checkpoint {newest} "
            f"(step 4): continuing from {newest} (relaunch). To restart from checkpoint_epoch_1.pth, set "
            "TRAIN.AUTO_RESUME False, use a new EXPERIMENT.NAME or remove the newer checkpoints.") in out
    assert f"Resumed from {newest} (epoch 2, step 4)" in out
    assert "Saved checkpoint" not in out and _sha(newest) == final  # nothing was trained again
    # Where a relaunch's time goes, phase by phase, from the process's start.
    ready = re.search(r"Ready to train ([\d.]+) s after the process started: start-up \(interpreter, imports, config, "
                      r"process group, locks\) ([\d.]+) s, data [\d.]+ s, model [\d.]+ s, finding, verifying and "
                      r"loading the checkpoint [\d.]+ s, .*, restoring [\d.]+ s, config.yaml, TensorBoard, trainer", out)
    assert ready and float(ready.group(1)) >= float(ready.group(2)) > 1.0, out  # torch's import alone takes more


def test_relaunch_on_a_fresh_machine_with_train_resume_continues_from_the_bucket(
        tmp_path: Path, toy_root: Path, s3_server: RcloneServer) -> None:
    # Launched with TRAIN.RESUME <some other run's checkpoint>, saved and uploaded epochs past it, preempted;
    # the relaunch with the same command lands on a fresh machine whose run dir is empty.
    run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "2")
    start = tmp_path / "elsewhere" / "start.pth"
    start.parent.mkdir()
    shutil.copy(tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth", start)
    remote = s3_server.root / BUCKET / "runs" / "tiny"
    final = _sha(remote / "checkpoint_epoch_2.pth")
    shutil.rmtree(tmp_path / "tiny")

    proc = run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "2", "TRAIN.RESUME", str(start))
    out = _output(proc)
    newest = tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_2.pth"
    assert f"TRAIN.RESUME {start} (step 2) is older than this run's newest checkpoint {newest} (step 4)" in out
    assert f"Resumed from {newest} (epoch 2, step 4)" in out
    assert "Saved checkpoint" not in out and _sha(newest) == final  # nothing was trained again
    # Where a relaunch's time goes, phase by phase, from the process's start.
    ready = re.search(r"Ready to train ([\d.]+) s after the process started: start-up \(interpreter, imports, config, "
                      r"process group, locks\) ([\d.]+) s, data [\d.]+ s, model [\d.]+ s, finding, verifying and "
                      r"loading the checkpoint [\d.]+ s, .*, restoring [\d.]+ s, config.yaml, TensorBoard, trainer", out)
    assert ready and float(ready.group(1)) >= float(ready.group(2)) > 1.0, out  # torch's import alone takes more

    # A new run (empty bucket folder) starts from TRAIN.RESUME as asked.
    proc = run_train(tmp_path, toy_root, *SHORT, *OUT_BUCKET, "TRAIN.EPOCHS", "2", "TRAIN.RESUME", str(start),
                     name="other")
    assert f"Resumed from {start} (epoch 1, step 2)" in _output(proc)


def _checkpointer(tmp_path: Path, *opts: str):
    from linnaeus.config import load_config
    from linnaeus.engine.trainer import Progress
    from linnaeus.runner.checkpoints import RunCheckpoints

    cfg = load_config(str(TINY_CFG), ["ENV.OUTPUT.BASE_DIR", str(tmp_path), "ENV.INPUT.CACHE_DIR",
                                      str(tmp_path / "cache"), *opts])
    ck, progress, model = RunCheckpoints(cfg, tmp_path / "tiny"), Progress(), torch.nn.Linear(64, 64)
    ck.attach(progress=progress, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    return ck, progress, model


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("resume, auto_resume, expected, continues", [
    ("checkpoint_epoch_2.pth", "True", "checkpoint_epoch_2.pth", False),  # the newest: honoured
    ("checkpoint_epoch_1.pth", "True", "checkpoint_epoch_2.pth", True),   # older: the run continues
    ("checkpoint_epoch_1.pth", "False", "checkpoint_epoch_1.pth", False),  # AUTO_RESUME False: as given
    ("{elsewhere}/step_4_of_another_run.pth", "True", "{elsewhere}/step_4_of_another_run.pth", False),  # not older
    ("{elsewhere}/step_2_of_another_run.pth", "True", "checkpoint_epoch_2.pth", True),
])
def test_train_resume_is_honoured_unless_the_run_went_past_it(tmp_path: Path, resume: str, auto_resume: str,
                                                               expected: str, continues: bool) -> None:
    ck, progress, _ = _checkpointer(tmp_path, "TRAIN.AUTO_RESUME", "False")
    ck.find_resume_point()
    for epoch, step in ((1, 2), (2, 4)):
        progress.epoch, progress.step = epoch, step
        ck.maybe_save_epoch(progress, {}, is_last=False)
    ck.close()
    ckpts, elsewhere = tmp_path / "tiny" / "checkpoints", tmp_path / "elsewhere"
    elsewhere.mkdir()
    for e, s in ((1, 2), (2, 4)):  # outside the run dir a sidecar is optional
        shutil.copy(ckpts / f"checkpoint_epoch_{e}.pth", elsewhere / f"step_{s}_of_another_run.pth")
    resume, expected = resume.format(elsewhere=elsewhere), expected.format(elsewhere=elsewhere)

    lines, log = _Lines(), logging.getLogger("linnaeus")
    log.addHandler(lines)
    level = log.level
    log.setLevel(logging.INFO)  # not `log.level = ...`: that keeps isEnabledFor's cached answers
    try:
        ck, progress, _ = _checkpointer(tmp_path, "TRAIN.RESUME", resume, "TRAIN.AUTO_RESUME", auto_resume)
        point = ck.find_resume_point()
        ck.begin(point)
        path = point.path
    finally:
        log.removeHandler(lines)
        log.setLevel(level)
    assert path == (ckpts / expected if "/" not in expected else Path(expected))
    assert any(line.startswith(f"TRAIN.RESUME {resume} (step ") and "is older than this run's newest checkpoint"
               in line for line in lines.lines) == continues, lines.lines
    assert f"Resumed from {path} (epoch {progress.epoch}, step {progress.step})" in lines.lines
    # A deliberate restart from an older file (AUTO_RESUME False) sets the newer timeline aside, whole.
    aside = [d for d in ckpts.iterdir() if d.is_dir()]
    restarted = auto_resume == "False" and resume == "checkpoint_epoch_1.pth"
    assert (ckpts / "checkpoint_epoch_2.pth").exists() != restarted
    assert len(aside) == restarted and all((d / n).is_file() for d in aside
                                           for n in ("checkpoint_epoch_2.pth", "checkpoint_epoch_2.pth.sha256"))


# ----------------------------------------------------------------------------- weights-only main saver
def test_weights_only_run_refuses_to_restart_silently(tmp_path: Path, toy_root: Path) -> None:
    opts = (*SHORT, "TRAIN.EPOCHS", "1", "CHECKPOINT.WEIGHTS_ONLY", "True")
    proc = run_train(tmp_path, toy_root, *opts)
    assert "CHECKPOINT.WEIGHTS_ONLY is True" in _output(proc) and "cannot be resumed exactly" in _output(proc)
    ckpt = tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth"
    before = _sha(ckpt)

    proc = run_train(tmp_path, toy_root, *opts, check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert "CheckpointIncompatibleError" in err
    assert "weights-only checkpoint(s)" in err and "checkpoint_epoch_1.pth" in err and "no full checkpoint" in err
    for advice in ("TRAIN.AUTO_RESUME False", f"MODEL.PRETRAINED {ckpt}", "CHECKPOINT.WEIGHTS_SAVER.ENABLED True"):
        assert advice in err
    # Nothing was trained or overwritten.
    assert "No checkpoint to resume from" not in _output(proc) and _sha(ckpt) == before


# ----------------------------------------------------------------------------- one save per saver and step
def test_step_interval_weights_saver_saves_once_at_an_epoch_end_step(tmp_path: Path, toy_root: Path) -> None:
    proc = run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "2", "CHECKPOINT.WEIGHTS_SAVER.ENABLED", "True",
                     "CHECKPOINT.WEIGHTS_SAVER.INTERVAL", "2st",
                     "CHECKPOINT.WEIGHTS_SAVER.FILENAME", "weights_step_{step}.pth")
    log = (tmp_path / "tiny" / "log.txt").read_text()
    ckpts = tmp_path / "tiny" / "checkpoints"
    for name in ("weights_step_2.pth", "weights_step_4.pth", "checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth"):
        assert log.count(f"Saved checkpoint {ckpts / name}\n") == 1, f"{name} saved more than once:\n{proc.stdout}"


# ----------------------------------------------------------------------------- one read per resume
def test_auto_resume_reads_and_hashes_the_checkpoint_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from linnaeus.config import load_config
    from linnaeus.engine.trainer import Progress
    from linnaeus.runner.checkpoints import RunCheckpoints

    cfg = load_config(str(TINY_CFG), ["ENV.OUTPUT.BASE_DIR", str(tmp_path)])

    def attached() -> tuple[RunCheckpoints, Progress, torch.nn.Module]:
        ck, progress, model = RunCheckpoints(cfg, tmp_path / "tiny"), Progress(), torch.nn.Linear(64, 64)
        ck.attach(progress=progress, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
        return ck, progress, model

    ck, progress, model = attached()
    assert ck.find_resume_point() is None
    progress.epoch, progress.step = 1, 5
    ck.maybe_save_epoch(progress, {}, is_last=True)
    ck.close()
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    hashes, loads = [], []
    for name, module in list(sys.modules.items()):  # wherever the library imported the file hash
        original = getattr(module, "sha256_file", None) if name.startswith("linnaeus.checkpoint") else None
        if callable(original):
            monkeypatch.setattr(module, "sha256_file",
                                lambda p, *a, _o=original, **k: (hashes.append(p), _o(p, *a, **k))[1])
    torch_load = torch.load

    def counting_load(f, *a, **k):
        # Full verified loads only; metadata peeks (progress of each candidate) read a few bytes.
        if sys._getframe(1).f_code.co_name in ("load_verified", "load_verified_digest", "load_file_verified"):
            loads.append(f)
        return torch_load(f, *a, **k)

    monkeypatch.setattr(torch, "load", counting_load)
    ck, progress, model = attached()
    point = ck.find_resume_point()
    ck.begin(point)
    path = point.path
    assert path == tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth"
    assert (progress.epoch, progress.step) == (1, 5)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert [Path(p).name for p in hashes] == ["checkpoint_epoch_1.pth"], hashes  # hashed once
    assert [Path(p).name for p in loads] == ["checkpoint_epoch_1.pth"], loads  # and read once


# ----------------------------------------------------------------------------- components turned on at resume
def test_ema_turned_on_at_resume_starts_from_the_resumed_weights(tmp_path: Path, toy_root: Path) -> None:
    run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "1")
    proc = run_train(tmp_path, toy_root, *SHORT, "TRAIN.EPOCHS", "2", "TRAIN.EMA.ENABLED", "True")
    out = _output(proc)
    assert "TRAIN.EMA.ENABLED: False (checkpoint) -> True: honoured" in out, out[-3000:]
    assert "the EMA starts from the resumed weights" in out, out[-3000:]
    resumed = torch.load(tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth", weights_only=True)
    final = torch.load(tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_2.pth", weights_only=True)
    assert "ema" not in resumed and "ema" in final
    # The EMA began at the resumed weights (not at the new launch's initial ones, which lie as far from
    # them as training moved them since) and, with a decay near 1, is still next to them.
    key = next(k for k in final["model"] if k.endswith("weight"))
    start, now, ema = resumed["model"][key], final["model"][key], final["ema"]["module." + key]
    assert (ema - start).norm() < 0.1 * (now - start).norm()


def test_a_grad_scaler_turned_on_at_resume_starts_fresh(tmp_path: Path) -> None:
    """TRAIN.AMP turned on (a GradScaler where the device needs one: here built by hand, CPU has none)."""
    from linnaeus.config import load_config
    from linnaeus.engine.trainer import Progress
    from linnaeus.runner.checkpoints import RunCheckpoints

    def launch(amp: bool) -> tuple[RunCheckpoints, Progress, torch.amp.GradScaler | None]:
        cfg = load_config(str(TINY_CFG), ["ENV.OUTPUT.BASE_DIR", str(tmp_path), "TRAIN.AMP", str(amp)])
        ck, progress, model = RunCheckpoints(cfg, tmp_path / "tiny"), Progress(), torch.nn.Linear(4, 4)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if amp else None
        ck.attach(progress=progress, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  scaler=scaler)
        return ck, progress, scaler

    ck, progress, _ = launch(False)
    progress.epoch, progress.step = 1, 5
    ck.maybe_save_epoch(progress, {}, is_last=True)
    ck.close()
    ck, progress, scaler = launch(True)
    ck.begin(ck.find_resume_point())
    ck.close()
    assert (progress.epoch, progress.step) == (1, 5) and scaler is not None and scaler.get_scale() == 1024.0
