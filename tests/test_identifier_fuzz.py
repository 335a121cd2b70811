"""Identifiers are data, never flags: what a config value or CLI argument can make rclone do.

Every rclone call is recorded through a wrapper that logs its argv and then execs the real
binary (tests/helpers/rclone_argv.py). The checks: no option our code did not write ever
reaches rclone, no file is written outside the cache / the run dir / the bucket's folder, and
bad input ends in a named error (CheckpointError, ConfigError), never another traceback.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from linnaeus.checkpoint.errors import CheckpointError
from linnaeus.checkpoint.resolve import resolve
from linnaeus.checkpoint.sources.rclone import rclone_binary, run_rclone_bytes
from tests.fixtures_rclone import rclone_isolated  # noqa: F401  (fixture)
from tests.helpers.rclone_argv import REAL_RCLONE, ArgvLog, foreign_options, record_rclone_argv


@pytest.fixture
def argv_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rclone_isolated: None) -> Iterator[ArgvLog]:
    log = record_rclone_argv(tmp_path, monkeypatch)
    yield log
    rclone_binary.cache_clear()


def _assert_only_our_options(log: ArgvLog) -> None:
    for argv in log.calls():
        assert not foreign_options(argv), f"rclone got options our code did not write: {argv}"


# ----------------------------------------------------------------------------- the reported case
def test_dash_identifier_never_reaches_rclone_as_an_option(tmp_path: Path, argv_log: ArgvLog) -> None:
    with pytest.raises(CheckpointError) as info:
        resolve("-vv:x.pth", cache_dir=tmp_path / "cache", retries=1)
    assert "-vv:x.pth" in str(info.value)
    _assert_only_our_options(argv_log)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("x.pth"))
