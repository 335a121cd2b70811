"""A checkpoint named with or without its ``.pth`` suffix is found in either layout: the README's
``TRAIN.RESUME checkpoint_epoch_3.pth`` resumes an fsdp run's ``checkpoint_epoch_3/``, and the
directory's name finds a single file, locally and in the run's bucket folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from linnaeus.checkpoint import CheckpointManager, RemoteRun, find_resume_point


def _run(directory: Path, fmt: str) -> list[Path]:
    with CheckpointManager(directory, format=fmt) as manager:
        return [manager.save(epoch=e, step=e, model=torch.nn.Linear(3, 2)) for e in (1, 2)]


@pytest.mark.parametrize("fmt,given", [("sharded", "checkpoint_epoch_1.pth"), ("file", "checkpoint_epoch_1")])
def test_a_name_finds_its_checkpoint_in_either_layout(tmp_path: Path, fmt: str, given: str) -> None:
    paths = _run(tmp_path / "ck", fmt)
    with CheckpointManager(tmp_path / "ck", format=fmt) as manager:
        point = find_resume_point(manager, explicit=given, auto=False)
    assert point is not None and point.path == paths[0] and point.step == 1


@pytest.mark.parametrize("fmt,given", [("sharded", "checkpoint_epoch_2.pth"), ("file", "checkpoint_epoch_2")])
def test_a_name_finds_its_checkpoint_in_the_bucket_folder_in_either_layout(tmp_path: Path, fmt: str,
                                                                           given: str) -> None:
    paths = _run(tmp_path / "ck", fmt)
    remote = RemoteRun(f":local:{tmp_path / 'bucket'}/")
    for path in paths:
        remote.upload(path)
    shutil.rmtree(tmp_path / "ck")  # a fresh machine: the checkpoints are in the bucket only
    with CheckpointManager(tmp_path / "ck", format=fmt) as manager:
        point = find_resume_point(manager, explicit=given, auto=False, remote=remote)
    assert point is not None and point.path == tmp_path / "ck" / paths[1].name and point.step == 2
