"""Debian packages the tests need (a real Slurm, a real browser), installed by the fixtures that use them
when missing: the project brings its own tools, since a fresh machine has none of them."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Sequence

import pytest


def ensure_installed(packages: Sequence[str], binaries: Sequence[str], why: str) -> None:
    """``apt-get install`` ``packages`` unless every one of ``binaries`` is on the PATH; fail the test,
    saying ``why`` the packages are needed, when that is impossible."""
    if all(shutil.which(b) for b in binaries):
        return
    if os.geteuid() != 0:
        pytest.fail(f"{' '.join(packages)} not installed and this user cannot install it: run `apt-get install "
                    f"{' '.join(packages)}` as root ({why}).")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0 or not all(shutil.which(b) for b in binaries):
        pytest.fail(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
