"""Resume and keep habits users bring from fairseq2, Composer and Mammoth (issue 12, items 3-5).

``TRAIN.RESUME latest`` / ``step:N``, the library's load-last raising with the places looked,
foreign and weights-only files given to TRAIN.RESUME, keep-best alone and CHECKPOINT.KEEP_LOCAL_N
with a real ``rclone serve s3``. Real files, the runner's RunCheckpoints in-process with a tiny
model (no training needed to decide what resumes or what is kept)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch

from linnaeus.checkpoint import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointManager,
    CheckpointNotFoundError,
    CheckpointPolicy,
)
from linnaeus.config import ConfigError, load_config
from tests.conftest import TINY_CFG
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


def _cfg(tmp_path: Path, *opts: str):
    return load_config(str(TINY_CFG), ["ENV.OUTPUT.BASE_DIR", str(tmp_path), "ENV.INPUT.CACHE_DIR",
                                       str(tmp_path / "cache"), *opts])


def _checkpointer(tmp_path: Path, *opts: str):
    from linnaeus.engine.trainer import Progress
    from linnaeus.runner.checkpoints import RunCheckpoints

    ck, progress, model = RunCheckpoints(_cfg(tmp_path, *opts), tmp_path / "tiny"), Progress(), torch.nn.Linear(8, 8)
    ck.attach(progress=progress, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    return ck, progress, model


def _save_epochs(tmp_path: Path, steps: tuple[int, ...] = (2, 4, 6), *opts: str,
                 metrics: dict[int, float] | None = None) -> Path:
    """A run that saved after each epoch at ``steps``; returns its checkpoint directory."""
    ck, progress, model = _checkpointer(tmp_path, "TRAIN.AUTO_RESUME", "False", *opts)
    assert ck.find_resume_point() is None
    for epoch, step in enumerate(steps, start=1):
        progress.epoch, progress.step = epoch, step
        with torch.no_grad():
            model.weight.fill_(float(step))  # each file's weights say which step it holds
        measured = {"val/acc1/species": metrics[step]} if metrics and step in metrics else {}
        ck.maybe_save_epoch(progress, measured, is_last=False)
    ck.close()
    return tmp_path / "tiny" / "checkpoints"


def _resume(tmp_path: Path, *opts: str):
    ck, progress, model = _checkpointer(tmp_path, *opts)
    point = ck.find_resume_point()
    assert point is not None
    ck.begin(point)
    ck.close()
    return point.path, progress, float(model.weight[0, 0].detach())


# ----------------------------------------------------------------------------- item 3: latest, step:N
@pytest.mark.parametrize("auto", ["True", "False"])
def test_train_resume_latest_resumes_what_latest_names(tmp_path: Path, auto: str) -> None:
    ckpts = _save_epochs(tmp_path)
    assert (ckpts / "latest").read_text().strip() == "checkpoint_epoch_3.pth"
    path, progress, weight = _resume(tmp_path, "TRAIN.RESUME", "latest", "TRAIN.AUTO_RESUME", auto)
    assert path == ckpts / "checkpoint_epoch_3.pth"
    assert (progress.epoch, progress.step, weight) == (3, 6, 6.0)


def test_train_resume_latest_is_verified_not_passed_over(tmp_path: Path) -> None:
    ckpts = _save_epochs(tmp_path)
    data = bytearray((ckpts / "checkpoint_epoch_3.pth").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (ckpts / "checkpoint_epoch_3.pth").write_bytes(bytes(data))
    ck, _, _ = _checkpointer(tmp_path, "TRAIN.RESUME", "latest", "TRAIN.AUTO_RESUME", "False")
    with pytest.raises(CheckpointCorruptError, match="checkpoint_epoch_3.pth.*does not match"):
        ck.find_resume_point()


def test_train_resume_step_n_resumes_the_runs_checkpoint_at_that_step(tmp_path: Path) -> None:
    ckpts = _save_epochs(tmp_path)
    # AUTO_RESUME False: a deliberate restart from step 4 (the newer file is set aside, not deleted).
    path, progress, weight = _resume(tmp_path, "TRAIN.RESUME", "step:4", "TRAIN.AUTO_RESUME", "False")
    assert path == ckpts / "checkpoint_epoch_2.pth"
    assert (progress.epoch, progress.step, weight) == (2, 4, 4.0)
    assert [p.name for d in ckpts.iterdir() if d.is_dir() for p in d.glob("*.pth")] == ["checkpoint_epoch_3.pth"]


def test_train_resume_step_n_takes_the_full_checkpoint_over_a_weights_copy_of_that_step(tmp_path: Path) -> None:
    ckpts = _save_epochs(tmp_path, (2, 4), "CHECKPOINT.WEIGHTS_SAVER.ENABLED", "True")
    assert (ckpts / "weights_epoch_2.pth").is_file()  # saved after the full one, at the same step
    path, progress, _ = _resume(tmp_path, "TRAIN.RESUME", "step:4")
    assert (path, progress.step) == (ckpts / "checkpoint_epoch_2.pth", 4)
    # With only the weights copy left at that step, the error names the file for MODEL.PRETRAINED.
    for name in ("checkpoint_epoch_2.pth", "checkpoint_epoch_2.pth.sha256"):
        (ckpts / name).rename(tmp_path / name)
    msg = _resume_error(tmp_path, "step:4", "TRAIN.AUTO_RESUME", "False")
    assert f"{ckpts / 'weights_epoch_2.pth'} is not a linnaeus training checkpoint" in msg, msg
    assert f"MODEL.PRETRAINED {ckpts / 'weights_epoch_2.pth'} with MODEL.PRETRAINED_STRATEGY" in msg, msg


def test_train_resume_latest_and_step_not_found_list_the_places_looked(tmp_path: Path) -> None:
    ckpts = _save_epochs(tmp_path, (2, 4))
    ck, _, _ = _checkpointer(tmp_path, "TRAIN.RESUME", "step:3")
    with pytest.raises(CheckpointNotFoundError) as info:
        ck.find_resume_point()
    msg = str(info.value)
    assert msg.startswith("TRAIN.RESUME step:3: the run's checkpoint at step 3 not found. Looked in:"), msg
    assert f"{ckpts} (no committed checkpoint at step 3; steps held: 2, 4)" in msg
    assert "this run's bucket folder: not searched" in msg and "ENV.OUTPUT.BUCKET.ENABLED is False" in msg
    ck.close()

    shutil.rmtree(ckpts)
    ck, _, _ = _checkpointer(tmp_path, "TRAIN.RESUME", "latest")
    with pytest.raises(CheckpointNotFoundError) as info:
        ck.find_resume_point()
    assert f"{ckpts / 'latest'} (absent: this run has committed no full checkpoint here)" in str(info.value)
    ck.close()


def test_train_resume_step_from_the_bucket_folder_on_a_fresh_machine(tmp_path: Path,
                                                                     s3_server: RcloneServer) -> None:
    bucket = ("ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE,
              "ENV.OUTPUT.BUCKET.NAME", BUCKET, "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/")
    ckpts = _save_epochs(tmp_path, (2, 4, 6), *bucket)
    settle()
    shutil.rmtree(ckpts.parent)  # a fresh machine
    path, progress, weight = _resume(tmp_path, "TRAIN.RESUME", "step:4", "TRAIN.AUTO_RESUME", "False", *bucket)
    assert path == ckpts / "checkpoint_epoch_2.pth"
    assert (progress.step, weight) == (4, 4.0)


@pytest.mark.parametrize("value", ["step:", "step:x", "step:-3", "step:0", "step:1.5"])
def test_bad_step_values_are_config_errors_naming_train_resume(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"^TRAIN.RESUME: .*'step:' must be followed by a positive integer"):
        _cfg(tmp_path, "TRAIN.RESUME", value)


def test_library_load_last_raises_with_the_places_looked(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "ckpts", CheckpointPolicy())
    model = torch.nn.Linear(2, 2)
    manager.save(epoch=1, step=3, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    (tmp_path / "ckpts" / "checkpoint_epoch_1.pth.sha256").unlink()  # never committed
    with pytest.raises(CheckpointNotFoundError) as info:
        manager.load_last()
    msg = str(info.value)
    assert f"no checkpoint to load in {tmp_path / 'ckpts'}. Looked in:" in msg
    assert f"{tmp_path / 'ckpts' / 'latest'} (names checkpoint_epoch_1.pth)" in msg
    assert "checkpoint_epoch_1.pth: no .sha256 sidecar: never committed" in msg
    manager.save(epoch=2, step=6, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert manager.load_last()[0] == tmp_path / "ckpts" / "checkpoint_epoch_2.pth"
    manager.close()


# ----------------------------------------------------------------------------- item 4: foreign files to TRAIN.RESUME
def _foreign_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files people hand to a resume, with the phrase that must say what each is."""
    model = torch.nn.Linear(8, 8)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    files = {
        "bare.pth": (model.state_dict(), "a bare state dict such as torch.save(model.state_dict(), ...) writes"),
        # timm's train.py (CheckpointSaver) stores its argparse arguments beside the weights.
        "timm_train.pth.tar": ({"epoch": 3, "arch": "resnet18", "state_dict": model.state_dict(), "version": 2,
                                "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
                                "args": argparse.Namespace(model="resnet18", lr=0.1)},
                               "a pickle holding argparse.Namespace besides tensors (timm's train.py"),
        "timm_no_args.pth": ({"epoch": 3, "arch": "resnet18", "state_dict": model.state_dict(), "version": 2},
                             "another framework's training checkpoint (e.g. timm's train.py; entries: arch, epoch"),
    }
    out = {}
    for name, (obj, phrase) in files.items():
        torch.save(obj, folder / name)
        out[name] = (folder / name, phrase)
    return out


def _resume_error(tmp_path: Path, target: str, *opts: str) -> str:
    ck, _, _ = _checkpointer(tmp_path, "TRAIN.RESUME", target, *opts)
    try:
        with pytest.raises(CheckpointError) as info:
            point = ck.find_resume_point()
            ck.begin(point)
    finally:
        ck.close()
    return " ".join(str(info.value).split())


@pytest.mark.parametrize("name", ["bare.pth", "timm_train.pth.tar", "timm_no_args.pth"])
def test_foreign_file_to_train_resume_says_what_it_is_and_names_model_pretrained(tmp_path: Path, name: str) -> None:
    path, phrase = _foreign_files(tmp_path)[name]
    before = path.read_bytes()
    msg = _resume_error(tmp_path, str(path))
    assert f"{path} is not a linnaeus training checkpoint: it is {phrase}" in msg, msg
    assert "corrupt" not in msg and "Delete" not in msg, msg
    assert "The file is intact (do not delete it)" in msg, msg
    assert f"MODEL.PRETRAINED {path} with MODEL.PRETRAINED_STRATEGY transfer" in msg, msg
    assert "weights_only" in msg and "strict" in msg and "TRAIN.RESUME empty" in msg, msg
    assert path.read_bytes() == before


def test_linnaeus_weights_only_file_to_train_resume_names_model_pretrained(tmp_path: Path) -> None:
    ckpts = _save_epochs(tmp_path, (2, 4), "CHECKPOINT.WEIGHTS_SAVER.ENABLED", "True")
    weights = ckpts / "weights_epoch_2.pth"
    assert weights.is_file()
    msg = _resume_error(tmp_path, weights.name)
    assert (f"{weights} is not a linnaeus training checkpoint: it is a linnaeus weights-only checkpoint "
            "(saver 'weights', epoch 2, step 4") in msg, msg
    assert f"MODEL.PRETRAINED {weights.name} with MODEL.PRETRAINED_STRATEGY transfer" in msg, msg
    assert weights.is_file()


# ----------------------------------------------------------------------------- item 5: keep-best alone, KEEP_LOCAL_N
BEST = ("CHECKPOINT.KEEP_LAST_N", "0", "CHECKPOINT.KEEP_BEST_N", "1", "CHECKPOINT.MONITOR", "val/acc1/species",
        "CHECKPOINT.MODE", "max")
OUT_BUCKET = ("ENV.OUTPUT.BUCKET.ENABLED", "True", "ENV.OUTPUT.BUCKET.REMOTE", REMOTE,
              "ENV.OUTPUT.BUCKET.NAME", BUCKET, "ENV.OUTPUT.BUCKET.PATH_PREFIX", "runs/")


def _local(ckpts: Path) -> list[str]:
    return sorted(p.name for p in ckpts.glob("*.pth"))


def test_keep_best_alone_keeps_the_best_and_what_resume_needs(tmp_path: Path) -> None:
    ckpts = _save_epochs(tmp_path, (2, 4, 6, 8), *BEST, metrics={2: 0.5, 4: 0.9, 6: 0.3, 8: 0.4})
    # The best (epoch 2, step 4) and the newest (the one a relaunch resumes): nothing else.
    assert _local(ckpts) == ["checkpoint_epoch_2.pth", "checkpoint_epoch_4.pth"]
    assert (ckpts / "latest").read_text().strip() == "checkpoint_epoch_4.pth"
    # The relaunch resumes the newest; once a newer one commits, resume needs that one instead.
    ck, progress, model = _checkpointer(tmp_path, *BEST)
    ck.begin(ck.find_resume_point())
    progress.epoch, progress.step = 5, 10
    ck.maybe_save_epoch(progress, {"val/acc1/species": 0.1}, is_last=False)
    ck.close()
    assert _local(ckpts) == ["checkpoint_epoch_2.pth", "checkpoint_epoch_5.pth"]


def test_prune_with_keep_best_alone_applies_the_same_rule(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from linnaeus.cli.ckpt import main as ckpt

    ckpts = _save_epochs(tmp_path, (2, 4, 6, 8), metrics={2: 0.5, 4: 0.9, 6: 0.3, 8: 0.4})
    assert ckpt(["prune", str(ckpts), "--keep-last", "0", "--keep-best", "1", "--monitor", "val/acc1/species"]) == 0
    assert _local(ckpts) == ["checkpoint_epoch_2.pth", "checkpoint_epoch_4.pth"]
    assert "deleted 2 checkpoint(s)" in capsys.readouterr().out


@pytest.mark.parametrize("keep_local, kept", [
    ("0", ["checkpoint_epoch_3.pth"]),  # Composer's save_num_checkpoints_to_keep=0: only what resume needs
    ("2", ["checkpoint_epoch_2.pth", "checkpoint_epoch_3.pth"]),
])
def test_keep_local_n_keeps_at_most_n_local_copies_once_uploaded(tmp_path: Path, s3_server: RcloneServer,
                                                                 keep_local: str, kept: list[str]) -> None:
    ckpts = _save_epochs(tmp_path, (2, 4, 6), *OUT_BUCKET, "CHECKPOINT.KEEP_LOCAL_N", keep_local)
    remote = s3_server.root / BUCKET / "runs" / "tiny"
    assert _local(ckpts) == kept
    assert (ckpts / "latest").read_text().strip() == "checkpoint_epoch_3.pth"
    for e in (1, 2, 3):  # every file is in the bucket, byte for byte where a local copy is left
        assert (remote / f"checkpoint_epoch_{e}.pth").is_file()
        assert (remote / f"checkpoint_epoch_{e}.pth.sha256").is_file()
    for name in kept:
        assert (remote / name).read_bytes() == (ckpts / name).read_bytes()
    # A relaunch resumes the newest local copy.
    path, progress, weight = _resume(tmp_path, *OUT_BUCKET, "CHECKPOINT.KEEP_LOCAL_N", keep_local)
    assert (path.name, progress.step) == ("checkpoint_epoch_3.pth", 6)


def test_keep_local_n_never_deletes_a_copy_whose_upload_is_not_confirmed(tmp_path: Path) -> None:
    from linnaeus.checkpoint.store import plan_retention

    manager = CheckpointManager(tmp_path, CheckpointPolicy())
    model = torch.nn.Linear(2, 2)
    for e in range(1, 5):
        manager.save(epoch=e, step=e, model=model)
    infos = manager.checkpoints()
    confirmed = {"checkpoint_epoch_1.pth", "checkpoint_epoch_3.pth", "checkpoint_epoch_4.pth"}
    doomed = plan_retention(infos, keep_last_n=0, keep_local_n=0, protect={"checkpoint_epoch_4.pth"},
                            uploaded=lambda i: i.name in confirmed)
    assert [i.name for i in doomed] == ["checkpoint_epoch_1.pth", "checkpoint_epoch_3.pth"]
    manager.close()
    # A library manager without an uploader cannot know what is confirmed: it says so at its first save.
    lonely = CheckpointManager(tmp_path / "other", CheckpointPolicy(keep_local_n=0))
    with pytest.raises(CheckpointError, match="keep_local_n=0 .* no can_delete hook"):
        lonely.save(epoch=1, step=1, model=model)
    lonely.close()


@pytest.mark.parametrize("opts, message", [
    (("CHECKPOINT.KEEP_LOCAL_N", "0"), "CHECKPOINT.KEEP_LOCAL_N 0 limits .* ENV.OUTPUT.BUCKET.ENABLED is False"),
    (("CHECKPOINT.KEEP_LOCAL_N", "-2", *OUT_BUCKET), "^CHECKPOINT.KEEP_LOCAL_N: keep_local_n must be an int >= -1"),
])
def test_keep_local_n_config_errors_name_the_key(tmp_path: Path, opts: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, *opts)
